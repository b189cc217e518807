"""A whole consortium run (scenario) and what one site reads (site config), with their checks."""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Literal

from pydantic import (
    Field,
    field_validator,
    model_validator,
)

from fedcore.config.aggregation import AggregationSpec
from fedcore.config.base import SITE_ID_PATTERN, _Model
from fedcore.config.data import (
    GENERATED_FEATURES,
    IMAGING_DATA,
    CsvData,
    DataSource,
    GeneratedData,
    SiteSpec,
)
from fedcore.config.history import HistorySpec
from fedcore.config.monitor import MonitorSpec
from fedcore.config.privacy import PrivacySpec
from fedcore.config.scheduler import SchedulerSpec, SimulatorSpec
from fedcore.config.table import QualitySpec, TableData
from fedcore.config.task import TaskSpec, TrainingSpec

SCENARIO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
"""A scenario name: one safe path component (it names the default run directory)."""


class EngineSpec(_Model):
    """Where the federation runs."""

    name: Literal["inprocess", "deployment"] = "inprocess"
    round_timeout: float = Field(600.0, gt=0.0, description="seconds to wait for replies")


class ExportSpec(_Model):
    """Model export after the last round: the global weights, and an INT8 model per site."""

    enabled: bool = True
    format: Literal["safetensors"] = "safetensors"
    int8: bool = Field(True, description="each site exports an INT8 ONNX model for its own device")
    tolerance: float = Field(
        0.01,
        ge=0.0,
        le=1.0,
        description="largest metric drop (PR-AUC) an INT8 export may show against FP32",
    )
    quantization: Literal["static", "dynamic"] = Field(
        "static",
        description="static: INT8 activation scales calibrated once on the site's training "
        "transactions, so a transaction's score does not depend on which others are scored "
        "with it (what fed-client predict and serve need); dynamic: scales taken from each "
        "call's own activations",
    )


class BaselineSpec(_Model):
    """Reference models trained next to the federation in ``fedcore run``."""

    local_only: bool = True
    cross_site: bool = Field(
        False,
        description="also judge each local-only model at every site (each site scores it at "
        "its own operating point for that model), pooled over all sites' test data",
    )
    centralized: bool = True
    non_graph: bool = True

    @model_validator(mode="after")
    def _cross_site_needs_local_models(self) -> BaselineSpec:
        if self.cross_site and not self.local_only:
            raise ValueError("cross_site judges the local-only models: it needs local_only: true")
        return self


