"""Scenario and site configuration: typed pydantic models, validated once at load.

A *scenario* describes a whole consortium run (sites, task, rounds, privacy,
scheduler, engine). A *site config* is what one institution's ``fed-client``
reads: its own id, data source and device, which never leave the site.
Both load from YAML through :func:`load_scenario` / :func:`load_site_config`,
which turn every problem into one :class:`ConfigError` that names the file
and the field path.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections import Counter
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

SITE_ID_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,62}$"


class ConfigError(Exception):
    """A scenario or site file that cannot be used, with a message naming file and field."""

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = str(path)
        self.message = message
        super().__init__(f"{self.path}: {message}")


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------- data


class ColumnMapping(_Model):
    """Which column of a bank's CSV holds what. Optional columns may be ``null``."""

    transaction_id: str | None = Field(None, description="unique transaction id")
    payer: str = Field(..., description="paying account id")
    payee: str = Field(..., description="receiving account id")
    merchant: str | None = Field(None, description="merchant id, if any")
    device: str | None = Field(None, description="device / session fingerprint id, if any")
    amount: str = Field(..., description="transaction amount (numeric)")
    timestamp: str = Field(..., description="ISO-8601 date-time or UNIX seconds")
    label: str = Field(..., description="1 for fraud, 0 for legitimate")
    features: dict[str, str] = Field(
        default_factory=dict,
        description="extra numeric features: canonical name (as in task.features) -> column",
    )


class GeneratedData(_Model):
    """Synthetic bank transactions from fedcore's seeded generator."""

    kind: Literal["generated"] = "generated"
    transactions: int = Field(5000, ge=200, le=5_000_000, description="number of transactions")
    fraud_rate: float = Field(0.01, gt=0.0, le=0.2, description="target share of fraud")
    customer_mix: Literal["retail", "business", "mixed"] = Field(
        "retail", description="customer population (changes amounts, merchants, timing)"
    )
    days: int = Field(60, ge=2, le=3650, description="span of the transaction history")
    seed: int | None = Field(
        None, description="data seed; default: derived from scenario seed and site id"
    )


class CsvData(_Model):
    """A bank's own transactions CSV, mapped to fedcore's columns."""

    kind: Literal["csv"] = "csv"
    path: Path = Field(..., description="CSV file; relative paths are relative to the config file")
    columns: ColumnMapping
    delimiter: str = Field(",", min_length=1, max_length=1)


class SyntheticCtData(_Model):
    """Seeded synthetic chest CT series, written as real DICOM files at the site (:mod:`fedcore.data.synthetic_ct`)."""

    kind: Literal["synthetic-ct"] = "synthetic-ct"
    scans: int = Field(40, ge=2, le=5000, description="CT series (one per patient) to generate")
    scanner: str = Field(
        "ge-standard",
        min_length=1,
        description="scanner profile: noise, kernel, slice thickness, pixel spacing (see docs)",
    )
    nodule_prob: float = Field(
        0.5, ge=0.0, le=1.0, description="chance that a scan holds a nodule (prevalence)"
    )
    matrix: int | None = Field(
        None, ge=96, le=512, description="rows and columns per slice; default: the scanner's"
    )
    slices: int | None = Field(
        None, ge=24, le=1024, description="slices per series; default: the scanner's"
    )

    @field_validator("scanner")
    @classmethod
    def _known_scanner(cls, name: str) -> str:
        from fedcore.data.synthetic_ct import SCANNERS

        if name not in SCANNERS:
            raise ValueError(f"unknown scanner {name!r}; valid: {', '.join(sorted(SCANNERS))}")
        return name

    seed: int | None = Field(
        None, description="generator seed; default: derived from the scenario seed and site id"
    )


class DicomData(_Model):
    """The hospital's own CT series: a folder of DICOM files or a DICOMDIR, and the candidate list."""

    kind: Literal["dicom"] = "dicom"
    path: Path = Field(
        ..., description="folder of DICOM files, or a DICOMDIR file (relative: to the config file)"
    )
    candidates: Path = Field(
        ...,
        description="CSV of candidate locations: series_uid,x_mm,y_mm,z_mm,nodule[,malignant,...]",
    )


