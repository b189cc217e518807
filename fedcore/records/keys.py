"""Message types and record keys of fedcore's messages, defined once."""

from __future__ import annotations

# message types
TELEMETRY = "query.telemetry"
TRAIN = "train"
EVALUATE = "evaluate"
EXPORT = "query.export"

# record keys
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"
TELEMETRY_INFO = "telemetry.info"
TELEMETRY_METRICS = "telemetry.metrics"
CKKS_AGGREGATES = "ckks.aggregates"
CKKS_UPDATE = "ckks.update"
AUTH = "auth"
SIGNATURE = "auth.signature"
"""Key of a reply's signature in its ``config`` record."""

HIST_BINS = 200
"""Score histogram resolution used for pooled PR-AUC / ROC-AUC across sites."""
