"""The site's side of a privacy mode: where the global model comes from, and what leaves the site."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import replace

import numpy as np
from flwr.app import RecordDict

from clients.runtime import LocalTraining, SiteRuntime
from fedcore import records as R


class SiteProtection(ABC):
    """A privacy mode at the site.

    :meth:`global_model` reads an instruction (train, evaluate or export) into the model
    the site starts from; :meth:`reply` turns a round of local training into the content
    that leaves the site. Differential privacy wraps an inner mode
    (:class:`clients.protection.dp.ClippedUpdates`).
    """

    name: str = ""
    uniform_weights: bool = False
    """Whether every site counts once in the aggregate (set under DP), not by its examples."""

    @abstractmethod
    def global_model(
        self, runtime: SiteRuntime, content: RecordDict, cfg: R.RoundConfig
    ) -> dict[str, np.ndarray]:
        """The global model an instruction stands for."""

    @abstractmethod
    def reply(
        self,
        runtime: SiteRuntime,
        cfg: R.RoundConfig,
        base: dict[str, np.ndarray],
        trained: LocalTraining,
    ) -> RecordDict:
        """The train reply's content for ``trained``, which started from ``base``."""


def clipped_for_round(
    cfg: R.RoundConfig, base: dict[str, np.ndarray], trained: LocalTraining
) -> LocalTraining:
    """``trained`` with its update (model minus ``base``) clipped to ``cfg.site_clip``.

    Unchanged when the round sets no clip (``site_clip`` 0). Every mode clips before it
    protects the update (``aggregation.site_clip``), so what leaves the site is bounded
    even where the coordinator cannot look at it (CKKS, SecAgg+).
    """
    if cfg.site_clip <= 0:
        return trained
    from clients.protection.dp import clipped_model

    return replace(trained, arrays=clipped_model(trained.arrays, base, cfg.site_clip))


def signed_train_reply(runtime: SiteRuntime, cfg: R.RoundConfig, reply: R.TrainReply) -> RecordDict:
    """A train reply's content, signed with the site's node key when it has a kit."""
    payload = R.signing_payload(R.TRAIN, reply.site_id, cfg.round, cfg.run_key, reply.digest())
    return runtime.sign(reply.site_id, reply.to_content(), payload)
