"""Simulate a whole consortium on one machine: federation, baselines, summary (composition root)."""

from __future__ import annotations

import json
import logging
import shutil
import sqlite3
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from coordinator.state import ROUND_FIELDS, StateError
from fedcore.config import Scenario, SiteConfig, dump_site_config
from fedcore.records import RoundRecord
from fedcore.storage import exclusive_lock

if TYPE_CHECKING:
    from fedcore.baselines import BaselineProgress
    from fedcore.engines.inprocess import ReplyHook

BaselineCallback = Callable[["BaselineProgress"], None]

LOCK_FILE = ".lock"
"""Lock file in the run directory, held by the run writing there (holds its PID)."""

RUN_FILE = "run.json"
"""Written first into a run directory: the scenario (name and fingerprint) whose run it holds."""

STATE_DB = Path("state") / "state.db"
"""The coordinator's round store in a run directory (see :mod:`coordinator.state`)."""

_RUN_OUTPUTS = (
    "rounds.jsonl",
    "rounds.csv",
    "federation.json",
    "summary.json",
    "model.safetensors",
    "report.html",
    "curves.json",
)
"""What a run writes into OUT besides its state: removed by ``--force`` to start afresh."""

log = logging.getLogger(__name__)

RoundCallback = Callable[[RoundRecord], None]
"""Called with each finished round's record (rows of ``rounds.jsonl`` have the same shape)."""


class RunFailed(RuntimeError):
    """The federation did not complete; the message says why and where earlier rounds are."""


class OutDirTaken(StateError):
    """The run directory holds a run of another scenario: refused before anything is written."""


@dataclass(frozen=True)
class RunPlan:
    """Everything a run needs, resolved from the command line.

    ``fresh`` (``--force``) drops the stored rounds and round logs of an earlier run of the
    same scenario in ``out``, so the run starts from round 0.
    """

    scenario_path: Path
    scenario: Scenario
    out: Path
    engine: str
    rounds: int
    fresh: bool = False


@dataclass(frozen=True)
class PriorRun:
    """What a run directory holds of an earlier run of the same scenario.

    Attributes:
        rounds_done: The newest round in its state store (0: none stored).
        state: The state store file.
        complete: ``summary.json`` says the run completed at least the plan's rounds, and the
            state store holds no later round: there is nothing to do.
    """

    rounds_done: int
    state: Path
    complete: bool


