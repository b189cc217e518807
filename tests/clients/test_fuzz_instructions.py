"""A hostile or broken coordinator cannot crash or corrupt a site: property-based fuzzing.

Malformed train, evaluate, export and telemetry instructions, SecAgg+ fits and SecAgg+
stage messages are thrown at the real site ClientApp (:func:`clients.app.make_client_app`) of a real site (its YAML,
a small generated bank, its state directory in a temporary folder), in plaintext and in
CKKS with a provisioned kit. Each instruction is a valid one with one to three mutations
(wrong types, absurd numbers, hostile run keys, scenario sections that do not validate,
arrays of other names, shapes or dtypes, NaN, forged ``.npy`` headers, damaged packed
models, CKKS aggregates with wrong lengths, counts, weights, chunks, rounds out of order or
from the future), sent through Flower's wire serialisation
(:func:`fedcore.engines.inprocess.wire_copy`) when its values can travel, else as built.

Counted and asserted per suite: no exception other than the site's clear refusal
(``ValueError``, or an export reply that names its error); every instruction built
malformed is refused; the state directory (cached graph, data size, CKKS model copy,
exports) is byte-identical after every refusal; an accepted instruction gets a reply the
coordinator's decoders read; and a valid instruction still works after the fuzzing.

Size: 3,200 instructions in all, split over the suites below (about 30 seconds on two
cores, under two minutes on a loaded machine), times ``FEDCORE_FUZZ_SCALE`` (shared by
every fuzz suite). For a longer local run::

    FEDCORE_FUZZ_SCALE=15 python -m pytest -q tests/clients/test_fuzz_instructions.py

(the counts each suite prints appear in the run's "fuzz counts" section.)
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, RecordDict
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import BaseModel

from clients.app import make_client_app
from clients.model_store import GlobalModelStore
from coordinator.app import initial_arrays
from fedcore import carry
from fedcore import records as R
from fedcore.config import (
    GeneratedData,
    Scenario,
    SiteConfig,
    SitePrivacy,
    SiteSpec,
    dump_site_config,
)
from fedcore.engines.inprocess import node_id_for, wire_copy
from fedcore.packing import PACKED_KEY
from fedcore.site_paths import STATE_DIR_KEY

TOTAL = round(3200 * float(os.environ.get("FEDCORE_FUZZ_SCALE", "") or 1))
"""Instructions this module throws in all (3,200 times ``FEDCORE_FUZZ_SCALE``)."""

SHARES = {
    R.TRAIN: 0.2,
    R.EVALUATE: 0.14,
    R.EXPORT: 0.08,
    "telemetry": 0.12,
    "fit": 0.08,
    "stage": 0.06,
}
CKKS_SHARES = {R.TRAIN: 0.14, R.EVALUATE: 0.18}
"""Share of :data:`TOTAL` per suite (plaintext site, then CKKS site)."""

SITE = "bank-a"
CONFIG_KEYS_REQUIRED = ("round", "seed", "task")
SPEC_KEYS = ("task", "training", "privacy", "export")

pytestmark = [pytest.mark.fuzz, pytest.mark.usefixtures("module_task_identity")]


def examples(share: float) -> int:
    return max(20, round(TOTAL * share))


# --------------------------------------------------------------------------- the site


@dataclass
class Site:
    """One real site: its ClientApp, Flower context, state directory and a clean snapshot."""

    scenario: Scenario
    app: Any
    context: Context
    state: Path
    snapshot: Path
    base: dict[str, np.ndarray]
    run_key: str
    aggregate: R.CkksRound | None = None
    """CKKS: a valid encrypted aggregate of round 1 (the site holds round 0)."""

    def config(self, round_: int, **kw: Any) -> R.RoundConfig:
        return R.RoundConfig(
            round_,
            self.scenario.seed,
            self.scenario.task,
            self.scenario.training,
            self.scenario.privacy,
            run_key=self.run_key,
            max_sites=1,
            export=self.scenario.export,
            **kw,
        )

    def send(self, content: RecordDict, mtype: str) -> Message:
        msg = Message(content, node_id_for(SITE), mtype, group_id="1")
        return self.app(wire_copy(msg), self.context)  # type: ignore[no-any-return]

    def restore(self) -> None:
        """Put the state directory back as the snapshot holds it."""
        shutil.rmtree(self.state)
        shutil.copytree(self.snapshot, self.state)


def state_digest(folder: Path) -> dict[str, str]:
    """Every file (SHA-256) and folder under ``folder``, by relative path."""
    out: dict[str, str] = {}
    for path in sorted(folder.rglob("*")):
        rel = str(path.relative_to(folder))
        out[rel] = hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else "dir"
    return out


def make_site(base_dir: Path, privacy: str) -> Site:
    scenario = Scenario.model_validate(
        {
            "name": "fuzz",
            "seed": 5,
            "rounds": 3,
            "sites": [
                SiteSpec(id=SITE, data=GeneratedData(transactions=300, fraud_rate=0.05, days=10))
            ],
            "task": {"hidden": 8, "layers": 1},
            "training": {"local_epochs": 1},
            "privacy": json.loads(privacy),
            "export": {"tolerance": 1.0},
            "scheduler": {"min_sites": 1},
        }
    )
    site_file = base_dir / f"{SITE}.yaml"
    site = SiteConfig.from_scenario(scenario, SITE)
    if scenario.privacy.mode == "plaintext":  # the SecAgg+ suites run at the plaintext site
        site = site.model_copy(update={"privacy": SitePrivacy(modes=["plaintext", "secagg+"])})
    dump_site_config(site, site_file)
    kit = ""
    if scenario.privacy.mode == "ckks":
        from fedcore.cli.runner import provision_run_kits

        kit = str(provision_run_kits(scenario, base_dir / "out").sites[SITE])
    state = base_dir / "state"
    context = Context(
        run_id=1,
        node_id=node_id_for(SITE),
        node_config={"site-config": str(site_file), STATE_DIR_KEY: str(state), "kit": kit},
        state=RecordDict(),
        run_config={},
    )
    return Site(
        scenario=scenario,
        app=make_client_app(),
        context=context,
        state=state,
        snapshot=base_dir / "snapshot",
        base=initial_arrays(scenario),
        run_key=f"{scenario.fingerprint()}-0badc0de",
    )


def take_snapshot(site: Site) -> None:
    if site.snapshot.exists():
        shutil.rmtree(site.snapshot)
    shutil.copytree(site.state, site.snapshot)


@pytest.fixture(scope="module")
def plain_site(tmp_path_factory: pytest.TempPathFactory, module_task_identity: None) -> Site:
    """A plaintext site that trained, evaluated and exported once (cache, data size, export)."""
    site = make_site(tmp_path_factory.mktemp("plain"), '{"mode": "plaintext"}')
    cfg = site.config(1)
    trained = R.TrainReply.from_content(
        site.send(R.train_instruction(site.base, cfg), R.TRAIN).content
    )
    assert trained.num_examples > 0
    export = site.send(R.train_instruction(trained.arrays, cfg), R.EXPORT)
    _, manifest, error = R.read_export_reply(export.content)
    assert not error and manifest, error
    take_snapshot(site)
    return site


@pytest.fixture(scope="module")
def ckks_site(tmp_path_factory: pytest.TempPathFactory, module_task_identity: None) -> Site:
    """A CKKS site holding round 0, and a valid aggregate of round 1 made from its own update."""
    site = make_site(
        tmp_path_factory.mktemp("ckks"),
        '{"mode": "ckks", "ckks": {"poly_modulus_degree": 4096, "clip": 0.05}}',
    )
    cfg = site.config(1)
    content = R.ckks_instruction(cfg, R.CkksAggregates(0), site.base)
    reply = R.TrainReply.from_content(site.send(content, R.TRAIN).content)
    assert reply.encrypted is not None
    site.aggregate = R.CkksRound(1, reply.encrypted, 1.0, 1)
    assert GlobalModelStore.for_run(site.state, site.run_key).round() == 0
    take_snapshot(site)
    return site


# --------------------------------------------------------------------------- outcomes


@dataclass
class Tally:
    """What the site did with the instructions of one suite."""

    counts: Counter[str] = field(default_factory=Counter)
    crashes: list[str] = field(default_factory=list)
    damaged: list[str] = field(default_factory=list)
    let_through: list[str] = field(default_factory=list)
    reasons: Counter[str] = field(default_factory=Counter)

    def report(self, name: str) -> str:
        return (
            f"{name}: {self.counts['total']} instructions ({self.counts['wire']} through the "
            f"wire), {self.counts['refused']} refused, {self.counts['accepted']} accepted; "
            f"{len(self.crashes)} crashes, {len(self.damaged)} state changes after a refusal, "
            f"{len(self.let_through)} malformed let through"
        )


@dataclass(frozen=True)
class Case:
    """One instruction: its message type, its content, and whether it was built malformed."""

    mtype: str
    content: RecordDict
    malformed: bool
    ops: tuple[str, ...]


def deliver(site: Site, case: Case, tally: Tally) -> None:
    """Send ``case`` to ``site`` and judge what happened (see the module docstring)."""
    before = state_digest(site.state)
    msg = Message(case.content, node_id_for(SITE), case.mtype, group_id="1")
    try:
        msg = wire_copy(msg)
        tally.counts["wire"] += 1
    except Exception:  # noqa: BLE001 - a value Flower cannot serialise: delivered as built
        pass
    tally.counts["total"] += 1
    refused = ""
    try:
        reply = site.app(msg, site.context)
    except ValueError as exc:
        refused = str(exc) or type(exc).__name__
    except Exception as exc:  # noqa: BLE001 - what the fuzzing looks for
        tally.crashes.append(f"{type(exc).__name__}: {exc} <- {case.ops}")
        site.restore()
        return
    else:
        refused = judge_reply(case.mtype, reply)
    if refused:
        tally.counts["refused"] += 1
        tally.reasons[refused.split(":")[0][:50]] += 1
        after = state_digest(site.state)
        if after != before:
            changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
            tally.damaged.append(f"{changed[:4]} <- {case.ops}: {refused[:200]}")
            site.restore()
        return
    tally.counts["accepted"] += 1
    if case.malformed:
        tally.let_through.append(str(case.ops))
    if state_digest(site.state) != before:
        check_store(site)
        site.restore()  # the next instruction meets the site as the snapshot holds it


def judge_reply(mtype: str, reply: Message) -> str:
    """``""`` for a reply the coordinator reads, else the error the reply names."""
    if reply.has_error():
        return reply.error.reason or "error reply"
    content = reply.content
    if mtype == R.EXPORT:
        _, manifest, error = R.read_export_reply(content)
        return error or ("" if manifest else "export reply without a manifest")
    if mtype == R.TRAIN:
        if "fitres.parameters" in content.array_records:  # a SecAgg+ fit's legacy reply
            return ""
        R.TrainReply.from_content(content)
    elif mtype == R.EVALUATE:
        R.EvalReply.from_content(content)
    else:
        R.Telemetry.from_content(content)
    return ""


def check_store(site: Site) -> None:
    """After an accepted instruction, a CKKS site's model copy still loads, finite."""
    for run in (site.state / "global").glob("*"):
        held = GlobalModelStore(run).load()
        assert held is not None, f"the model copy in {run} no longer loads"
        assert all(np.all(np.isfinite(a)) for a in held[1].values())


