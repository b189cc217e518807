"""Bare Flower ClientApp answering bare_serverapp.py's message pattern with trivial numpy work (benchmarks/deployment.py).

Telemetry and extra queries get a few metrics back; ``train`` returns arrays of the
same names, shapes and dtypes as it received (slightly moved) plus ``num-examples``;
``evaluate`` returns a few metrics. Imports numpy and Flower only.
"""

from __future__ import annotations

import numpy as np
from flwr.app import Array, ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

app = ClientApp()


def _examples(context: Context) -> int:
    return 1000 + (abs(hash(context.node_id)) % 1000)


@app.query("telemetry")
def telemetry(msg: Message, context: Context) -> Message:
    """A device reading and the data size, like a fedcore site's telemetry reply."""
    metrics = MetricRecord(
        {
            "utilization": 0.1,
            "memory": 0.2,
            "temperature": 40.0,
            "power": 100.0,
            "num-examples": _examples(context),
        }
    )
    return Message(RecordDict({"telemetry": metrics}), reply_to=msg)


@app.query("extra")
def extra(msg: Message, context: Context) -> Message:
    """A tiny reply (a control stage)."""
    return Message(RecordDict({"metrics": MetricRecord({"ok": 1})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """Move every received array a little and send it back (same names, shapes, dtypes)."""
    arrays = {
        key: (array.numpy() * 0.99 + 0.001).astype(array.numpy().dtype)
        for key, array in msg.content.array_records["arrays"].items()
    }
    return Message(
        RecordDict(
            {
                "arrays": ArrayRecord(
                    {k: Array(np.ascontiguousarray(v)) for k, v in arrays.items()}
                ),
                "metrics": MetricRecord({"loss": 0.1, "num-examples": _examples(context)}),
            }
        ),
        reply_to=msg,
    )


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """A loss and a score computed from the received model."""
    norm = sum(
        float(np.linalg.norm(a.numpy())) for a in msg.content.array_records["arrays"].values()
    )
    metrics = MetricRecord(
        {"loss": norm / 100.0, "pr_auc": 0.5, "num-examples": _examples(context)}
    )
    return Message(RecordDict({"metrics": metrics}), reply_to=msg)