_AE_TITLE = re.compile(r"^[ -\[\]-~]{1,16}$")  # DICOM default repertoire, no backslash, no control


def _check_ae_title(value: str, what: str) -> str:
    title = value.strip()
    if not _AE_TITLE.fullmatch(title):
        raise ValueError(
            f"{what} must be 1 to 16 printable ASCII characters without a backslash, "
            f"got {value!r}; use the AE title configured on the PACS"
        )
    return title


def check_query_keys(keys: dict[str, str]) -> dict[str, str]:
    """``keys`` if every one is a DICOM keyword with a string value (``ValueError`` naming the bad one)."""
    from pydicom.datadict import tag_for_keyword

    for keyword, value in keys.items():
        if keyword == "QueryRetrieveLevel" or tag_for_keyword(keyword) is None:
            raise ValueError(
                f"C-FIND key {keyword!r} is not a DICOM attribute keyword usable as a matching "
                "key; use keywords such as 'ModalitiesInStudy', 'StudyDate', 'PatientID', "
                "'AccessionNumber'"
            )
        if not isinstance(value, str):
            raise ValueError(
                f"C-FIND key {keyword!r} needs a string value (DICOM matching syntax, "
                f"e.g. '20240101-' or 'CT'), got {value!r}"
            )
    return keys


class PacsSpec(_Model):
    """Where a hospital's PACS answers DICOM query/retrieve (C-FIND, then C-GET or C-MOVE)."""

    host: str = Field("127.0.0.1", min_length=1, description="PACS host name or IP address")
    port: int = Field(..., ge=1, le=65535, description="PACS DICOM port")
    called_ae: str = Field(..., description="the PACS's AE title")
    calling_ae: str = Field("FEDCORE", description="fedcore's AE title, as registered on the PACS")
    move_destination_ae: str | None = Field(
        None,
        description="C-MOVE only: AE title the PACS sends to (fedcore's storage SCP); "
        "defaults to calling_ae",
    )
    store_port: int | None = Field(
        None, ge=1, le=65535, description="C-MOVE only: port of fedcore's storage SCP"
    )
    store_host: str = Field(
        "127.0.0.1",
        min_length=1,
        description="C-MOVE only: address fedcore's storage SCP listens on; the interface "
        "the PACS reaches this machine by (never 0.0.0.0 without a firewall)",
    )
    method: Literal["c-get", "c-move"] = "c-get"
    timeout_s: float = Field(30.0, gt=0, description="connection, ACSE and DIMSE timeout")
    query: dict[str, str] = Field(
        default_factory=dict,
        description="extra C-FIND matching keys at study level, e.g. {'ModalitiesInStudy': 'CT'}",
    )

    @field_validator("called_ae", "calling_ae", "move_destination_ae")
    @classmethod
    def _ae_title(cls, value: str | None, info: ValidationInfo) -> str | None:
        return None if value is None else _check_ae_title(value, str(info.field_name))

    @field_validator("query")
    @classmethod
    def _query(cls, value: dict[str, str]) -> dict[str, str]:
        return check_query_keys(value)

    @model_validator(mode="after")
    def _move_needs_store_port(self) -> PacsSpec:
        if self.method == "c-move" and self.store_port is None:
            raise ValueError(
                "method 'c-move' needs store_port: the port of fedcore's storage SCP, the one "
                "registered for the move destination AE on the PACS"
            )
        return self

    @property
    def destination_ae(self) -> str:
        """AE title of fedcore's storage SCP for C-MOVE."""
        return self.move_destination_ae or self.calling_ae

    def describe(self) -> str:
        """``host:port`` and both AE titles, for messages."""
        return (
            f"PACS {self.called_ae!r} at {self.host}:{self.port} (calling AE {self.calling_ae!r})"
        )


class PacsData(_Model):
    """CT studies pulled from the hospital's PACS into the site's state folder, then read as DICOM."""

    kind: Literal["pacs"] = "pacs"
    pacs: PacsSpec
    candidates: Path = Field(..., description="CSV of candidate locations (as for kind dicom)")