def run_suite(site: Site, cases: st.SearchStrategy[Case], n: int, name: str) -> Tally:
    tally = Tally()

    @settings(
        max_examples=n,
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    @given(case=cases)
    def fuzz(case: Case) -> None:
        deliver(site, case, tally)

    fuzz()
    print(tally.report(name), dict(tally.reasons.most_common(8)))
    assert not tally.crashes, tally.crashes[:5]
    assert not tally.damaged, tally.damaged[:5]
    assert not tally.let_through, tally.let_through[:5]
    assert tally.counts["total"] >= n * 0.9  # hypothesis ran (nearly) all it was asked
    assert tally.counts["refused"] >= n * 0.5, tally.counts
    return tally


# --------------------------------------------------------------------------- mutations

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
WRONG_TYPES = st.one_of(
    st.text(max_size=12),
    st.binary(max_size=12),
    st.booleans(),
    st.lists(st.integers(min_value=-5, max_value=5), min_size=1, max_size=3),
    st.lists(st.text(max_size=4), max_size=3),
)
WRONG_LIST_TYPES = st.one_of(
    st.integers(min_value=-5, max_value=5),
    st.floats(),
    st.text(max_size=12),
    st.binary(max_size=12),
    st.booleans(),
    st.lists(st.text(max_size=4), min_size=1, max_size=3),
)
"""Values of another type than a list of numbers or of bytes."""
BAD_FLOATS = st.sampled_from([float("nan"), float("inf"), float("-inf"), 1e308, -1e308])

NUMERIC_FIELDS: dict[str, tuple[float, float, bool]] = {
    # field: (lowest valid, highest valid, integer)
    "round": (0, R.MAX_ROUND, True),
    "seed": (-(2**63), 2**63 - 1, True),
    "weight": (0, R.MAX_WEIGHT, False),
    "max_sites": (0, R.MAX_SITES, True),
    "device": (-1, R.MAX_DEVICE, True),
    "epochs": (0, R.MAX_EPOCHS, True),
    "deadline_s": (0, R.MAX_DEADLINE_S, False),
    "headroom": (0, 1, False),
}


def bad_number(lo: float, hi: float, integer: bool) -> st.SearchStrategy[Any]:
    """Values a field in [lo, hi] must refuse: outside it, non-finite, or of another type."""
    outside = st.one_of(
        st.integers(max_value=int(lo) - 1) if lo > -(2**63) else st.nothing(),
        st.integers(min_value=int(hi) + 1),
        BAD_FLOATS,
    )
    if integer:
        outside = st.one_of(outside, st.floats(allow_nan=False, min_value=-10, max_value=10))
    else:
        outside = st.one_of(
            outside,
            st.floats(max_value=lo, exclude_max=True, allow_nan=False, allow_infinity=False),
            st.floats(min_value=hi, exclude_min=True, allow_nan=False, allow_infinity=False),
        )
    return st.one_of(outside, WRONG_TYPES)


BAD_RUN_KEYS = st.one_of(
    st.sampled_from(["..", ".", "../escape", "a/b", "/etc", "a\\b", " key", "k\x00", "ключ"]),
    st.text(min_size=129, max_size=140, alphabet="abc"),
    st.text(min_size=1, max_size=10, alphabet='/\\:*?"<>| ').map(lambda t: "k" + t),
)

BAD_SPEC_VALUES = ["1e999", "-1e999", "-1e308", '"abc"', "[[[]]]", '{"x": 1}']
"""JSON values that no field of a scenario section accepts (1e999 parses as infinity)."""


def spec_fields(key: str) -> list[str]:
    from fedcore.config import ExportSpec, PrivacySpec, TaskSpec, TrainingSpec

    models: dict[str, type[BaseModel]] = {
        "task": TaskSpec,
        "training": TrainingSpec,
        "privacy": PrivacySpec,
        "export": ExportSpec,
    }
    return sorted(models[key].model_fields)


@st.composite
def bad_spec(draw: st.DrawFn, key: str, valid: str) -> str:
    """JSON text of a section that does not validate (or holds a non-finite number)."""
    kind = draw(st.sampled_from(["field", "extra", "text", "deep", "long", "type"]))
    if kind == "field":
        data = json.loads(valid)
        name = draw(st.sampled_from(spec_fields(key)))
        value = draw(st.sampled_from(BAD_SPEC_VALUES))
        data.pop(name, None)
        return json.dumps(data)[:-1] + (", " if data else "") + f'"{name}": {value}}}'
    if kind == "extra":
        return valid[:-1] + ', "no_such_field": 1}'
    if kind == "text":
        return draw(st.text(max_size=20).filter(lambda t: not t.strip().startswith("{")))
    if kind == "deep":
        depth = draw(st.integers(min_value=50, max_value=3000))
        return '{"imaging": ' * depth + "{}" + "}" * depth
    if kind == "long":
        return valid[:-1] + ', "features": ["' + "x" * R.MAX_SPEC_CHARS + '"]}'
    return draw(st.sampled_from(["[]", "1", '"task"', "null", "true"]))


@st.composite
def config_op(
    draw: st.DrawFn, valid: dict[str, Any]
) -> tuple[str, Callable[[dict[str, Any]], None]]:
    """One malformed change to a round config (name, apply); ``valid`` is the unchanged one."""
    kind = draw(st.sampled_from(["drop", "number", "run_key", "spec"]))
    if kind == "drop":
        key = draw(st.sampled_from(CONFIG_KEYS_REQUIRED))
        return f"drop {key}", lambda c: c.pop(key, None)
    if kind == "number":
        key = draw(st.sampled_from(sorted(NUMERIC_FIELDS)))
        value = draw(bad_number(*NUMERIC_FIELDS[key]))
        return f"{key}={value!r:.40}", lambda c: c.__setitem__(key, value)
    if kind == "run_key":
        value = draw(BAD_RUN_KEYS)
        return f"run_key={value!r:.40}", lambda c: c.__setitem__("run_key", value)
    key = draw(st.sampled_from(SPEC_KEYS))
    text = draw(bad_spec(key, str(valid[key])))
    return f"{key}={text!r:.60}", lambda c: c.__setitem__(key, text)


def npy(
    shape: tuple[int, ...], descr: str, body: bytes, version: tuple[int, int] = (1, 0)
) -> bytes:
    """``.npy`` bytes whose header says what the caller wants, whatever the body holds."""
    header = {"descr": descr, "fortran_order": False, "shape": shape}
    buf = io.BytesIO()
    writer = (
        np.lib.format.write_array_header_1_0
        if version == (1, 0)
        else np.lib.format.write_array_header_2_0
    )
    writer(buf, header)
    return buf.getvalue() + body


@st.composite
def arrays_op(draw: st.DrawFn, names: list[str]) -> tuple[str, Callable[[RecordDict], None]]:
    """One malformed change to the model an instruction carries (name, apply)."""
    kind = draw(
        st.sampled_from(
            [
                "shape",
                "dtype",
                "nan",
                "missing",
                "extra",
                "forged",
                "truncate-pack",
                "flip-header",
                "other-task",
                "not-packed",
                "drop",
            ]
        )
    )
    name = draw(st.sampled_from(names))

    def model_change(
        change: Callable[[dict[str, np.ndarray]], None],
    ) -> Callable[[RecordDict], None]:
        def apply(content: RecordDict) -> None:
            arrays = R.record_to_arrays(content.array_records[R.ARRAYS])
            change(arrays)
            content[R.ARRAYS] = R.arrays_to_record(arrays)

        return apply

    if kind == "shape":
        extra = draw(st.integers(min_value=1, max_value=3))

        def reshape(a: dict[str, np.ndarray]) -> None:
            a[name] = np.zeros((a[name].size + extra,), a[name].dtype)

        return f"shape {name}", model_change(reshape)
    if kind == "dtype":
        dtype = draw(st.sampled_from([np.float64, np.float16, np.int32, np.int8, np.bool_]))
        return f"dtype {name} {dtype.__name__}", model_change(
            lambda a: a.__setitem__(name, a[name].astype(dtype))
        )
    if kind == "nan":
        value = draw(st.sampled_from([np.nan, np.inf, -np.inf]))

        def poison(a: dict[str, np.ndarray]) -> None:
            v = a[name].copy()
            v.flat[draw_index % max(1, v.size)] = value
            a[name] = v

        draw_index = draw(st.integers(min_value=0, max_value=10_000))
        return f"{value} in {name}", model_change(poison)
    if kind == "missing":
        return f"missing {name}", model_change(lambda a: a.__delitem__(name))
    if kind == "extra":
        return "extra array", model_change(
            lambda a: a.__setitem__("x.extra", np.zeros(2, np.float32))
        )
    if kind == "forged":
        forged = draw(
            st.sampled_from(
                [
                    npy((2**40,), "<f4", b"\0" * 16),
                    npy((2**62, 4), "<f8", b""),
                    npy((3,), "<f4", b"\0" * 5),
                    npy((2,), "|O", b"\x80\x04N."),
                    npy((2,), "<U8", b"\0" * 64),
                    npy((2,), "<f4", b"\0" * 8, version=(2, 0)),
                    b"\x93NUMPY\x09\x00" + b"\0" * 20,
                    b"not npy at all",
                    b"",
                ]
            )
        )
        stype = draw(st.sampled_from(["numpy.ndarray", "torch.Tensor", ""]))

        def put(content: RecordDict) -> None:
            arrays = R.record_to_arrays(content.array_records[R.ARRAYS])
            record = ArrayRecord({k: Array(v) for k, v in arrays.items()})
            record[name] = Array(dtype="float32", shape=(2,), stype=stype, data=forged)
            content[R.ARRAYS] = record

        return f"forged {forged[:24]!r} stype {stype}", put
    if kind == "truncate-pack":
        keep = draw(st.integers(min_value=0, max_value=400))

        def truncate(content: RecordDict) -> None:
            blob = content.array_records[R.ARRAYS][PACKED_KEY].numpy().tobytes()
            content[R.ARRAYS] = ArrayRecord(
                {PACKED_KEY: Array(np.frombuffer(blob[:keep], np.uint8))}
            )

        return f"packed model cut to {keep} bytes", truncate
    if kind == "flip-header":
        pos = draw(st.integers(min_value=0, max_value=200))
        byte = draw(st.integers(min_value=0, max_value=255))

        def flip(content: RecordDict) -> None:
            blob = bytearray(content.array_records[R.ARRAYS][PACKED_KEY].numpy().tobytes())
            size = int.from_bytes(blob[:8], "little")
            at = pos % (8 + size)
            blob[at] = byte if blob[at] != byte else (byte + 1) % 256
            content[R.ARRAYS] = ArrayRecord(
                {PACKED_KEY: Array(np.frombuffer(bytes(blob), np.uint8))}
            )

        return f"header byte {pos} -> {byte}", flip
    if kind == "other-task":
        from fedcore import tasks
        from fedcore.config import TaskSpec
        from fedcore.training import model_to_arrays

        hidden = draw(st.sampled_from([4, 16]))
        other = model_to_arrays(tasks.build(TaskSpec(hidden=hidden, layers=1)))
        return f"model of hidden={hidden}", lambda c: c.__setitem__(
            R.ARRAYS, R.arrays_to_record(other)
        )
    if kind == "not-packed":
        value = draw(st.sampled_from([np.nan, 1e39]))

        def unpacked(content: RecordDict) -> None:
            arrays = R.record_to_arrays(content.array_records[R.ARRAYS])
            with np.errstate(over="ignore"):  # 1e39 is infinite in float32: meant
                arrays[name] = np.full_like(arrays[name], value)
            content[R.ARRAYS] = ArrayRecord({k: Array(v) for k, v in arrays.items()})

        return f"unpacked, {name} = {value}", unpacked
    return "no arrays", lambda c: c.__delitem__(R.ARRAYS)


def rebuilt(content: RecordDict) -> RecordDict:
    """A copy of ``content`` whose records are fresh objects (the template is not touched)."""
    out = RecordDict()
    for key, rec in content.items():
        if isinstance(rec, ConfigRecord):
            out[key] = ConfigRecord(dict(rec))
        elif isinstance(rec, ArrayRecord):
            out[key] = ArrayRecord(
                {
                    k: Array(dtype=v.dtype, shape=v.shape, stype=v.stype, data=v.data)
                    for k, v in rec.items()
                }
            )
        else:
            out[key] = rec
    return out


@st.composite
def instruction_cases(
    draw: st.DrawFn,
    template: Callable[[], RecordDict],
    mtype: str,
    names: list[str],
    *,
    arrays: bool = True,
    base_optional: bool = False,
    requests: bool = False,
    extra_ops: Callable[[st.DrawFn], tuple[str, Callable[[RecordDict], None], bool]] | None = None,
) -> Case:
    """A valid instruction with one to three malformed changes."""
    content = rebuilt(template())
    config = dict(content.config_records[R.CONFIG])
    valid = dict(config)
    ops: list[str] = []
    malformed = False
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        # weights: a wrong message type is refused by Flower itself, so it comes seldom
        kinds = ["config"] * 3 + ["arrays"] * 3 * arrays + ["request"] * 2 * requests
        kinds += ["type"] + ["extra"] * 5 * (extra_ops is not None)
        kind = draw(st.sampled_from(kinds))
        if kind == "config":
            name, apply = draw(config_op(valid))
            apply(config)
            content[R.CONFIG] = ConfigRecord(config)
            malformed = True
        elif kind == "arrays" and not any(op.startswith("arrays:") for op in ops):
            name, change = draw(arrays_op(names))  # one change to the model per instruction
            change(content)
            name = f"arrays: {name}"
            malformed = malformed or name != "arrays: no arrays" or not base_optional
        elif kind == "request":
            key = draw(st.sampled_from([carry.EVALUATION_REQUEST, carry.TELEMETRY_REQUEST]))
            value = draw(
                st.one_of(
                    st.integers(max_value=-1),
                    st.integers(min_value=R.MAX_ROUND + 2),
                    WRONG_TYPES,
                    BAD_FLOATS,
                )
            )
            config[key] = value
            content[R.CONFIG] = ConfigRecord(config)
            name, malformed = f"{key}={value!r:.40}", True
        elif kind == "type":
            wrong = draw(st.sampled_from(["query", "query.other", "train.x", "evaluate.x"]))
            mtype, name, malformed = wrong, f"type {wrong}", True
        elif kind == "extra" and extra_ops is not None:
            name, change, bad = extra_ops(draw)
            change(content)
            malformed = malformed or bad
        else:
            continue
        ops.append(name)
    return Case(mtype, content, malformed, tuple(ops))


@st.composite
def telemetry_cases(draw: st.DrawFn, site: Site) -> Case:
    """A valid telemetry query with one to three malformed changes."""
    template = R.telemetry_instruction(1, site.run_key, site.scenario.task)
    config = dict(template.config_records[R.CONFIG])
    mtype, ops, with_config = R.TELEMETRY, [], True
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        kind = draw(st.sampled_from(["round", "run_key", "task", "no-config", "type"]))
        if kind == "round":
            value = draw(bad_number(0, R.MAX_ROUND, True))
            config["round"], name = value, f"round={value!r:.40}"
        elif kind == "run_key":
            value = draw(BAD_RUN_KEYS)
            config["run_key"], name = value, f"run_key={value!r:.40}"
        elif kind == "task":
            text = draw(bad_spec("task", str(template.config_records[R.CONFIG]["task"])))
            config["task"], name = text, f"task={text!r:.60}"
        elif kind == "no-config":
            with_config, name = False, "no config record"
        else:
            mtype = draw(st.sampled_from(["query", "query.other", "train", "evaluate"]))
            name = f"type {mtype}"
        ops.append(name)
    content = RecordDict({R.CONFIG: ConfigRecord(config)} if with_config else {})
    return Case(mtype, content, True, tuple(ops))


def fit_template(site: Site, names: list[str]) -> RecordDict:
    """A SecAgg+ legacy fit instruction (as the coordinator's workflow sends it)."""
    from flwr.common import FitIns, ndarrays_to_parameters
    from flwr.compat.common import recorddict_compat as compat

    from clients.protection.secagg import NAMES_KEY

    privacy = site.scenario.privacy.model_copy(update={"mode": "secagg+"})
    cfg = replace(site.config(1), privacy=privacy)
    config: dict[str, Any] = {**dict(cfg.to_record()), NAMES_KEY: json.dumps(names)}
    fitins = FitIns(ndarrays_to_parameters([site.base[n] for n in names]), config)
    return compat.fitins_to_recorddict(fitins, keep_input=True)


@st.composite
def fit_cases(draw: st.DrawFn, site: Site, names: list[str]) -> Case:
    """A valid SecAgg+ fit instruction with one to three malformed changes."""
    from clients.protection.secagg import NAMES_KEY

    content = rebuilt(fit_template(site, names))
    config = dict(content.config_records["fitins.config"])
    valid = dict(config)
    ops = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        kind = draw(st.sampled_from(["config", "names", "params", "forged"]))
        if kind == "config":
            name, apply = draw(config_op(valid))
            apply(config)
        elif kind == "names":
            value = draw(
                st.one_of(
                    st.just(json.dumps(names[:-1])),
                    st.just(json.dumps(names + ["x"])),
                    st.just(json.dumps([names[0]] * len(names))),
                    st.just(json.dumps(list(reversed(names)))),
                    st.just("not json"),
                    st.just(json.dumps({"a": 1})),
                    WRONG_TYPES,
                )
            )
            config[NAMES_KEY], name = value, f"names={value!r:.40}"
        elif kind == "params":
            record = content.array_records["fitins.parameters"]
            drop = draw(st.sampled_from(list(record.keys())))
            content["fitins.parameters"] = ArrayRecord(
                {k: v for k, v in record.items() if k != drop}
            )
            name = f"param {drop} dropped"
        else:
            body = draw(
                st.sampled_from(
                    [npy((2**40,), "<f4", b"\0" * 8), npy((4,), "<f4", b"\0" * 3), b"junk"]
                )
            )
            record = content.array_records["fitins.parameters"]
            key = draw(st.sampled_from(list(record.keys())))
            record[key] = Array(dtype="", shape=(), stype="numpy.ndarray", data=body)
            name = f"param {key} forged {body[:20]!r}"
        ops.append(name)
    content["fitins.config"] = ConfigRecord(config)
    return Case(R.TRAIN, content, True, tuple(ops))


SETUP: dict[str, Any] = {
    "stage": "setup",
    "sample_num": 3,
    "share_num": 3,
    "threshold": 2,
    "clipping_range": 8.0,
    "target_range": 2**22,
    "mod_range": 2**32,
    "max_weight": 1000.0,
}
"""A valid SecAgg+ setup stage record (three sites)."""


@st.composite
def stage_cases(draw: st.DrawFn) -> Case:
    """A SecAgg+ stage message with one to three malformed changes."""
    from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS

    record: dict[str, Any] = dict(SETUP)
    ops = []
    for _ in range(draw(st.integers(min_value=1, max_value=3))):
        kind = draw(st.sampled_from(["drop", "number", "order", "stage", "other-stage"]))
        if kind == "drop":
            key = draw(st.sampled_from(sorted(SETUP)))
            record.pop(key, None)
            name = f"drop {key}"
        elif kind == "number":
            key = draw(st.sampled_from(sorted(set(SETUP) - {"stage"})))
            integer = type(SETUP[key]) is int
            value = draw(
                st.one_of(
                    st.sampled_from([0, -1, 10**9, 2**63 - 1] if integer else [0.0, -1.0]),
                    BAD_FLOATS,
                    WRONG_TYPES,
                )
            )
            record[key], name = value, f"{key}={value!r:.40}"
        elif kind == "order":
            record["threshold"], record["share_num"] = 3, 2
            name = "threshold over share_num"
        elif kind == "stage":
            value = draw(st.one_of(st.sampled_from(["nonsense", ""]), WRONG_TYPES))
            record["stage"], name = value, f"stage={value!r:.40}"
        else:
            stage = draw(st.sampled_from(["share_keys", "collect_masked_vectors", "unmask"]))
            record = {"stage": stage, "x": draw(WRONG_TYPES)}
            name = f"{stage} out of turn"
        ops.append(name)
    content = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(record)})
    return Case(R.TRAIN, content, True, tuple(ops))


