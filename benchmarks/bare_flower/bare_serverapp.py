"""Bare Flower ServerApp that sends a fixed message pattern each round (numpy only; benchmarks/deployment.py).

Each round it sends every connected site the exchanges of :func:`message_pattern` one
after another with ``grid.send_and_receive`` (Flower's default polling), averages the
returned arrays (FedAvg weighted by ``num-examples``) and appends the round's wall
times to ``WORK_DIR/rounds.jsonl``. ``WORK_DIR`` comes from the run config
(``work-dir``); ``WORK_DIR/pattern.json`` says how many rounds, exchanges and sites,
and the model's array names, shapes and dtypes.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.serverapp import Grid, ServerApp

__all__ = [
    "Exchange",
    "app",
    "initial_arrays",
    "message_pattern",
    "weighted_mean",
]


@dataclass(frozen=True)
class Exchange:
    """One message to every site and its replies.

    Attributes:
        name: ``telemetry``, ``train``, ``evaluate`` or ``extra-K``.
        message_type: Flower message type (``query.telemetry`` reaches ``@app.query("telemetry")``).
        sends_model: The instruction carries the model's arrays.
        reply: ``tiny`` (a few metrics), ``model`` (arrays of the model's size plus metrics) or
            ``metrics`` (evaluation metrics).
    """

    name: str
    message_type: str
    sends_model: bool
    reply: str


TELEMETRY = Exchange("telemetry", "query.telemetry", sends_model=False, reply="tiny")
TRAIN = Exchange("train", "train", sends_model=True, reply="model")
EVALUATE = Exchange("evaluate", "evaluate", sends_model=True, reply="metrics")


def message_pattern(exchanges: int) -> list[Exchange]:
    """The exchanges of one round.

    ``3``: telemetry query, train, evaluate (the Flower-alone round that the
    deployment targets are set against; benchmarks/deployment.py's ``bare-flower``). ``1``: train
    only, like fedcore's rounds after the first, whose train message carries the
    evaluation of the incoming model and the next round's telemetry (``bare-flower-1x``).
    ``2``: train, evaluate. More than 3: the three, then ``exchanges - 3`` tiny queries
    (``query.extra``, e.g. the control stages of a secure-aggregation protocol).

    Args:
        exchanges: Exchanges per round, at least 1.

    Raises:
        ValueError: if ``exchanges`` is below 1.
    """
    if exchanges < 1:
        raise ValueError(f"exchanges must be at least 1, found {exchanges}")
    if exchanges == 1:
        return [TRAIN]
    if exchanges == 2:
        return [TRAIN, EVALUATE]
    extra = [
        Exchange(f"extra-{k}", "query.extra", sends_model=False, reply="tiny")
        for k in range(1, exchanges - 2)
    ]
    return [TELEMETRY, TRAIN, EVALUATE, *extra]


def initial_arrays(spec: Sequence[Sequence[Any]], seed: int = 0) -> dict[str, np.ndarray]:
    """Seeded model arrays from ``[[name, shape, dtype], ...]`` (values ~ N(0, 0.1))."""
    rng = np.random.default_rng(seed)
    return {
        str(name): (0.1 * rng.standard_normal(tuple(shape))).astype(np.dtype(str(dtype)))
        for name, shape, dtype in spec
    }


def weighted_mean(
    models: Sequence[Mapping[str, np.ndarray]], weights: Sequence[float]
) -> dict[str, np.ndarray]:
    """FedAvg: the weighted mean of named arrays, each kept in its own dtype.

    Raises:
        ValueError: if there are no models, the weights do not match them or sum to 0.
    """
    if not models or len(models) != len(weights):
        raise ValueError(
            f"need one weight per model, found {len(models)} models, {len(weights)} weights"
        )
    total = float(sum(weights))
    if total <= 0:
        raise ValueError(f"weights must sum to more than 0, found {list(weights)}")
    out = {}
    for key, first in models[0].items():
        acc = np.zeros(first.shape, dtype=np.float64)
        for model, weight in zip(models, weights, strict=True):
            acc += np.asarray(model[key], dtype=np.float64) * weight
        out[key] = (acc / total).astype(first.dtype)
    return out


def _content(exchange: Exchange, model: Mapping[str, np.ndarray], server_round: int) -> RecordDict:
    records: dict[str, Any] = {"config": ConfigRecord({"round": server_round, "local-epochs": 3})}
    if exchange.sends_model:
        records["arrays"] = ArrayRecord(
            {k: Array(np.ascontiguousarray(v)) for k, v in model.items()}
        )
    return RecordDict(records)


def _append(path: Path, row: Mapping[str, Any]) -> None:
    with path.open("a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
        fh.flush()


def _wait_for_sites(grid: Grid, num_sites: int, timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    while True:
        nodes = sorted(grid.get_node_ids())
        if len(nodes) >= num_sites:
            return nodes[:num_sites]
        if time.monotonic() > deadline:
            raise RuntimeError(
                f"{len(nodes)} of {num_sites} sites connected within {timeout:.0f} s"
            )
        time.sleep(0.5)


def run(grid: Grid, work_dir: Path, timeout: float) -> None:
    """Wait for the sites, then run the rounds of ``work_dir/pattern.json``."""
    pattern = json.loads((work_dir / "pattern.json").read_text(encoding="utf-8"))
    rounds_file = work_dir / "rounds.jsonl"
    exchanges = message_pattern(int(pattern["exchanges"]))
    model = initial_arrays(pattern["arrays"], int(pattern.get("seed", 0)))
    nodes = _wait_for_sites(grid, int(pattern["num_sites"]), timeout)
    _append(rounds_file, {"event": "sites", "nodes": nodes, "time": time.time()})
    for server_round in range(1, int(pattern["rounds"]) + 1):
        start, t0 = time.time(), time.perf_counter()
        seconds: dict[str, float] = {}
        errors: list[str] = []
        replies = 0
        for exchange in exchanges:
            e0 = time.perf_counter()
            messages = [
                Message(
                    content=_content(exchange, model, server_round),
                    dst_node_id=node,
                    message_type=exchange.message_type,
                )
                for node in nodes
            ]
            answered = list(grid.send_and_receive(messages))
            seconds[exchange.name] = time.perf_counter() - e0
            good = []
            for reply in answered:
                if reply.has_error():
                    errors.append(f"{exchange.name}: {reply.error.reason}")
                else:
                    good.append(reply)
            replies += len(good)
            if exchange.reply == "model" and good:
                updates = [
                    {k: a.numpy() for k, a in r.content.array_records["arrays"].items()}
                    for r in good
                ]
                weights = [float(r.content.metric_records["metrics"]["num-examples"]) for r in good]  # type: ignore[arg-type]
                model = weighted_mean(updates, weights)
        end = time.time()
        _append(
            rounds_file,
            {
                "event": "round",
                "round": server_round,
                "start": start,
                "end": end,
                "seconds": time.perf_counter() - t0,
                "exchange_seconds": seconds,
                "exchanges": [asdict(e) for e in exchanges],
                "replies": replies,
                "errors": errors,
            },
        )
    _append(rounds_file, {"event": "done", "time": time.time()})


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """Flower entry point: run config ``work-dir`` and ``timeout``."""
    work_dir = Path(str(context.run_config["work-dir"]))
    try:
        run(grid, work_dir, float(context.run_config.get("timeout", 600.0)))
    except BaseException as exc:
        _append(
            work_dir / "rounds.jsonl", {"event": "error", "error": repr(exc), "time": time.time()}
        )
        raise