class Scenario(_Model):
    """A complete consortium run."""

    name: str = Field(..., min_length=1)
    description: str = ""
    seed: int = 0
    rounds: int = Field(10, ge=1, le=10_000)
    sites: list[SiteSpec] = Field(..., min_length=1)
    task: TaskSpec = TaskSpec()
    training: TrainingSpec = TrainingSpec()
    privacy: PrivacySpec = PrivacySpec()
    scheduler: SchedulerSpec = SchedulerSpec()
    engine: EngineSpec = EngineSpec()
    export: ExportSpec = ExportSpec()
    simulator: SimulatorSpec | None = Field(
        None, description="simulate the sites' devices and clock (in-process engine)"
    )
    baselines: BaselineSpec = BaselineSpec()
    aggregation: AggregationSpec = AggregationSpec()
    data_quality: QualitySpec = Field(
        default_factory=QualitySpec,
        description="dataset table: thresholds on each site's data-quality report; a site "
        "failing one is left out of training, with the reason",
    )

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        if not SCENARIO_NAME.fullmatch(name):
            raise ValueError(
                "name must be 1 to 64 characters: letters, digits, '.', '_' and '-', starting "
                "with a letter or digit (it names the run directory runs/NAME-TIME); "
                "no '/', spaces or other characters"
            )
        return name

    @field_validator("sites")
    @classmethod
    def _unique_sites(cls, sites: list[SiteSpec]) -> list[SiteSpec]:
        dupes = sorted(i for i, n in Counter(s.id for s in sites).items() if n > 1)
        if dupes:
            raise ValueError(f"site id(s) listed more than once: {', '.join(dupes)}")
        return sites

    @model_validator(mode="after")
    def _enough_sites(self) -> Scenario:
        if self.scheduler.min_sites > len(self.sites):
            raise ValueError(
                f"scheduler.min_sites is {self.scheduler.min_sites} but only "
                f"{len(self.sites)} site(s) are listed"
            )
        for site in self.sites:
            imaging_data = isinstance(site.data, IMAGING_DATA)
            if imaging_data != self.task.is_imaging:
                raise ValueError(
                    f"site {site.id!r}: data kind {site.data.kind} does not fit task model "
                    f"{self.task.model} (fraud-gnn takes generated or csv transactions; "
                    "nodule-net takes synthetic-ct, dicom or pacs)"
                )
            if isinstance(site.data, TableData) != self.task.is_table:
                raise ValueError(
                    f"site {site.id!r}: data kind {site.data.kind} does not fit task dataset "
                    f"{self.task.dataset} (dataset table takes data kind table; a table in "
                    "any schema needs task.dataset: table)"
                )
            if isinstance(site.data, TableData):
                cols = site.data.columns
                for what, roles, mapped in (
                    ("features", self.task.features, cols.features),
                    ("categorical", self.task.categorical, cols.categorical),
                ):
                    missing = sorted(set(roles) - set(mapped))
                    if missing:
                        raise ValueError(
                            f"site {site.id!r}: data.columns.{what} lacks task role(s) "
                            f"{', '.join(missing)}; map each to a column of the site's table"
                        )
            if self.task.is_table and self.export.enabled and self.export.int8:
                raise ValueError(
                    "export.int8 is not available for dataset table yet; set export: "
                    "{int8: false} (the global weights are still exported)"
                )
            if self.task.is_imaging and self.export.enabled and self.export.int8:
                raise ValueError(
                    "export.int8 is not available for task model nodule-net yet; "
                    "set export: {int8: false} (the global weights are still exported)"
                )
            if isinstance(site.data, GeneratedData):
                unknown = sorted(set(self.task.features) - set(GENERATED_FEATURES))
                if unknown:
                    raise ValueError(
                        f"site {site.id!r}: generated data carry no feature(s) "
                        f"{', '.join(unknown)}; task.features may name "
                        f"{', '.join(GENERATED_FEATURES)} (or give the site its own csv data)"
                    )
            if isinstance(site.data, CsvData):
                missing = sorted(set(self.task.features) - set(site.data.columns.features))
                if missing:
                    raise ValueError(
                        f"site {site.id!r}: data.columns.features lacks task feature(s) "
                        f"{', '.join(missing)}"
                    )
        if self.scheduler.short_round == "skip" and self.privacy.mode == "secagg+":
            raise ValueError(
                "scheduler.short_round: skip cannot apply to secagg+ (SecAgg+ aggregates "
                "before the round's update count is known); use fail"
            )
        if self.simulator is not None:
            unknown = sorted(set(self.simulator.pools) - {s.id for s in self.sites})
            if unknown:
                raise ValueError(
                    f"simulator.pools names site(s) {', '.join(unknown)} that the scenario "
                    "does not list"
                )
            if self.engine.name != "inprocess":
                raise ValueError(
                    "simulator needs engine.name inprocess (it simulates the sites' devices "
                    "and clock in one process); remove the simulator section to deploy"
                )
        return self

    @model_validator(mode="after")
    def _aggregation_fits_privacy(self) -> Scenario:
        problems = self.aggregation.problems(
            self.privacy.mode, len(self.sites), self.privacy.dp is not None
        )
        if problems:
            raise ValueError("; ".join(problems))
        return self

    def site(self, site_id: str) -> SiteSpec:
        """Return the site with id ``site_id`` (``KeyError`` naming the known ids)."""
        for s in self.sites:
            if s.id == site_id:
                return s
        raise KeyError(f"no site {site_id!r}; known: {', '.join(s.id for s in self.sites)}")

    def fingerprint(self) -> str:
        """Stable hash of the scenario's content (used to refuse resuming a different run)."""
        blob = json.dumps(self.model_dump(mode="json"), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]


PrivacyMode = Literal["plaintext", "ckks", "secagg+"]
"""A privacy mode's name (``privacy.mode`` of a scenario)."""

SITE_PRIVACY_MODES: tuple[PrivacyMode, ...] = ("ckks", "secagg+")
"""The privacy modes a site file without a ``privacy`` section accepts (plaintext is for tests)."""