def ckks_ops(site: Site) -> Callable[[st.DrawFn], tuple[str, Callable[[RecordDict], None], bool]]:
    """Changes to the ``ckks.aggregates`` record: (name, apply, built malformed)."""
    assert site.aggregate is not None
    good = site.aggregate

    def draw_op(draw: st.DrawFn) -> tuple[str, Callable[[RecordDict], None], bool]:
        kind = draw(
            st.sampled_from(
                [
                    "length",
                    "rounds",
                    "weights",
                    "counts",
                    "chunk_counts",
                    "chunks",
                    "lists",
                    "future",
                    "gap",
                    "reorder",
                    "tiny-weight",
                    "flip",
                    "cut",
                    "swap-round",
                ]
            )
        )
        field_bounds = {
            "length": (1, R.MAX_CKKS_LENGTH, True),
            "rounds": (1, 1, True),
            "counts": (1, R.MAX_SITES, True),
            "chunk_counts": (1, 1, True),
        }

        def edit(key: str, value: Any) -> Callable[[RecordDict], None]:
            def apply(content: RecordDict) -> None:
                rec = dict(content.config_records[R.CKKS_AGGREGATES])
                rec[key] = value
                content[R.CKKS_AGGREGATES] = ConfigRecord(rec)

            return apply

        def aggregates(rounds: list[R.CkksRound], length: int) -> Callable[[RecordDict], None]:
            record = R.CkksAggregates(length, rounds).to_record()
            return lambda content: content.__setitem__(R.CKKS_AGGREGATES, record)

        size = sum(a.size for a in site.base.values())
        if kind == "length":
            value = draw(
                st.one_of(
                    bad_number(1, R.MAX_CKKS_LENGTH, True), st.sampled_from([size - 1, size + 1])
                )
            )
            return f"length={value!r:.40}", edit("length", value), True
        if kind in field_bounds:
            lo, hi, _ = field_bounds[kind]
            number = bad_number(lo, hi, True).filter(lambda v: type(v) in (int, float))
            value = draw(st.one_of(number.map(lambda v: [v]), WRONG_LIST_TYPES))
            return f"{kind}={value!r:.40}", edit(kind, value), True
        if kind == "weights":
            value = draw(
                st.one_of(
                    st.lists(
                        st.sampled_from([0.0, -1.0, float("nan"), float("inf"), 1e30]),
                        min_size=1,
                        max_size=1,
                    ),
                    WRONG_LIST_TYPES,
                )
            )
            return f"weights={value!r:.40}", edit("weights", value), True
        if kind == "chunks":
            value = draw(
                st.one_of(
                    st.lists(st.binary(max_size=64), min_size=1, max_size=2), WRONG_LIST_TYPES
                )
            )
            return f"chunks={value!r:.40}", edit("chunks", value), True
        if kind == "lists":
            key = draw(st.sampled_from(["rounds", "weights", "counts", "chunk_counts", "chunks"]))
            return f"{key} emptied", edit(key, []), True
        if kind == "future":
            return (
                "aggregate of round 5 (future)",
                aggregates([R.CkksRound(5, good.chunks, 1.0, 1)], size),
                True,
            )
        if kind == "gap":
            return (
                "aggregate of round 2 only",
                aggregates([R.CkksRound(2, good.chunks, 1.0, 1)], size),
                True,
            )
        if kind == "reorder":
            rounds = [R.CkksRound(1, good.chunks, 1.0, 1), R.CkksRound(1, good.chunks, 1.0, 1)]
            return "round 1 twice", aggregates(rounds, size), True
        if kind == "tiny-weight":
            return "weight 1e-300", aggregates([R.CkksRound(1, good.chunks, 1e-300, 1)], size), True
        if kind == "flip":
            pos = draw(st.integers(min_value=0, max_value=10**6))
            chunk = bytearray(good.chunks[0])
            chunk[pos % len(chunk)] ^= 0xFF
            rounds = [R.CkksRound(1, [bytes(chunk), *good.chunks[1:]], 1.0, 1)]
            return f"chunk byte {pos % len(chunk)} flipped", aggregates(rounds, size), True
        if kind == "cut":
            keep = draw(st.integers(min_value=0, max_value=len(good.chunks[0]) - 1))
            rounds = [R.CkksRound(1, [good.chunks[0][:keep], *good.chunks[1:]], 1.0, 1)]
            return f"chunk cut to {keep} bytes", aggregates(rounds, size), True
        count = draw(st.integers(min_value=2, max_value=5))
        return (
            f"count {count} for a one-site sum",
            aggregates([R.CkksRound(1, good.chunks, 1.0, count)], size),
            True,
        )

    return draw_op