DataSource = Annotated[
    GeneratedData | CsvData | SyntheticCtData | DicomData | PacsData,
    Field(discriminator="kind"),
]
IMAGING_DATA = (SyntheticCtData, DicomData, PacsData)


# --------------------------------------------------------------------------- sections


class SiteSpec(_Model):
    """One member institution of the consortium."""

    id: str = Field(..., pattern=SITE_ID_PATTERN, description="short unique id, e.g. bank-a")
    kind: Literal["bank", "hospital"] = "bank"
    data: DataSource
    device: str = Field(
        "auto",
        description="auto, cpu, nvidia[:N], cuda[:N], amd[:N], rocm[:N], intel[:N], xpu[:N]",
    )


class ImagingSpec(_Model):
    """The nodule model and its input: patches cut around candidate locations in CT volumes."""

    patch_size: int = Field(32, ge=8, le=128, description="patch edge in voxels (a cube)")
    spacing_mm: float = Field(
        1.5, gt=0.2, le=10.0, description="isotropic spacing volumes are resampled to (mm)"
    )
    window_hu: tuple[float, float] = Field(
        (-1000.0, 400.0), description="HU window scaled to [0, 1] (low, high)"
    )
    channels: list[int] = Field(
        default_factory=lambda: [8, 16, 32],
        min_length=1,
        max_length=4,
        description="3D CNN stem: channels per stride-2 stage",
    )
    dim: int = Field(32, ge=8, le=512, description="Transformer token width")
    heads: int = Field(4, ge=1, le=16, description="attention heads (must divide dim)")
    transformer_layers: int = Field(2, ge=1, le=8, description="Transformer encoder layers")
    dropout: float = Field(0.0, ge=0.0, lt=1.0, description="dropout in the Transformer")

    @model_validator(mode="after")
    def _check(self) -> ImagingSpec:
        low, high = self.window_hu
        if not low < high:
            raise ValueError(
                f"window_hu must be (low, high) with low < high; found {self.window_hu}"
            )
        if self.dim % self.heads:
            raise ValueError(f"heads ({self.heads}) must divide dim ({self.dim})")
        if self.patch_size % 2 ** len(self.channels):
            raise ValueError(
                f"patch_size ({self.patch_size}) must be divisible by 2**{len(self.channels)} "
                f"(one halving per stem stage; channels: {self.channels})"
            )
        return self


class TaskSpec(_Model):
    """What is trained: model family and its hyper-parameters."""

    model: Literal["fraud-gnn", "nodule-net"] = Field(
        "fraud-gnn",
        description="fraud-gnn (transaction graphs) or nodule-net (3D CNN + Transformer on CT)",
    )
    dataset: Literal["transactions", "ct-candidates"] = Field(
        "transactions", description="follows the model: transactions or ct-candidates"
    )
    hidden: int = Field(64, ge=4, le=1024)
    layers: int = Field(2, ge=1, le=4)
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    features: list[str] = Field(
        default_factory=list, description="extra numeric row features every site provides"
    )
    test_fraction: float = Field(0.3, gt=0.0, lt=0.9, description="latest share of time held out")
    threshold: float = Field(
        0.5,
        gt=0.0,
        lt=1.0,
        description="score threshold for F1/precision/recall/FPR (operating_point: fixed)",
    )
    operating_point: Literal["fixed", "balanced"] = Field(
        "fixed",
        description="fixed: flag scores >= threshold; balanced: each site flags at the score "
        "where sensitivity equals specificity on its own training split, for every model",
    )
    imaging: ImagingSpec = Field(
        default_factory=ImagingSpec, description="nodule-net: patch geometry and model size"
    )

    @model_validator(mode="before")
    @classmethod
    def _dataset_follows_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and data.get("model") == "nodule-net" and "dataset" not in data:
            return {**data, "dataset": "ct-candidates"}
        return data

    @model_validator(mode="after")
    def _model_fits_dataset(self) -> TaskSpec:
        expected = "ct-candidates" if self.model == "nodule-net" else "transactions"
        if self.dataset != expected:
            raise ValueError(
                f"model {self.model} trains on dataset {expected}; found dataset {self.dataset}"
            )
        return self

    @property
    def is_imaging(self) -> bool:
        """Whether this task trains the nodule model on CT data."""
        return self.model == "nodule-net"


