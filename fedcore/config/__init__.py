"""Scenario and site configuration: typed pydantic models, validated once at load.

A *scenario* describes a whole consortium run (sites, task, rounds, privacy,
scheduler, engine). A *site config* is what one institution's ``fed-client``
reads: its own id, data source and device, which never leave the site.
Both load from YAML through :func:`load_scenario` / :func:`load_site_config`,
which turn every problem into one :class:`ConfigError` that names the file
and the field path.

The package's modules: :mod:`~fedcore.config.base` (the base model and error),
:mod:`~fedcore.config.data` (data sources and sites), :mod:`~fedcore.config.task`,
:mod:`~fedcore.config.privacy`, :mod:`~fedcore.config.aggregation`,
:mod:`~fedcore.config.scheduler`,
:mod:`~fedcore.config.scenario` and :mod:`~fedcore.config.loading`. Every public name is
importable from ``fedcore.config`` itself.
"""

from __future__ import annotations

from fedcore.config.aggregation import (
    AggregationSpec,
    NormBoundSpec,
)
from fedcore.config.base import (
    SITE_ID_PATTERN,
    ConfigError,
)
from fedcore.config.data import (
    IMAGING_DATA,
    ColumnMapping,
    CsvData,
    DataSource,
    DicomData,
    GeneratedData,
    PacsData,
    PacsSpec,
    SiteSpec,
    SyntheticCtData,
    check_query_keys,
)
from fedcore.config.history import HistorySpec
from fedcore.config.loading import (
    closest_choice,
    dump_site_config,
    format_loc,
    is_site_file,
    known_fields,
    load_scenario,
    load_site_config,
    read_yaml,
    validation_message,
)
from fedcore.config.monitor import MonitorSpec
from fedcore.config.privacy import (
    CkksSpec,
    DpSpec,
    PrivacySpec,
    SecAggSpec,
)
from fedcore.config.scenario import (
    BaselineSpec,
    EngineSpec,
    ExportSpec,
    Scenario,
    SiteConfig,
    SitePrivacy,
)
from fedcore.config.scheduler import (
    SCHEDULER_POLICIES,
    AllocatorSpec,
    PluginSpec,
    PredictorSpec,
    ScalingSpec,
    SchedulerSpec,
    SimulatorSpec,
)
from fedcore.config.table import (
    ENTITY_TYPES,
    CleaningSpec,
    EntityColumn,
    LabelColumn,
    QualitySpec,
    TableColumns,
    TableData,
    TimestampColumn,
)
from fedcore.config.task import (
    TABLE_MODELS,
    ImagingSpec,
    KnnSpec,
    TaskSpec,
    TrainingSpec,
)

__all__ = [
    "KnnSpec",
    "TABLE_MODELS",
    "TimestampColumn",
    "TableData",
    "TableColumns",
    "QualitySpec",
    "LabelColumn",
    "EntityColumn",
    "CleaningSpec",
    "ENTITY_TYPES",
    "AggregationSpec",
    "AllocatorSpec",
    "BaselineSpec",
    "CkksSpec",
    "ColumnMapping",
    "ConfigError",
    "CsvData",
    "DataSource",
    "DicomData",
    "DpSpec",
    "EngineSpec",
    "ExportSpec",
    "GeneratedData",
    "HistorySpec",
    "MonitorSpec",
    "IMAGING_DATA",
    "ImagingSpec",
    "NormBoundSpec",
    "PacsData",
    "PacsSpec",
    "PluginSpec",
    "PredictorSpec",
    "PrivacySpec",
    "SCHEDULER_POLICIES",
    "SITE_ID_PATTERN",
    "ScalingSpec",
    "Scenario",
    "SchedulerSpec",
    "SecAggSpec",
    "SimulatorSpec",
    "SiteConfig",
    "SitePrivacy",
    "SiteSpec",
    "SyntheticCtData",
    "TaskSpec",
    "TrainingSpec",
    "check_query_keys",
    "closest_choice",
    "dump_site_config",
    "format_loc",
    "is_site_file",
    "known_fields",
    "load_scenario",
    "load_site_config",
    "read_yaml",
    "validation_message",
]