# --------------------------------------------------------------------------- the suites


def plain_template(site: Site, mtype: str) -> Callable[[], RecordDict]:
    cfg = site.config(2)
    content = R.train_instruction(site.base, cfg)
    if mtype == R.TRAIN:
        content = carry.request_telemetry(carry.request_evaluation(content, 1), 3)
    return lambda: content


@pytest.mark.parametrize("mtype", [R.TRAIN, R.EVALUATE, R.EXPORT])
def test_plaintext_site_refuses_malformed_instructions_and_keeps_its_state(
    plain_site: Site, mtype: str
) -> None:
    names = sorted(plain_site.base)
    cases = instruction_cases(
        plain_template(plain_site, mtype), mtype, names, requests=mtype != R.EXPORT
    )
    run_suite(plain_site, cases, examples(SHARES[mtype]), f"plaintext {mtype}")
    still_works(plain_site, mtype)


def test_telemetry_queries_are_refused_or_answered(plain_site: Site) -> None:
    run_suite(plain_site, telemetry_cases(plain_site), examples(SHARES["telemetry"]), "telemetry")
    reply = plain_site.send(
        R.telemetry_instruction(2, plain_site.run_key, plain_site.scenario.task), R.TELEMETRY
    )
    assert R.Telemetry.from_content(reply.content).site_id == SITE