class TrainingSpec(_Model):
    """Local training at each site, per round."""

    local_epochs: int = Field(5, ge=1, le=1000)
    lr: float = Field(0.01, gt=0.0, le=10.0)
    weight_decay: float = Field(0.0, ge=0.0)
    batch_size: int | None = Field(
        None, ge=16, description="target transactions per mini-batch; null = full graph"
    )
    pos_weight: float | None = Field(
        None, gt=0.0, description="loss weight of the fraud class; null = sqrt(neg/pos) per site"
    )


class CkksSpec(_Model):
    """CKKS homomorphic aggregation (TenSEAL): parameters made for add-only sums."""

    poly_modulus_degree: Literal[4096, 8192, 16384] = Field(
        8192, description="ring dimension N; one ciphertext holds N/2 slots"
    )
    coeff_mod_bit_sizes: list[int] = Field(
        default_factory=lambda: [60, 40],
        min_length=2,
        max_length=8,
        description="modulus chain; addition needs no multiplicative depth, so [60, 40] suffices",
    )
    scale_bits: int = Field(40, ge=16, le=60, description="log2 of the CKKS scale (unpacked mode)")
    packing: bool = Field(
        True, description="pack several quantized values per slot (BatchCrypt-style)"
    )
    values_per_slot: int = Field(3, ge=1, le=8, description="values packed into one slot")
    clip: float = Field(
        0.1,
        gt=0.0,
        description=(
            "packed mode: each update value (local minus global weight) is clipped to "
            "[-clip, clip] before quantizing; smaller is finer. Adam moves a weight by about "
            "lr per step, so local_epochs * lr (x batches per epoch) is a good bound"
        ),
    )

    @field_validator("coeff_mod_bit_sizes")
    @classmethod
    def _bit_sizes(cls, sizes: list[int]) -> list[int]:
        bad = [b for b in sizes if not 20 <= b <= 60]
        if bad:
            raise ValueError(f"coefficient modulus bit sizes must be in 20..60; got {bad}")
        return sizes


class SecAggSpec(_Model):
    """SecAgg+ (Flower's ``SecAggPlusWorkflow``): masks that cancel in the sum."""

    num_shares: int = Field(
        3, ge=2, description="how many other sites receive a share of each site's secrets"
    )
    reconstruction_threshold: int = Field(
        2,
        ge=2,
        description="shares needed to rebuild a dropped site's mask; tolerates num_shares - threshold dropouts",
    )
    clipping_range: float = Field(
        8.0, gt=0.0, description="values are clipped to +-this before masking"
    )
    quantization_range: int = Field(
        2**22, ge=2**8, description="quantization levels over the clipping range"
    )
    max_weight: float = Field(
        100_000.0, gt=0.0, description="largest num_examples a site's weight may carry"
    )

    @model_validator(mode="after")
    def _threshold(self) -> SecAggSpec:
        if self.reconstruction_threshold > self.num_shares:
            raise ValueError(
                f"reconstruction_threshold ({self.reconstruction_threshold}) cannot exceed "
                f"num_shares ({self.num_shares})"
            )
        return self


class DpSpec(_Model):
    """Differential privacy: per-site clipping and central Gaussian noise, with an RDP accountant."""

    noise_multiplier: float = Field(
        ..., description="Gaussian noise std as a multiple of clip_norm (must be > 0)"
    )
    clip_norm: float = Field(
        ..., gt=0.0, description="each site's update is clipped to this L2 norm"
    )
    delta: float = Field(1e-5, gt=0.0, lt=1.0, description="the delta of (epsilon, delta)-DP")

    @field_validator("noise_multiplier")
    @classmethod
    def _noise(cls, z: float) -> float:
        if not z > 0.0:
            raise ValueError(
                f"noise_multiplier is {z}: without noise there is no differential privacy. "
                "Set it above 0 (e.g. 1.0), or remove privacy.dp"
            )
        return z


