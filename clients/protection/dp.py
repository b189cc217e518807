"""Differential privacy at the site: each update is clipped to the clip norm before the inner mode protects it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import replace

import numpy as np
from flwr.app import RecordDict

from clients.protection.base import SiteProtection
from clients.runtime import LocalTraining, SiteRuntime
from fedcore import records as R
from fedcore.config import DpSpec


def clipped_model(
    local: Mapping[str, np.ndarray], base: Mapping[str, np.ndarray], clip_norm: float
) -> dict[str, np.ndarray]:
    """``local`` with its update (``local - base``) clipped to L2 norm ``clip_norm``."""
    from secure.dp import clip_update

    delta = {k: np.asarray(local[k], np.float32) - np.asarray(base[k], np.float32) for k in base}
    # a hair under C: adding the clipped update back to the float32 base rounds, and the
    # update the coordinator sees (model - base) must still have norm <= C
    clipped, _ = clip_update(delta, clip_norm * (1.0 - 1e-5))
    return {k: (np.asarray(base[k], np.float32) + clipped[k]).astype(local[k].dtype) for k in base}


class ClippedUpdates(SiteProtection):
    """Wraps an inner mode: the update is clipped, and every site counts once.

    The site's half of central DP (as Flower's ``fixedclipping_mod``); the coordinator's
    ``DifferentialPrivacy`` wrapper adds the noise and keeps the accountant.

    Args:
        inner: The mode that protects the clipped update.
        spec: The scenario's DP settings.
    """

    def __init__(self, inner: SiteProtection, spec: DpSpec) -> None:
        self.inner = inner
        self.inner.uniform_weights = self.uniform_weights = True
        self.name = inner.name
        self.spec = spec

    def global_model(
        self, runtime: SiteRuntime, content: RecordDict, cfg: R.RoundConfig
    ) -> dict[str, np.ndarray]:
        return self.inner.global_model(runtime, content, cfg)

    def reply(
        self,
        runtime: SiteRuntime,
        cfg: R.RoundConfig,
        base: dict[str, np.ndarray],
        trained: LocalTraining,
    ) -> RecordDict:
        clipped = clipped_model(trained.arrays, base, self.spec.clip_norm)
        return self.inner.reply(runtime, cfg, base, replace(trained, arrays=clipped))