def test_secagg_fit_instructions_are_refused_before_training(plain_site: Site) -> None:
    names = list(plain_site.base)
    run_suite(plain_site, fit_cases(plain_site, names), examples(SHARES["fit"]), "secagg+ fit")
    reply = plain_site.send(fit_template(plain_site, names), R.TRAIN)
    assert "fitres.parameters" in reply.content.array_records


def test_secagg_stage_records_are_refused_before_the_protocol_runs(plain_site: Site) -> None:
    from flwr.common.secure_aggregation.secaggplus_constants import (
        RECORD_KEY_CONFIGS,
        RECORD_KEY_STATE,
    )

    plain_site.context.state = RecordDict()
    tally = run_suite(plain_site, stage_cases(), examples(SHARES["stage"]), "secagg+ stages")
    assert RECORD_KEY_STATE not in plain_site.context.state.config_records  # never began
    assert tally.counts["refused"] == tally.counts["total"]
    setup = RecordDict({RECORD_KEY_CONFIGS: ConfigRecord(dict(SETUP))})
    reply = plain_site.send(setup, R.TRAIN)  # a valid setup gets the site's public keys
    assert set(reply.content.config_records[RECORD_KEY_CONFIGS]) == {"pk1", "pk2"}
    plain_site.context.state = RecordDict()