class PrivacySpec(_Model):
    """How updates are protected on their way to the coordinator."""

    mode: Literal["plaintext", "ckks", "secagg+"] = Field(
        "plaintext", description="plaintext (tests only), ckks or secagg+"
    )
    dp: DpSpec | None = Field(
        None, description="add differential privacy (combinable with any mode)"
    )
    ckks: CkksSpec = CkksSpec()
    secagg: SecAggSpec = SecAggSpec()


SCHEDULER_POLICIES = ("random", "round-robin", "least-loaded", "oort", "fedcore")
"""Participant-selection policies a scenario may name in ``scheduler.policy``."""


class PluginSpec(_Model):
    """One filter or score plugin of the ``fedcore`` scheduler, by registry name."""

    name: str = Field(..., description="plugin name, e.g. health, task-fit, entropy-load")
    weight: float = Field(1.0, ge=0.0, description="score plugins: weight of its 0-100 score")
    params: dict[str, float | int | bool | str] = Field(
        default_factory=dict, description="keyword arguments of the plugin"
    )


class AllocatorSpec(_Model):
    """How the ``fedcore`` scheduler sizes each site's local work against a round deadline."""

    deadline_s: float | None = Field(
        None,
        gt=0.0,
        description="round deadline in seconds; unset: the deadline_quantile of the chosen "
        "sites' predicted times at training.local_epochs",
    )
    deadline_quantile: float = Field(
        0.8,
        gt=0.0,
        le=1.0,
        description="quantile of the sites' predicted seconds that sets the automatic deadline",
    )
    margin: float = Field(
        0.3,
        ge=0.0,
        lt=1.0,
        description="work is sized to finish by (1 - margin) x deadline; the rest absorbs "
        "forecast error",
    )
    headroom: float = Field(
        0.2, ge=0.0, lt=1.0, description="share of each site's capacity kept free for its own work"
    )
    min_epochs: int = Field(1, ge=1, description="fewest local epochs a chosen site runs")
    max_epochs: int | None = Field(
        None, ge=1, description="most local epochs (unset: training.local_epochs)"
    )


class PredictorSpec(_Model):
    """The round-duration forecaster of the ``fedcore`` scheduler."""

    kind: Literal["lstm", "ewma", "last-value"] = "lstm"
    model: Path | None = Field(
        None,
        description="a trained LSTM file (relative: to the scenario); unset: EWMA until one is "
        "fitted on this run's own history",
    )
    refit_every: int = Field(
        0, ge=0, description="refit the LSTM on the run's history every N rounds (0: never)"
    )


class ScalingSpec(_Model):
    """The scale/migrate policy of the ``fedcore`` scheduler."""

    policy: Literal["hold", "rules", "dqn"] = "rules"
    period: int = Field(3, ge=1, description="rounds between two scale/migrate decisions")
    model: Path | None = Field(None, description="dqn: trained weights (relative: to the scenario)")


class SchedulerSpec(_Model):
    """Which sites train each round, on which device, and how much."""

    policy: Literal["random", "round-robin", "least-loaded", "oort", "fedcore"] = Field(
        "random", description="participant selection policy"
    )
    fraction: float = Field(
        1.0, gt=0.0, le=1.0, description="share of healthy sites chosen per round"
    )
    min_sites: int = Field(2, ge=1, description="fewest valid replies a round may aggregate")
    short_round: Literal["fail", "skip"] = Field(
        "fail",
        description="a round with fewer than min_sites valid updates: stop the run (fail), or "
        "keep the global model and go on (skip; plaintext and ckks)",
    )
    task_kind: Literal["training", "fine-tuning", "inference"] = Field(
        "training", description="what the sites run; sizes the task-fit filter's needs"
    )
    thresholds: dict[str, float] = Field(
        default_factory=dict,
        description="health limits for the filters, e.g. max_temperature_c: 85",
    )
    filters: list[PluginSpec] = Field(
        default_factory=lambda: [PluginSpec(name="health"), PluginSpec(name="task-fit")],
        description="fedcore: filter plugins, run in order (add device-free where sites "
        "report GPU utilization)",
    )
    scores: list[PluginSpec] = Field(
        default_factory=lambda: [
            PluginSpec(name="entropy-load", weight=0.5),
            PluginSpec(name="staleness", weight=2.0),
            PluginSpec(name="statistical-utility", weight=1.0),
        ],
        description="fedcore: score plugins and their weights",
    )
    allocator: AllocatorSpec = AllocatorSpec()
    predictor: PredictorSpec = PredictorSpec()
    scaling: ScalingSpec = ScalingSpec()


