"""When a site's scoring service raises an alarm about its served model (site config ``monitor``)."""

from __future__ import annotations

from pydantic import Field, model_validator

from fedcore.config.base import _Model


class MonitorSpec(_Model):
    """When a served model's monitor raises an alarm.

    The PSI alarm needs ``min_scores`` scores in the window; the metric alarm needs
    ``min_labels`` labelled transactions with ``min_positives`` fraud among them (PR-AUC
    on a handful of fraud cases is noise).
    """

    psi_bound: float = Field(
        0.2,
        gt=0.0,
        le=10.0,
        description="PSI of the recent scores against the export's reference above which the "
        "score distribution counts as shifted (0.1-0.2 moderate, above 0.2 significant)",
    )
    score_window: int = Field(
        5000, ge=10, le=1_000_000, description="most recent scores the PSI is computed on"
    )
    min_scores: int = Field(500, ge=1, description="no PSI alarm before this many scores")
    label_window: int = Field(
        5000,
        ge=10,
        le=1_000_000,
        description="most recent labelled transactions the metric is computed on",
    )
    min_labels: int = Field(500, ge=1, description="no metric alarm before this many labels")
    min_positives: int = Field(
        50,
        ge=1,
        description="no metric alarm before this many fraud labels in the window (PR-AUC on "
        "fewer swings by more than max_drop by chance alone)",
    )
    max_drop: float = Field(
        0.05,
        gt=0.0,
        lt=1.0,
        description="largest relative drop of the metric below the export's: an alarm when "
        "metric < reference * (1 - max_drop); 0.05 lets PR-AUC 0.60 fall to 0.57",
    )

    @model_validator(mode="after")
    def _minimums_fit_windows(self) -> MonitorSpec:
        for low, high in (
            ("min_scores", "score_window"),
            ("min_labels", "label_window"),
            ("min_positives", "min_labels"),
        ):
            if getattr(self, low) > getattr(self, high):
                raise ValueError(
                    f"{low} ({getattr(self, low)}) must be at most {high} ({getattr(self, high)}): "
                    f"the alarm could never be raised; lower {low} or raise {high}"
                )
        return self