class SitePrivacy(_Model):
    """The privacy a site accepts, whatever a coordinator's round asks for.

    The coordinator's round config names the round's privacy mode and DP settings; a
    site checks them against this policy before it trains, evaluates, exports or takes
    part in SecAgg+, so a hostile coordinator cannot have a CKKS site send its update in
    clear. Default: ``ckks`` and ``secagg+``, DP not required. ``fedcore run`` pins each
    simulated site to the scenario's own mode (:meth:`SiteConfig.from_scenario`).
    """

    modes: list[PrivacyMode] = Field(
        default_factory=lambda: list(SITE_PRIVACY_MODES),
        description="the privacy modes this site trains, evaluates and exports in; "
        "plaintext (the update leaves the site in clear) only for tests and benchmarks",
    )
    require_dp: bool = Field(
        False,
        description="refuse rounds without privacy.dp (this site's update is then always "
        "clipped to the clip norm, and counts once in the aggregate)",
    )

    @field_validator("modes")
    @classmethod
    def _some_modes(cls, modes: list[str]) -> list[str]:
        if not modes:
            raise ValueError(
                "an empty list accepts no privacy mode, so the site would refuse every round; "
                f"list the modes it accepts (e.g. [{', '.join(SITE_PRIVACY_MODES)}]), or leave "
                "privacy out for that default"
            )
        return list(dict.fromkeys(modes))

    def mode_refusal(self, mode: str, site_config: str = "") -> str:
        """Why this site refuses a round in privacy ``mode``, or ``""`` when it accepts it.

        Args:
            mode: The privacy mode the coordinator asks for.
            site_config: The site file's path, for the message.
        """
        if mode in self.modes:
            return ""
        where = f"the site config {site_config}" if site_config else "the site config"
        return (
            f"refused a round in privacy mode {mode!r}: this site accepts only "
            f"{', '.join(self.modes)} (privacy.modes in {where}). If the consortium agreed on "
            f"{mode!r} for this site, add it there; otherwise ask the coordinator's operator "
            "why its scenario asks for it"
        )

    def refusal(self, privacy: PrivacySpec, site_config: str = "") -> str:
        """Why this site refuses a round with ``privacy`` (mode, then DP), or ``""``.

        Args:
            privacy: The round's privacy settings, as the coordinator sent them.
            site_config: The site file's path, for the message.
        """
        reasons = [self.mode_refusal(privacy.mode, site_config)]
        if self.require_dp and privacy.dp is None:
            where = f"the site config {site_config}" if site_config else "the site config"
            reasons.append(
                f"refused a round in privacy mode {privacy.mode!r} without differential "
                f"privacy: this site requires it (privacy.require_dp in {where}). The "
                "coordinator's scenario must set privacy.dp; if the consortium agreed to "
                "train without it, set require_dp: false there"
            )
        return "; ".join(r for r in reasons if r)


class SiteConfig(_Model):
    """What a site's ``fed-client`` reads. Stays at the site; never sent anywhere."""

    id: str = Field(..., pattern=SITE_ID_PATTERN)
    kind: Literal["bank", "hospital"] = "bank"
    data: DataSource
    device: str = "auto"
    seed: int = Field(0, description="consortium seed (used for generated data and local RNG)")
    state_dir: Path | None = Field(
        None, description="where the site keeps its cache and models (relative: to this file)"
    )
    approved_apps: list[str] | None = Field(
        None,
        description="sha256 of the Flower app bundles this site runs; unset: the bundle of "
        "the site's own installed fedcore",
    )
    privacy: SitePrivacy = Field(
        default_factory=SitePrivacy,
        description="the privacy modes this site accepts and whether it requires DP; a "
        "round asking for anything else is refused before any work",
    )
    history: HistorySpec = Field(
        default_factory=HistorySpec,
        description="the window of the site's recent transactions kept after export, in "
        "whose context new ones are scored (fed-client predict, fed-client serve)",
    )
    monitor: MonitorSpec = Field(
        default_factory=MonitorSpec,
        description="when fed-client serve raises a drift (PSI) or accuracy alarm about the "
        "served model",
    )

    @field_validator("approved_apps")
    @classmethod
    def _approved_apps(cls, hashes: list[str] | None) -> list[str] | None:
        if hashes is None:
            return None
        if not hashes:
            raise ValueError(
                "an empty list approves no app bundle, so the site would refuse every run; "
                "list the sha256 of each approved bundle, or leave approved_apps out to run "
                "the bundle of this site's own fedcore"
            )
        bad = [h for h in hashes if len(h) != 64 or h.strip("0123456789abcdefABCDEF")]
        if bad:
            raise ValueError(
                f"expected sha256 digests (64 hex digits, as a refused run's message at the site "
                f"shows them), found {', '.join(repr(h) for h in bad)}"
            )
        return [h.lower() for h in hashes]

    @classmethod
    def from_scenario(
        cls, scenario: Scenario, site_id: str, state_dir: Path | None = None
    ) -> SiteConfig:
        """Build the site config that ``fedcore run`` hands to one simulated site.

        The site accepts the scenario's own privacy mode only, and requires DP when the
        scenario sets it.
        """
        s = scenario.site(site_id)
        return cls(
            id=s.id,
            kind=s.kind,
            data=s.data,
            device=s.device,
            seed=scenario.seed,
            state_dir=state_dir,
            privacy=SitePrivacy(
                modes=[scenario.privacy.mode], require_dp=scenario.privacy.dp is not None
            ),
        )
