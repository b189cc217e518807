"""The CKKS codec a scenario's privacy section asks for, built the same way at the sites and the coordinator."""

from __future__ import annotations

from typing import Any

from fedcore.config import PrivacySpec
from secure.ckks import CkksCodec, PackedCodec
from secure.ckks import make_codec as _make_codec


def make_codec(privacy: PrivacySpec, context: Any, max_sites: int) -> CkksCodec | PackedCodec:
    """Codec for ``privacy.ckks``; with DP, packed lanes leave room for the coordinator's noise.

    Both sides must build identical codecs (the packing layout depends on every argument):
    a mismatch is caught by the parameter text in each chunk's header.

    Args:
        privacy: The scenario's privacy section.
        context: The secret context (sites) or the public one (coordinator).
        max_sites: Most updates one round may sum (the scenario's number of sites).
    """
    noise_std = 0.0
    if privacy.dp is not None:
        from secure.dp import sum_noise_std

        noise_std = sum_noise_std(privacy.dp)
    return _make_codec(context, privacy.ckks, max_sites=max(1, max_sites), noise_std=noise_std)


def privacy_problems(privacy: PrivacySpec, num_sites: int) -> list[str]:
    """Settings that load fine but cannot run (e.g. packing with no room left for DP noise).

    Builds the codec both sides would build, with a throwaway context, so that a
    scenario is refused before any round starts rather than in the middle of one.
    """
    problems: list[str] = []
    if privacy.mode == "ckks":
        from secure.ckks import CkksParams, public_context

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
