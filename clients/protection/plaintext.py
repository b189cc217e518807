"""Plaintext at the site: the global model arrives in clear and the trained model leaves in clear."""

from __future__ import annotations

import numpy as np
from flwr.app import RecordDict

from clients.protection.base import SiteProtection, clipped_for_round, signed_train_reply
from clients.runtime import LocalTraining, SiteRuntime
from fedcore import records as R


class PlaintextSite(SiteProtection):
    """The model travels in clear both ways (tests and benchmarks only)."""

    name = "plaintext"

    def global_model(
        self, runtime: SiteRuntime, content: RecordDict, cfg: R.RoundConfig
    ) -> dict[str, np.ndarray]:
        arrays, _ = R.read_instruction(content)
        if arrays is None:
            raise ValueError(
                f"instruction: expected an 'arrays' record (the global model), found records "
                f"{sorted(content.keys())[:10]}"
            )
        runtime.check_model(arrays, cfg.task)  # before anything reads or writes with it
        return arrays

    def reply(
        self,
        runtime: SiteRuntime,
        cfg: R.RoundConfig,
        base: dict[str, np.ndarray],
        trained: LocalTraining,
    ) -> RecordDict:
        trained = clipped_for_round(cfg, base, trained)
        return signed_train_reply(
            runtime,
            cfg,
            R.TrainReply(
                arrays=trained.arrays,
                num_examples=trained.num_examples,
                loss=trained.loss,
                seconds=trained.seconds,
                site_id=trained.site.id,
                round=cfg.round,
            ),
        )
