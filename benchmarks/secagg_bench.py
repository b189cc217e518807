"""Cost and accuracy of one real SecAgg+ (Bell et al., CCS 2020) round, measured in-process."""

from __future__ import annotations

from typing import Any

import numpy as np
from flwr.app import Context, Message
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import Stage
from flwr.serverapp import Grid, ServerApp
from flwr.supercore.task_identity import TaskIdentity

from fedcore.config import SecAggSpec
from fedcore.engines.inprocess import node_id_for, run_inprocess
from secure.secagg import SecAggOutcome, fit_reply_content, read_fit_instruction, run_secagg_round
from secure.secagg_client import secagg_mod

MASK_STAGES = (Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS)


def site_vector(seed: int, index: int, length: int) -> np.ndarray:
    """The benchmark's update of site ``index``: ``length`` float32 values, N(0, 0.01)."""
    return np.random.default_rng([seed, index]).normal(0.0, 0.01, length).astype(np.float32)


def _bench_client_app(seed: int, length: int, num_examples: int) -> ClientApp:
    app = ClientApp(mods=[secagg_mod])

    @app.train()
    def train(msg: Message, context: Context) -> Message:
        read_fit_instruction(msg.content)
        vec = site_vector(seed, int(context.node_config["bench-index"]), length)
        return Message(fit_reply_content([vec], num_examples, {}), reply_to=msg)

    return app


def benchmark_secagg(
    num_sites: int,
    length: int,
    seed: int,
    *,
    spec: SecAggSpec | None = None,
    num_examples: int = 1000,
    timeout: float = 600.0,
) -> dict[str, Any]:
    """Run one SecAgg+ round over ``num_sites`` in-process sites and measure it.

    Every site returns :func:`site_vector` with the same weight, so the exact
    result is the plain float64 mean. Sites measure their own protocol time
    inside :func:`~secure.secagg_client.secagg_mod` (training excluded).

    Args:
        num_sites: Sites in the round (more than ``spec.reconstruction_threshold``).
        length: Values per site.
        seed: Seed of the sites' vectors.
        spec: SecAgg+ settings (default: ``SecAggSpec()`` with ``max_weight = num_examples``,
            the precise choice when every site has the same weight).
        num_examples: Every site's weight.
        timeout: Seconds per stage.

    Returns:
        ``site_mask_seconds`` and ``site_unmask_seconds`` (site id -> seconds: setup +
        share keys + masking, and the unmask stage), ``coordinator_aggregate_seconds``
        (the coordinator's own compute over all stages), ``coordinator_stage_seconds``,
        ``stage_seconds`` (wall, per stage), ``bytes_sent_per_site`` and
        ``bytes_received_per_site`` (site id -> bytes), ``max_abs_error`` versus the exact
        mean and the ``error_bound`` it must stay under, plus the settings used.
    """
    spec = spec if spec is not None else SecAggSpec(max_weight=float(num_examples))
    site_ids = [f"site-{i:03d}" for i in range(num_sites)]
    nodes = [node_id_for(s) for s in site_ids]
    site_of = dict(zip(nodes, site_ids, strict=True))
    result: list[SecAggOutcome] = []
    server = ServerApp()

    @server.main()
    def main(grid: Grid, context: Context) -> None:
        zeros = np.zeros(length, dtype=np.float32)
        result.append(run_secagg_round(grid, nodes, {}, [zeros], spec, 1, timeout))

    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    try:
        run_inprocess(
            server,
            _bench_client_app(seed, length, num_examples),
            run_config={},
            node_configs={s: {"bench-index": i} for i, s in enumerate(site_ids)},
        )
    finally:  # run_inprocess sets Flower's process-wide task identity; put it back
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved
    outcome = result[0]
    exact = np.mean([site_vector(seed, i, length).astype(np.float64) for i in range(num_sites)], 0)
    error = float(np.max(np.abs(outcome.arrays[0].astype(np.float64) - exact)))
    site_seconds = {site_of[n]: s for n, s in outcome.site_seconds.items()}
    return {
        "num_sites": num_sites,
        "length": length,
        "seed": seed,
        "num_shares": outcome.num_shares,
        "reconstruction_threshold": outcome.threshold,
        "spec": spec.model_dump(mode="json"),
        "site_mask_seconds": {
            s: sum(sec.get(st, 0.0) for st in MASK_STAGES) for s, sec in site_seconds.items()
        },
        "site_unmask_seconds": {s: sec.get(Stage.UNMASK, 0.0) for s, sec in site_seconds.items()},
        "coordinator_aggregate_seconds": sum(outcome.coordinator_seconds.values()),
        "coordinator_stage_seconds": outcome.coordinator_seconds,
        "stage_seconds": outcome.stage_seconds,
        "bytes_sent_per_site": {site_of[n]: b for n, b in outcome.bytes_up_by_node.items()},
        "bytes_received_per_site": {site_of[n]: b for n, b in outcome.bytes_down_by_node.items()},
        "max_abs_error": error,
        "error_bound": outcome.error_bound,
        "contributors": len(outcome.contributors),
    }
