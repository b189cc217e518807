"""The CKKS codec a scenario's privacy section asks for, built the same way at the sites and the coordinator."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy.typing as npt

from fedcore.config import PrivacySpec
from secure.ckks import CkksCodec, CkksParams, FloatArray, PackedCodec


class AggregationCodec(Protocol):
    """What the site and coordinator code needs of a codec (:class:`~secure.ckks.CkksCodec`,
    :class:`~secure.ckks.PackedCodec`)."""

    def encrypt(self, values: npt.ArrayLike) -> list[bytes]: ...

    def decrypt(self, chunks: Sequence[bytes], length: int, num_sites: int) -> FloatArray: ...

    def check(self, chunks: Sequence[bytes], length: int) -> None: ...

    def add(self, updates: Sequence[Sequence[bytes]], length: int) -> list[bytes]: ...

    def add_plain(
        self, chunks: Sequence[bytes], values: npt.ArrayLike, length: int
    ) -> list[bytes]: ...

    def error_bound(self, num_sites: int) -> float: ...


def make_codec(privacy: PrivacySpec, context: Any, max_sites: int) -> AggregationCodec:
    """Codec for ``privacy.ckks``; with DP, packed lanes leave room for the coordinator's noise.

    Both sides must build identical codecs (the packing layout depends on every argument):
    a mismatch is caught by the parameter text in each chunk's header.

    Args:
        privacy: The scenario's privacy section.
        context: The secret context (sites) or the public one (coordinator).
        max_sites: Most updates one round may sum (the scenario's number of sites); at least
            1 is used.

    Returns:
        A :class:`~secure.ckks.PackedCodec` when ``privacy.ckks.packing`` is on, else a
        :class:`~secure.ckks.CkksCodec`.
    """
    noise_std = 0.0
    if privacy.dp is not None:
        from secure.dp import sum_noise_std

        noise_std = sum_noise_std(privacy.dp)
    spec = privacy.ckks
    params = CkksParams.from_spec(spec)
    if not spec.packing:
        return CkksCodec(context, params)
    return PackedCodec(
        context,
        params,
        max_sites=max(1, max_sites),
        clip=spec.clip,
        values_per_slot=spec.values_per_slot,
        noise_std=noise_std,
    )


def privacy_problems(privacy: PrivacySpec, num_sites: int) -> list[str]:
    """Settings that load fine but cannot run (e.g. packing with no room left for DP noise).

    Builds the codec both sides would build, with a throwaway context, so that a
    scenario is refused before any round starts rather than in the middle of one.
    """
    problems: list[str] = []
    if privacy.mode == "ckks":
        from secure.ckks import public_context

        try:
            params = CkksParams.from_spec(privacy.ckks)
            make_codec(privacy, public_context(params), num_sites)
        except ValueError as exc:
            problems.append(f"privacy.ckks: {exc}")
    if privacy.mode == "secagg+" and num_sites <= privacy.secagg.reconstruction_threshold:
        problems.append(
            f"privacy.secagg: SecAgg+ needs more sites ({num_sites}) than "
            f"reconstruction_threshold ({privacy.secagg.reconstruction_threshold}); lower it"
        )
    return problems