class SimulatorSpec(_Model):
    """Run the consortium on simulated device pools and a virtual clock (in-process engine only).

    Models really train; how long each site takes, whether it waits for its device or
    drops out, and what telemetry it reports come from the trace-driven simulator.
    """

    seed: int = Field(0, description="seed of the simulated loads, heat, noise and failures")
    start_hour: float = Field(9.0, ge=0.0, lt=24.0, description="UTC hour at virtual time 0")
    examples_per_second: float = Field(
        2000.0, gt=0.0, description="training examples per second on an idle, cool A100"
    )
    round_overhead_s: float = Field(
        5.0, ge=0.0, description="virtual seconds of each round's telemetry and evaluation"
    )
    pools: dict[str, list[Literal["h100", "a100", "t4", "mi250", "mi300x", "max1550", "cpu"]]] = (
        Field(
            default_factory=dict,
            description="device pool per site id; unlisted sites get a seeded heterogeneous pool",
        )
    )


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
            if self.task.is_imaging and self.export.enabled and self.export.int8:
                raise ValueError(
                    "export.int8 is not available for task model nodule-net yet; "
                    "set export: {int8: false} (the global weights are still exported)"
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

    @classmethod
    def from_scenario(
        cls, scenario: Scenario, site_id: str, state_dir: Path | None = None
    ) -> SiteConfig:
        """Build the site config that ``fedcore run`` hands to one simulated site."""
        s = scenario.site(site_id)
        return cls(
            id=s.id,
            kind=s.kind,
            data=s.data,
            device=s.device,
            seed=scenario.seed,
            state_dir=state_dir,
        )


# --------------------------------------------------------------------------- loading


def format_loc(loc: tuple[int | str, ...], data: Any) -> str:
    """Render a pydantic error location as a field path, using site ids where possible."""
    parts: list[str] = []
    node = data
    for item in loc:
        if isinstance(item, int):
            label = f"[{item}]"
            if isinstance(node, list) and 0 <= item < len(node):
                entry = node[item]
                if isinstance(entry, dict) and isinstance(entry.get("id"), str):
                    label = f"[{item}] (id {entry['id']!r})"
                node = entry
            else:
                node = None
            parts.append(label)
        else:
            if isinstance(node, dict):
                node = node.get(item)
            else:
                node = None
            if item in ("generated", "csv") and parts and parts[-1].lstrip(".") == "data":
                continue  # discriminator tag: the user wrote `kind`, not this
            parts.append(("." if parts else "") + str(item))
    return "".join(parts) or "(top level)"


def validation_message(
    err: ValidationError, data: Any, unknown_hint: str = "see docs/scenario.md"
) -> str:
    """Every problem of a validation error, one line each, located by field path.

    Args:
        err: The pydantic error.
        data: The raw YAML data (to name list items by their ``id``).
        unknown_hint: What to say after "unknown field (check the spelling; ...".
    """
    lines = []
    for e in err.errors():
        loc = format_loc(tuple(e["loc"]), data)
        msg = str(e["msg"]).removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = f"unknown field (check the spelling; {unknown_hint})"
        elif e["type"] == "missing":
            msg = "required field is missing"
        found = e.get("input")
        if e["type"] not in ("missing", "extra_forbidden") and not isinstance(found, dict | list):
            msg += f" (found {found!r})"
        lines.append(f"  {loc}: {msg}")
    n = len(lines)
    return f"{n} problem{'s' if n > 1 else ''}:\n" + "\n".join(lines)


def read_yaml(path: Path) -> Any:
    if not path.exists():
        raise ConfigError(path, "file not found")
    if path.is_dir():
        raise ConfigError(path, "is a directory, expected a YAML file")
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(path, f"cannot read: {exc}") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(path, f"invalid YAML{where}: {problem}") from exc
    if not isinstance(data, dict):
        raise ConfigError(path, f"expected a mapping at the top level, found {type(data).__name__}")
    return data


def _resolve_csv_paths(data: dict[str, Any], sites: list[Any], base: Path) -> None:
    for site in sites:
        src = site.get("data") if isinstance(site, dict) else None
        if not isinstance(src, dict):
            continue
        keys = {"csv": ("path",), "dicom": ("path", "candidates"), "pacs": ("candidates",)}
        for key in keys.get(str(src.get("kind")), ()):
            if isinstance(src.get(key), str):
                p = Path(src[key]).expanduser()
                src[key] = str(p if p.is_absolute() else (base / p).resolve())


def _resolve_scheduler_paths(data: dict[str, Any], base: Path) -> None:
    """Make ``scheduler.predictor.model`` and ``scheduler.scaling.model`` relative to the scenario."""
    sched = data.get("scheduler")
    if not isinstance(sched, dict):
        return
    for section in ("predictor", "scaling"):
        part = sched.get(section)
        if isinstance(part, dict) and isinstance(part.get("model"), str):
            p = Path(part["model"]).expanduser()
            part["model"] = str(p if p.is_absolute() else (base / p).resolve())


def _check_files(path: Path, sites: list[tuple[str, DataSource]]) -> None:
    problems = []
    for label, src in sites:
        if isinstance(src, CsvData) and not src.path.is_file():
            problems.append(f"  {label}.data.path: file not found: {src.path}")
        if isinstance(src, DicomData) and not src.path.exists():
            problems.append(f"  {label}.data.path: no such folder or DICOMDIR: {src.path}")
        if isinstance(src, DicomData | PacsData) and not src.candidates.is_file():
            problems.append(f"  {label}.data.candidates: file not found: {src.candidates}")
    if problems:
        n = len(problems)
        raise ConfigError(path, f"{n} problem{'s' if n > 1 else ''}:\n" + "\n".join(problems))


def load_scenario(path: Path | str, *, check_files: bool = True) -> Scenario:
    """Load and validate a scenario YAML file.

    Args:
        path: The scenario file.
        check_files: Also check that every CSV data file exists.

    Returns:
        The validated scenario.

    Raises:
        ConfigError: naming the file and each bad field path.
    """
    path = Path(path)
    data = read_yaml(path)
    if isinstance(data.get("sites"), list):
        _resolve_csv_paths(data, data["sites"], path.resolve().parent)
    _resolve_scheduler_paths(data, path.resolve().parent)
    try:
        scenario = Scenario.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, validation_message(exc, data)) from None
    if check_files:
        _check_files(
            path, [(f"sites[{i}] (id {s.id!r})", s.data) for i, s in enumerate(scenario.sites)]
        )
    return scenario


def load_site_config(path: Path | str, *, check_files: bool = True) -> SiteConfig:
    """Load and validate a site config YAML (what ``fed-client start --site`` reads).

    Raises:
        ConfigError: naming the file and each bad field path.
    """
    path = Path(path)
    data = read_yaml(path)
    base = path.resolve().parent
    _resolve_csv_paths(data, [data], base)
    if isinstance(data.get("state_dir"), str):
        sd = Path(data["state_dir"]).expanduser()
        data["state_dir"] = str(sd if sd.is_absolute() else (base / sd).resolve())
    try:
        cfg = SiteConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(path, validation_message(exc, data)) from None
    if check_files:
        _check_files(path, [("(site)", cfg.data)])
    return cfg


def dump_site_config(cfg: SiteConfig, path: Path) -> None:
    """Write a site config as YAML (used by ``fedcore run --engine deployment``)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True), sort_keys=False))
