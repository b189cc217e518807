"""Where a site's data comes from: generated or CSV transactions, synthetic CT, DICOM folders, a PACS."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    Field,
    ValidationInfo,
    field_validator,
    model_validator,
)

from fedcore.config.base import SITE_ID_PATTERN, _Model
from fedcore.config.table import TableData


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


GENERATED_FEATURES = ("channel_online", "card_present", "hour_of_day", "account_age_days")
"""Extra numeric features every generated table carries (``task.features`` may name these)."""


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
    GeneratedData | CsvData | TableData | SyntheticCtData | DicomData | PacsData,
    Field(discriminator="kind"),
]
IMAGING_DATA = (SyntheticCtData, DicomData, PacsData)


class SiteSpec(_Model):
    """One member institution of the consortium."""

    id: str = Field(..., pattern=SITE_ID_PATTERN, description="short unique id, e.g. bank-a")
    kind: Literal["bank", "hospital"] = "bank"
    data: DataSource
    device: str = Field(
        "auto",
        description="auto, cpu, nvidia[:N], cuda[:N], amd[:N], rocm[:N], intel[:N], xpu[:N]",
    )