def _read_json(path: Path) -> dict[str, Any] | None:
    """A JSON object from ``path``, or ``None`` when missing or unreadable (never raises)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _peek_state(db: Path) -> tuple[str | None, int]:
    """The fingerprint and newest round in a state database, opened read-only (never written)."""
    if not db.is_file():
        return None, 0
    try:
        conn = sqlite3.connect(f"{db.resolve().as_uri()}?mode=ro", uri=True)
    except sqlite3.Error:
        return None, 0
    try:
        row = conn.execute("SELECT value FROM meta WHERE key = 'fingerprint'").fetchone()
        newest = conn.execute(
            "SELECT round, fingerprint FROM rounds ORDER BY round DESC LIMIT 1"
        ).fetchone()
    except sqlite3.Error:  # no schema yet, or damaged: the store's own checks tell at run time
        return None, 0
    finally:
        conn.close()
    fingerprint = row[0] if row else (newest[1] if newest else None)
    return (str(fingerprint) if fingerprint else None), (int(newest[0]) if newest else 0)


def _taken(plan: RunPlan, name: Any, fingerprint: Any, where: Path) -> OutDirTaken:
    sc = plan.scenario
    other = f"scenario {name!r}" if name else "a scenario"
    return OutDirTaken(
        f"{plan.out} holds a run of a different scenario: expected a new directory or a run "
        f"of {sc.name!r} (fingerprint {sc.fingerprint()}), found a run of {other}"
        f"{f' (fingerprint {fingerprint})' if fingerprint else ''} in {where}. "
        f"Fix: use another --out, or move {plan.out} away"
    )


def inspect_out(plan: RunPlan) -> PriorRun | None:
    """What ``plan.out`` holds of an earlier run, read without writing anything there.

    Returns:
        The earlier run of the same scenario, or ``None`` when ``plan.out`` holds no run.

    Raises:
        OutDirTaken: ``plan.out`` holds a run of another scenario (its state store,
            ``run.json``, ``federation.json`` or ``summary.json`` names another fingerprint, or
            its site configs are for other sites).
    """
    out, fp = plan.out, plan.scenario.fingerprint()
    docs = {n: _read_json(out / n) for n in (RUN_FILE, "federation.json", "summary.json")}
    names = set()
    for name, doc in docs.items():
        if doc is None:
            continue
        found = doc.get("fingerprint")
        if (found and found != fp) or (not found and doc.get("scenario") != plan.scenario.name):
            raise _taken(plan, doc.get("scenario"), found, out / name)
        names.add(name)
    state_fp, rounds_done = _peek_state(out / STATE_DB)
    if state_fp is not None and state_fp != fp:
        raise _taken(plan, None, state_fp, out / STATE_DB)
    sites = out / "sites"
    if sites.is_dir():
        site_files = {p.stem for p in sites.glob("*.yaml")}
        ours = {s.id for s in plan.scenario.sites}
        if site_files and site_files != ours:
            raise _taken(plan, None, None, sites)
    if not names and state_fp is None and not sites.is_dir():
        return None
    summary = docs["summary.json"]
    complete = False
    if summary is not None and (docs["federation.json"] or {}).get("status", "completed") == (
        "completed"
    ):
        done = [int(r.get("round") or 0) for r in summary.get("rounds") or []]
        last = max(done, default=0)
        complete = last >= plan.rounds and (state_fp is None or rounds_done <= last)
    return PriorRun(rounds_done, out / STATE_DB, complete)


def clear_run(out: Path) -> None:
    """Remove an earlier run's stored rounds and round logs from ``out`` (``--force``).

    Site configs, kits and the sites' own state directories stay: the next run writes the
    site configs again, reuses the kits, and keeps its global models under a new run key.
    """
    shutil.rmtree(out / "state", ignore_errors=True)
    for name in _RUN_OUTPUTS:
        (out / name).unlink(missing_ok=True)


def record_stop(plan: RunPlan, status: str, error: str) -> dict[str, Any]:
    """Write ``federation.json`` for a run that stopped early, with the rounds it had stored.

    The coordinator writes it itself when the federation fails; an interrupted run (Ctrl-C)
    or a failure before the coordinator started leaves none, so the runner does.
    """
    from coordinator.state import StateStore, atomic_write_json

    fp = plan.scenario.fingerprint()
    history: list[dict[str, Any]] = []
    try:
        cp = StateStore(plan.out).checkpoint(fp)
    except Exception as exc:  # the record must be written whatever the state holds
        log.warning("could not read the stored rounds in %s: %s", plan.out, exc)
        cp = None
    if cp is not None:
        history = list(cp.history)
    result = {
        "status": status,
        "error": error,
        "scenario": plan.scenario.name,
        "fingerprint": fp,
        "rounds_done": cp.round if cp is not None else 0,
        "rounds_planned": plan.rounds,
        "rounds": history,
        "model": None,
    }
    atomic_write_json(plan.out / "federation.json", result)
    return result


def default_out_dir(scenario: Scenario) -> Path:
    """``runs/NAME-YYYYmmdd-HHMMSS`` under the working directory."""
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{scenario.name}-{stamp}"


def write_site_configs(scenario: Scenario, out: Path) -> dict[str, Path]:
    """Write one site YAML per site under ``OUT/sites`` (what each simulated fed-client reads)."""
    paths: dict[str, Path] = {}
    for site in scenario.sites:
        state = (out / "sites" / site.id).resolve()
        cfg = SiteConfig.from_scenario(scenario, site.id, state_dir=state)
        path = (out / "sites" / f"{site.id}.yaml").resolve()
        dump_site_config(cfg, path)
        paths[site.id] = path
    return paths


@dataclass(frozen=True)
class RunKits:
    """Throwaway kits of a simulated consortium (``OUT/kits``)."""

    root: Path
    coordinator: Path
    sites: dict[str, Path]


def provision_run_kits(scenario: Scenario, out: Path) -> RunKits:
    """Provision kits for a simulation under ``OUT/kits``, or reuse the ones a resumed run made.

    Reuse matters: the encrypted aggregates of earlier rounds are under the old CKKS key.
    """
    from secure import kitfiles
    from secure.kit import KitError, check_kit
    from secure.provision import ConsortiumSpec, provision

    root = (out / "kits").resolve()
    site_ids = [s.id for s in scenario.sites]
    kits = RunKits(root, root / kitfiles.COORDINATOR_DIR, {sid: root / sid for sid in site_ids})
    if root.exists():
        try:
            ok = all(check_kit(p).ok for p in (kits.coordinator, *kits.sites.values()))
        except (KitError, OSError, ValueError) as exc:
            ok = False
            log.warning("kits in %s unusable (%s); provisioning new ones", root, exc)
        if ok:
            log.info("reusing the kits in %s", root)
            return kits
    spec = ConsortiumSpec(name=scenario.name[:48], sites=site_ids, ckks=scenario.privacy.ckks)
    provision(spec, root, force=True)
    return kits


def run_federation(
    plan: RunPlan,
    site_paths: Mapping[str, Path],
    on_round: RoundCallback | None,
    kits: RunKits | None = None,
    reply_hook: ReplyHook | None = None,
) -> dict[str, Any]:
    """Run the federation on the plan's engine; returns the coordinator's ``federation.json``.

    ``reply_hook`` (inprocess engine only) sees the sites' replies before they leave them.
    """
    run_config: dict[str, Any] = {
        "scenario": str(plan.scenario_path.resolve()),
        "out-dir": str(plan.out.resolve()),
        "rounds": plan.rounds,
        "wait-sites": 120.0,
        "kit": str(kits.coordinator) if kits is not None else "",
    }
    if plan.engine == "inprocess":
        from clients.app import make_client_app
        from coordinator.app import make_server_app
        from coordinator.driver import FederationError
        from fedcore.engines.inprocess import run_inprocess

        make_grid = None
        environment_for = None
        if plan.scenario.simulator is not None:
            from scheduling.sim.grid import simulated_grid_factory

            make_grid = simulated_grid_factory(plan.scenario)
            environment_for = make_grid.environment_for
        try:
            run_inprocess(
                make_server_app(observer=on_round),
                make_client_app(environment_for=environment_for),
                make_grid=make_grid,
                reply_hook=reply_hook,
                run_config=run_config,
                node_configs={
                    sid: {
                        "site-config": str(p),
                        "kit": str(kits.sites[sid]) if kits is not None else "",
                    }
                    for sid, p in site_paths.items()
                },
            )
        except FederationError as exc:
            raise RunFailed(str(exc)) from None
        result_path = plan.out / "federation.json"
        return dict(json.loads(result_path.read_text()))
    if reply_hook is not None:
        raise ValueError(
            f"a reply hook needs the inprocess engine (it runs the sites in this process), "
            f"found engine {plan.engine!r}; run with engine inprocess"
        )
    if plan.engine == "deployment" and plan.scenario.simulator is not None:
        raise RunFailed(
            "the scenario simulates its sites (simulator section): run it on the inprocess "
            "engine, or remove the simulator section to deploy"
        )
    if plan.engine == "deployment":
        from fedcore.engines.deployment import DeploymentError, DeploymentSecurity, run_deployment

        security = (
            DeploymentSecurity(coordinator_kit=kits.coordinator, site_kits=dict(kits.sites))
            if kits is not None
            else None
        )
        try:
            result = run_deployment(
                plan.scenario_path.resolve(),
                plan.out.resolve(),
                rounds=plan.rounds,
                site_configs=site_paths,
                on_round=on_round,
                security=security,
                insecure=security is None,
            )
        except DeploymentError as exc:
            raise RunFailed(str(exc)) from None
        if result.get("status") != "completed":
            raise RunFailed(str(result.get("error") or "the federation did not complete"))
        return result
    raise ValueError(f"unknown engine {plan.engine!r}; valid: inprocess, deployment")


def final_model_path(
    plan: RunPlan, site_paths: Mapping[str, Path], run_key: str | None = None
) -> Path:
    """Where the final global model is: the coordinator's, or (``ckks``) a site's own copy.

    Under CKKS the coordinator never holds the model in clear; every site decrypts the
    same aggregates, so all copies must hold identical arrays: checked here on the arrays
    (names, dtypes, shapes, bytes), not on the files, whose header metadata a site may
    write in any order.
    """
    if plan.scenario.privacy.mode != "ckks":
        return plan.out / "model.safetensors"
    from safetensors.numpy import load_file

    from fedcore.records import arrays_digest

    if not run_key:
        result = json.loads((plan.out / "federation.json").read_text())
        run_key = str(result.get("run_key", ""))
    key = run_key
    copies = {
        sid: (plan.out / "sites" / sid / "global" / key / "model.safetensors") for sid in site_paths
    }
    present = {sid: p for sid, p in copies.items() if p.exists()}
    if not present:
        raise RunFailed("no site holds the final model (ckks mode keeps it at the sites)")
    digests = {sid: arrays_digest(load_file(str(p))).hex()[:16] for sid, p in present.items()}
    if len(set(digests.values())) != 1:
        raise RunFailed(f"sites hold different final models: {digests}")
    return next(iter(present.values()))


def evaluate_outcome(
    plan: RunPlan,
    site_paths: Mapping[str, Path],
    on_stage: Callable[[str], None] | None = None,
    on_baseline: BaselineCallback | None = None,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Evaluate the final federated model per site and train the baselines.

    Only a simulation may do this: it reads every site's data in one process.

    Returns:
        (final metrics, baselines).
    """
    from safetensors.numpy import load_file

    from fedcore import tasks
    from fedcore.baselines import evaluate_per_site, run_baselines
    from fedcore.config import load_site_config
    from fedcore.training import load_arrays

    s = plan.scenario
    if on_stage:
        on_stage("loading site data for evaluation")
    graphs = {}
    problems: dict[str, str] = {}
    for sid, p in site_paths.items():
        try:
            graphs[sid] = tasks.load_site(load_site_config(p), s.task)
        except Exception as exc:  # a site's broken data must not sink the whole report
            problems[sid] = str(exc)
            log.warning("site %s left out of the final evaluation: %s", sid, exc)
    if not graphs:
        raise RunFailed(f"no site's data could be loaded for the final evaluation: {problems}")
    model = tasks.build(s.task)
    load_arrays(model, load_file(str(final_model_path(plan, site_paths))))
    final = dict(evaluate_per_site(model, graphs, s.task))
    final["unavailable"] = problems
    wanted = [
        name
        for name, on in (
            ("local-only", s.baselines.local_only),
            ("centralized", s.baselines.centralized),
            ("non-graph", s.baselines.non_graph and not s.task.is_imaging),
        )
        if on
    ]
    if on_stage and wanted and on_baseline is None:  # else the baselines show their own progress
        on_stage(f"training baselines ({', '.join(wanted)})")
    baselines = run_baselines(
        graphs, s, epochs=plan.rounds * s.training.local_epochs, on_progress=on_baseline
    )
    return final, baselines