@pytest.mark.parametrize("mtype", [R.TRAIN, R.EVALUATE])
def test_ckks_site_never_applies_what_it_cannot_decrypt_and_check(
    ckks_site: Site, mtype: str
) -> None:
    assert ckks_site.aggregate is not None
    cfg = ckks_site.config(1 if mtype == R.EVALUATE else 2)
    template = R.ckks_instruction(
        cfg,
        R.CkksAggregates(sum(a.size for a in ckks_site.base.values()), [ckks_site.aggregate]),
        ckks_site.base,
    )
    names = sorted(ckks_site.base)
    cases = instruction_cases(
        lambda: template,
        mtype,
        names,
        base_optional=True,
        requests=mtype == R.TRAIN,
        extra_ops=ckks_ops(ckks_site),
    )
    run_suite(ckks_site, cases, examples(CKKS_SHARES[mtype]), f"ckks {mtype}")
    ckks_site.restore()
    store = GlobalModelStore.for_run(ckks_site.state, ckks_site.run_key)
    assert store.round() == 0
    reply = ckks_site.send(template, mtype)  # the valid instruction applies round 1
    assert store.round() == 1
    if mtype == R.EVALUATE:
        assert R.EvalReply.from_content(reply.content).num_examples > 0
    else:
        assert R.TrainReply.from_content(reply.content).encrypted
    ckks_site.restore()


def still_works(site: Site, mtype: str) -> None:
    """After the fuzzing a valid instruction of ``mtype`` gets its answer."""
    site.restore()
    reply = site.send(R.train_instruction(site.base, site.config(2)), mtype)
    assert not reply.has_error()
    if mtype == R.TRAIN:
        assert R.TrainReply.from_content(reply.content).num_examples > 0
    elif mtype == R.EVALUATE:
        assert R.EvalReply.from_content(reply.content).num_examples > 0
    else:
        _, manifest, error = R.read_export_reply(reply.content)
        assert not error and manifest["file"]
    site.restore()
