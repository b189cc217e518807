"""How the coordinator combines the round's updates: robust rules, norm bounds, aggregation weights."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from fedcore.config.base import _Model

CLEAR_UPDATE_RULES = ("median", "trimmed_mean", "multi_krum", "multi_krum_memory")
"""Rules that read every site's update on its own, so they need the updates in clear."""

KRUM_RULES = ("multi_krum", "multi_krum_memory")
"""Rules that keep the ``n - byzantine`` updates of lowest (Krum or remembered) score."""

SEALED_MODES = ("ckks", "secagg+")
"""Privacy modes in which the coordinator never sees a single site's update."""


class NormBoundSpec(_Model):
    """Clip every update to ``factor`` x the median L2 norm of recently accepted updates."""

    factor: float = Field(3.0, gt=1.0, description="multiple of the median accepted norm allowed")
    window: int = Field(
        5, ge=1, le=1000, description="rounds of accepted norms the median is taken over"
    )


class AggregationSpec(_Model):
    """How the coordinator combines updates and how much each site's update counts.

    ``median``, ``trimmed_mean``, ``multi_krum`` and ``norm_bound`` read single updates in
    clear: only ``privacy.mode: plaintext`` shows them to the coordinator. ``site_clip``
    is what ckks and secagg+ offer instead: each site clips its own update, and what can
    be checked is checked (the SecAgg+ mean at the coordinator, the decrypted CKKS
    aggregate at the sites).
    """

    rule: Literal["fedavg", "median", "trimmed_mean", "multi_krum", "multi_krum_memory"] = Field(
        "fedavg",
        description="fedavg (weighted mean), median (coordinate-wise), trimmed_mean "
        "(coordinate-wise), multi_krum (keep the n - byzantine most central updates) or "
        "multi_krum_memory (multi_krum ranked by each site's Krum scores over every round so "
        "far)",
    )
    trim_fraction: float = Field(
        0.2,
        ge=0.0,
        lt=0.5,
        description="trimmed_mean: fraction of the values cut at each end, per coordinate",
    )
    byzantine: int = Field(
        1,
        ge=0,
        description="multi_krum, multi_krum_memory: how many hostile sites to tolerate (needs "
        "n > 2f + 2)",
    )
    norm_bound: NormBoundSpec | None = Field(
        None,
        description="clip every update to factor x the median norm of recently accepted ones",
    )
    weights: Literal["examples", "capped", "equal"] = Field(
        "capped",
        description="examples (as reported), capped (at most weight_cap x the round's median) "
        "or equal (every site counts once)",
    )
    weight_cap: float = Field(
        4.0,
        ge=1.0,
        description="capped: a site counts at most weight_cap x the median examples of the "
        "round's chosen sites",
    )
    site_clip: float | None = Field(
        None,
        gt=0.0,
        description="each site clips its update (local minus global) to this L2 norm before "
        "protecting it",
    )

    @model_validator(mode="after")
    def _krum_needs_byzantine(self) -> AggregationSpec:
        if self.rule in KRUM_RULES and self.byzantine < 1:
            raise ValueError(
                f"aggregation.byzantine is 0: {self.rule} with f = 0 keeps every update and is "
                "FedAvg. Set byzantine to the number of hostile sites to tolerate (>= 1), or "
                "use rule fedavg"
            )
        return self

    def problems(self, mode: str, num_sites: int, dp: bool) -> list[str]:
        """Every reason these settings cannot run with a privacy ``mode`` over ``num_sites``.

        Args:
            mode: ``privacy.mode``.
            num_sites: Sites the scenario lists.
            dp: Whether ``privacy.dp`` is set.

        Returns:
            One message per problem, naming the fields and how to fix them (empty: fine).
        """
        out: list[str] = []
        if mode in SEALED_MODES:
            if self.rule in CLEAR_UPDATE_RULES:
                out.append(
                    f"aggregation.rule {self.rule} needs each site's update in clear; "
                    f"privacy.mode {mode} never shows one to the coordinator. Use rule fedavg "
                    f"with site_clip under {mode}, or privacy.mode plaintext"
                )
            if self.norm_bound is not None:
                out.append(
                    f"aggregation.norm_bound learns from each site's update norm; privacy.mode "
                    f"{mode} never shows one to the coordinator. Use site_clip under {mode} "
                    "(each site clips its own update), or privacy.mode plaintext"
                )
        if dp and self.rule != "fedavg":
            out.append(
                f"aggregation.rule {self.rule} with privacy.dp: the Gaussian noise is sized for "
                "the mean of clipped updates (one site moves it by at most clip_norm / m); "
                f"a {self.rule} is not bounded that way, so the reported epsilon would not hold. "
                "Use rule fedavg (DP already clips every update and counts each site once)"
            )
        if dp and self.site_clip is not None:
            out.append(
                "aggregation.site_clip with privacy.dp: DP already clips every update to "
                "privacy.dp.clip_norm. Set clip_norm to the bound you want and remove site_clip"
            )
        if self.rule in KRUM_RULES and num_sites <= 2 * self.byzantine + 2:
            out.append(
                f"aggregation.rule {self.rule} with byzantine {self.byzantine} needs more than "
                f"2 x {self.byzantine} + 2 = {2 * self.byzantine + 2} sites; the scenario lists "
                f"{num_sites}. "
                + (
                    f"Lower byzantine to at most {(num_sites - 3) // 2}, add sites, "
                    if num_sites >= 5
                    else "Add sites "
                )
                + "or use rule median"
            )
        return out