def build_summary(
    plan: RunPlan,
    result: Mapping[str, Any],
    final: Mapping[str, Any],
    baselines: Mapping[str, Any],
    wall: float,
    model: Path | None = None,
) -> dict[str, Any]:
    """The ``summary.json`` document."""
    pooled = dict(final.get("pooled", {}))
    return {
        "scenario": plan.scenario.name,
        "fingerprint": plan.scenario.fingerprint(),
        "status": "completed",
        "task": plan.scenario.task.model,
        "scenario_file": str(plan.scenario_path),
        "engine": plan.engine,
        "seed": plan.scenario.seed,
        "privacy": {
            "mode": plan.scenario.privacy.mode,
            **dict(result.get("privacy", {})),
            "bytes_up": sum(int(r.get("bytes_up", 0)) for r in result.get("rounds", [])),
            "bytes_down": sum(int(r.get("bytes_down", 0)) for r in result.get("rounds", [])),
        },
        "sites": [s.id for s in plan.scenario.sites],
        "rounds": [
            {k: r.get(k) for k in (*ROUND_FIELDS, "rejected")}
            | ({"schedule": r["schedule"]} if "schedule" in r else {})
            for r in result.get("rounds", [])
        ],
        "final": {
            **{
                k: pooled.get(k)
                for k in (
                    "pr_auc",
                    "roc_auc",
                    "f1",
                    "precision",
                    "recall",
                    "fpr",
                    *(("sensitivity", "specificity") if plan.scenario.task.is_imaging else ()),
                    "num_test",
                    "curve",
                )
                if k in pooled or k != "curve"
            },
            "operating_point": plan.scenario.task.operating_point,
            "mean_over_sites": final.get("mean"),
            "per_site": final.get("per_site"),
            "sites_without_data": final.get("unavailable", {}),
        },
        "baselines": dict(baselines),
        "schedule": result.get("schedule", []),
        **({"simulation": result["simulation"]} if "simulation" in result else {}),
        "exports": {
            site: {
                **{k: v for k, v in m.items() if k not in ("feature_names", "directory")},
                **(
                    {"model_path": str(Path(m["directory"]) / m["file"])}
                    if m.get("directory") and m.get("file")
                    else {}
                ),
                **(
                    {"manifest": str(Path(m["directory"]) / "manifest.json")}
                    if m.get("directory")
                    else {}
                ),
            }
            for site, m in dict(result.get("exports") or {}).items()
        },
        "model": str((model or plan.out / "model.safetensors").resolve()),
        "model_holder": "sites" if plan.scenario.privacy.mode == "ckks" else "coordinator",
        "rounds_csv": str((plan.out / "rounds.csv").resolve()),
        "wall_seconds": round(wall, 2),
        "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def run_scenario(
    plan: RunPlan,
    *,
    on_round: RoundCallback | None = None,
    on_stage: Callable[[str], None] | None = None,
    on_baseline: BaselineCallback | None = None,
    reply_hook: ReplyHook | None = None,
) -> dict[str, Any]:
    """Run a scenario end to end and write ``OUT/summary.json``; returns the summary.

    ``on_baseline`` hears each baseline's progress (per site, with the seconds each took).
    ``reply_hook`` (inprocess engine) sees the sites' replies before they leave them and may
    replace them: what hostile sites would send (``benchmarks/robustness.py``).

    The run holds an exclusive lock on ``OUT/.lock`` from start to end, so a second run into
    the same directory is refused at once instead of writing beside the first.

    ``plan.out`` is checked before anything is written there: a run of another scenario is
    refused (:func:`inspect_out`), and checked again once the lock is held.

    Raises:
        RunFailed: the federation stopped (earlier rounds stay saved in ``plan.out``, and
            ``federation.json`` says so).
        OutDirTaken: ``plan.out`` holds another scenario's run (nothing was written).
        LockHeld: another run holds ``plan.out`` (nothing was written).
        KeyboardInterrupt: interrupted; ``federation.json`` records status ``interrupted``.
    """
    if plan.out.exists():
        inspect_out(plan)
    plan.out.mkdir(parents=True, exist_ok=True)
    with exclusive_lock(plan.out / LOCK_FILE):
        inspect_out(plan)
        if plan.fresh:
            clear_run(plan.out)
        return _run_locked(plan, on_round, on_stage, on_baseline, reply_hook)


def _run_locked(
    plan: RunPlan,
    on_round: RoundCallback | None,
    on_stage: Callable[[str], None] | None,
    on_baseline: BaselineCallback | None = None,
    reply_hook: ReplyHook | None = None,
) -> dict[str, Any]:
    from coordinator.state import atomic_write_json

    t0 = time.perf_counter()
    sc = plan.scenario
    atomic_write_json(
        plan.out / RUN_FILE,
        {
            "scenario": sc.name,
            "fingerprint": sc.fingerprint(),
            "scenario_file": str(plan.scenario_path),
        },
    )
    try:
        site_paths = write_site_configs(sc, plan.out)
        if on_stage:
            on_stage("provisioning throwaway kits (CA, certificates, node keys, CKKS keys)")
        kits = provision_run_kits(sc, plan.out)
        if on_stage:
            on_stage(f"federated training on the {plan.engine} engine")
        result = run_federation(plan, site_paths, on_round, kits, reply_hook)
    except KeyboardInterrupt:
        record_stop(plan, "interrupted", "interrupted (Ctrl-C / SIGINT)")
        raise
    except RunFailed as exc:
        if (_read_json(plan.out / "federation.json") or {}).get("status") != "failed":
            record_stop(plan, "failed", str(exc))
        raise
    final, baselines = evaluate_outcome(plan, site_paths, on_stage, on_baseline)
    summary = build_summary(
        plan,
        result,
        final,
        baselines,
        time.perf_counter() - t0,
        final_model_path(plan, site_paths),
    )
    atomic_write_json(plan.out / "summary.json", summary)
    return summary
