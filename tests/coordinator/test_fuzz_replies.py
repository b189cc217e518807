"""Property-based fuzzing of every reply the coordinator reads: hostile replies never crash it nor poison it.

Hypothesis draws malformed train replies (clear and CKKS), SecAgg+ protocol replies,
evaluate replies and telemetry (:mod:`tests.coordinator.fuzz_strategies`): wrong shapes,
dtypes, NaN/Inf, absurd norms, truncated, oversized or pickled ``.npy`` bytes, lying
safetensors headers, wrong or missing keys, wrong value types, a site claiming another's
id, replays from an earlier round, signatures by the wrong key or of the wrong type;
about half of them first cross Flower's real wire serialisation. Each goes down the
coordinator's own path (``send_train`` with the mode's checks, ``pool_replies``,
``read_telemetry``, the SecAgg+ guard's checks), beside honest replies, with real ECDSA
signatures and a registered-keys verifier, and again without one (no kit).

Counted, printed and asserted: exceptions escaping = 0; aggregates that are not finite or
whose step exceeds the sanity ceiling = 0; every rejection has a non-empty reason; an
honest reply is accepted. A few hostile replies are then driven through a real
``RoundDriver`` over the in-process grid and their reasons read back from ``rounds.jsonl``.

The module throws 12,000 fuzzed replies in all (a few minutes on 2 cores), shared between
the modes, times ``FEDCORE_FUZZ_SCALE`` (shared by every fuzz suite); for a longer local run::

    FEDCORE_FUZZ_SCALE=20 python -m pytest -q tests/coordinator/test_fuzz_replies.py

Runs are derandomized (the same examples every time).
"""

from __future__ import annotations

import functools
import math
import os
import textwrap
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from coordinator.aggregation import pool_replies, weighted_average
from coordinator.auth import ReplyVerifier
from coordinator.driver import RoundDriver, read_telemetry
from coordinator.protection.base import (
    ClearModelProtection,
    Collected,
    ExchangeResult,
    Noise,
    TrainRound,
    send_train,
)
from coordinator.validation import UPDATE_CEILING, check_train_reply, update_ratio
from fedcore import carry
from fedcore import records as R
from fedcore.config import Scenario, TaskSpec
from fedcore.engines.inprocess import InProcessGrid, wire_copy
from scheduling.base import Candidate
from scheduling.random_selector import RandomSelector
from secure.secagg_guard import (
    FITRES_METRICS,
    FITRES_NUM_EXAMPLES,
    FITRES_PARAMETERS,
    FITRES_STATUS,
    InvalidReply,
    check_masked_reply,
    check_setup_reply,
)
from tests.coordinator.fuzz_strategies import (
    CONFIG_VALUE,
    INT64,
    REF,
    ROUND,
    RUN_KEY,
    SITES,
    Case,
    Signer,
    ckks_train_cases,
    evaluation_cases,
    honest_arrays,
    honest_evaluation,
    make_signers,
    npy_bytes,
    plaintext_train_cases,
    registered,
    sign_reply,
    telemetry_cases,
)

pytestmark = pytest.mark.fuzz

TOTAL = round(12000 * float(os.environ.get("FEDCORE_FUZZ_SCALE", "1")))
SHARE = {"plaintext": 0.34, "ckks": 0.12, "secagg+": 0.14, "evaluate": 0.22, "telemetry": 0.18}
EXAMPLES = {mode: max(10, int(TOTAL * share)) for mode, share in SHARE.items()}
MINIMUM = 10_000 if TOTAL >= 12_000 else 0
"""Fuzzed replies the whole module must have thrown (with the default size)."""

SIGNERS = make_signers()
NODE = {s: 1000 + i for i, s in enumerate(SITES)}
SITE_OF = {n: s for s, n in NODE.items()}
SIZES = {"bank-a": 100, "bank-b": 300, "bank-c": 600}

TALLY: dict[str, Counter[str]] = {
    mode: Counter({"escaped": 0, "exploded": 0, "no_reason": 0}) for mode in SHARE
}
"""Per mode: cases, malformed (not honest), rejected, accepted, escaped, exploded, no_reason."""


def fuzz(mode: str) -> Callable[[Any], Any]:
    return settings(
        max_examples=EXAMPLES[mode],
        deadline=None,
        derandomize=True,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@pytest.fixture(scope="module", autouse=True)
def _report(module_task_identity: None) -> Iterator[None]:
    """Prints the tallies after the module (``-s`` shows them)."""
    yield
    print("\nfuzzed replies by mode:")
    for mode, t in TALLY.items():
        print(f"  {mode:10s} " + ", ".join(f"{k}={v}" for k, v in sorted(t.items())))
    total = Counter[str]()
    for t in TALLY.values():
        total.update(t)
    print("  all        " + ", ".join(f"{k}={v}" for k, v in sorted(total.items())))


def as_sent(case: Case) -> RecordDict:
    """The content as the coordinator receives it (through Flower's wire when ``case.wire``)."""
    instruction = Message(RecordDict(), NODE[case.node_site], R.TRAIN, group_id=str(ROUND))
    reply = Message(case.content, reply_to=instruction)
    return wire_copy(reply).content if case.wire else reply.content


def signature_only(kind: str) -> bool:
    """Damage that only a signature check can see (without a kit it may pass)."""
    return kind.split(":")[-1].startswith("sig-")


def judge(mode: str, case: Case, accepted: bool, reasons: list[str], *, kit: bool) -> None:
    """Count one outcome and hold it to the case's expectation."""
    tally = TALLY[mode]
    if kit:
        tally["cases"] += 1
        tally["malformed"] += case.expect != "accept"
        tally["accepted" if accepted else "rejected"] += 1
    if not accepted:
        if not reasons or not all(isinstance(r, str) and r.strip() for r in reasons):
            tally["no_reason"] += 1
        assert reasons and all(r.strip() for r in reasons), f"{case.kind}: rejected without reason"
    expect = case.expect if kit or not signature_only(case.kind) else "either"
    if expect == "reject":
        assert not accepted, f"{mode} {case.kind} (kit={kit}) was accepted"
    elif expect == "accept":
        assert accepted, f"{mode} {case.kind} (kit={kit}) was refused: {reasons}"


def escaped(mode: str, case: Case, exc: BaseException) -> None:
    TALLY[mode]["escaped"] += 1
    raise AssertionError(f"{mode} {case.kind}: {type(exc).__name__} escaped: {exc}") from exc


# ----------------------------------------------------------------------------- train rounds


def reply_message(site: str, content: RecordDict) -> Message:
    instruction = Message(RecordDict(), NODE[site], R.TRAIN, group_id=str(ROUND))
    return Message(content, reply_to=instruction)


@functools.lru_cache(maxsize=64)
def honest_train(site: str, seed: int) -> RecordDict:
    reply = R.TrainReply(honest_arrays(seed), SIZES[site], 0.3, 1.0, site, round=ROUND)
    return sign_reply(reply.to_content(), R.TRAIN, site, ROUND, reply.digest(), SIGNERS[site])


def train_round(
    hostile: Case, content: RecordDict, others: Mapping[str, RecordDict], verifier: ReplyVerifier
) -> TrainRound:
    """Round ``ROUND`` over the three sites; the hostile case's node answers with ``content``."""
    chosen = [Candidate(s, NODE[s], SIZES[s], {}) for s in SITES]

    def exchange(targets: Any, message_type: str, round_: int) -> ExchangeResult:
        list(targets)  # the instructions are built, as the driver builds them
        replies = [
            (NODE[s], reply_message(s, content if s == hostile.node_site else others[s]))
            for s in SITES
        ]
        return ExchangeResult(replies, {}, 0, 0)

    def verify(reply: R.TrainReply, rec: RecordDict) -> str | None:  # as RoundDriver.train_round
        return verifier.check(R.TRAIN, reply.site_id, ROUND, RUN_KEY, reply.digest(), rec)

    return TrainRound(
        round=ROUND,
        chosen=chosen,
        config_for=lambda c, w: R.RoundConfig(
            round=ROUND, seed=1, task=TaskSpec(), run_key=RUN_KEY
        ),
        exchange=exchange,
        verify=verify,
        epochs_of=lambda s: 1,
        grid=None,  # type: ignore[arg-type]
        timeout=1.0,
    )


class ClearModel(ClearModelProtection):
    """The clear-model protection with plain FedAvg (no robust aggregation): the worst case."""

    name = "fuzz-plain"

    def collect(self, rnd: TrainRound) -> Collected:
        return send_train(self, rnd, lambda reply: check_train_reply(reply, self._arrays))

    def aggregate(self, round_: int, collected: Collected, noise: Noise | None = None) -> None:
        raise NotImplementedError


PLAIN = ClearModel(REF)
KIT = ReplyVerifier(registered(SIGNERS))
NO_KIT = ReplyVerifier(None)


def check_aggregate(mode: str, collected: Collected) -> None:
    """FedAvg of the accepted replies (honest ones among them): finite, step within the ceiling."""
    if not collected.accepted:
        return
    mean = weighted_average([(r.arrays, collected.weights[s]) for s, r in collected.accepted])
    finite = all(np.isfinite(v).all() for v in mean.values())
    ratio = update_ratio(mean, REF)
    if not finite or not ratio <= UPDATE_CEILING:
        TALLY[mode]["exploded"] += 1
    assert finite and ratio <= UPDATE_CEILING, f"aggregate exploded: ratio {ratio}"


@fuzz("plaintext")
@given(case=plaintext_train_cases(SIGNERS), seed=st.integers(0, 2**16))
def test_plaintext_train_replies(case: Case, seed: int) -> None:
    content = as_sent(case)
    others = {s: honest_train(s, (seed + i) % 16) for i, s in enumerate(SITES)}
    for verifier in (KIT, NO_KIT):
        try:
            collected = PLAIN.collect(train_round(case, content, others, verifier))
            check_aggregate("plaintext", collected)
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001 - counted: nothing may escape
            escaped("plaintext", case, exc)
        site = case.node_site
        judge(
            "plaintext",
            case,
            site in collected.sites,
            collected.rejected.get(site, []),
            kit=verifier is KIT,
        )
        assert sorted(collected.sites + list(collected.rejected)) == sorted(SITES)


# ----------------------------------------------------------------------------- ckks


@pytest.fixture(scope="module")
def ckks_setup(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A CKKS coordinator (public context) and a site codec (secret context) for 4096 slots."""
    from coordinator.protection.ckks import Ckks
    from fedcore.config import CkksSpec, PrivacySpec
    from secure.ckks import CkksParams, new_secret_context, public_context
    from secure.codecs import make_codec

    privacy = PrivacySpec(mode="ckks", ckks=CkksSpec(poly_modulus_degree=4096, clip=0.05))
    params = CkksParams.from_spec(privacy.ckks)
    site_codec = make_codec(privacy, new_secret_context(params), len(SITES))
    protection = Ckks(
        privacy, public_context(params), len(SITES), REF, tmp_path_factory.mktemp("ckks")
    )
    length = protection.length
    rng = np.random.default_rng(5)
    variants = [site_codec.encrypt(rng.uniform(-0.04, 0.04, length)) for _ in range(4)]
    return {"protection": protection, "codec": site_codec, "length": length, "chunks": variants}


@st.composite
def _ckks_cases(draw: st.DrawFn) -> Case:
    setup = _CKKS["setup"]
    return draw(ckks_train_cases(lambda i: list(setup["chunks"][i]), setup["length"], SIGNERS))


_CKKS: dict[str, Any] = {}


def honest_ckks(site: str, setup: Mapping[str, Any], i: int) -> RecordDict:
    reply = R.TrainReply(
        {}, SIZES[site], 0.3, 1.0, site, list(setup["chunks"][i]), setup["length"], ROUND
    )
    return sign_reply(reply.to_content(), R.TRAIN, site, ROUND, reply.digest(), SIGNERS[site])


def test_ckks_train_replies(ckks_setup: dict[str, Any]) -> None:
    _CKKS["setup"] = ckks_setup
    protection = ckks_setup["protection"]
    codec = ckks_setup["codec"]

    @fuzz("ckks")
    @given(case=_ckks_cases())
    def run(case: Case) -> None:
        content = as_sent(case)
        others = {s: honest_ckks(s, ckks_setup, i) for i, s in enumerate(SITES)}
        for verifier in (KIT, NO_KIT):
            try:
                collected = protection.collect(train_round(case, content, others, verifier))
                if collected.accepted:  # the sum the coordinator keeps; a site decrypts it
                    agg = protection.combine(
                        ROUND, [(r.encrypted or [], 1.0) for _, r in collected.accepted]
                    )
                    mean = codec.decrypt(agg.chunks, protection.length, agg.count) / agg.count
                    ok = bool(np.isfinite(mean).all()) and float(np.abs(mean).max()) <= 1.0
                    if not ok:
                        TALLY["ckks"]["exploded"] += 1
                    assert ok, f"ckks aggregate of {case.kind} decrypts to {mean[:4]}..."
            except AssertionError:
                raise
            except Exception as exc:  # noqa: BLE001
                escaped("ckks", case, exc)
            site = case.node_site
            judge(
                "ckks",
                case,
                site in collected.sites,
                collected.rejected.get(site, []),
                kit=verifier is KIT,
            )

    run()


# ----------------------------------------------------------------------------- secagg+

SHAPES = [(1,), *(v.shape or (1,) for v in REF.values() if v.ndim)]
MOD_RANGE = 2**32
MAX_WEIGHT = 1000.0
QRANGE = 2**22


def honest_masked(seed: int) -> RecordDict:
    rng = np.random.default_rng(seed)
    blobs = [npy_of_int(rng.integers(0, MOD_RANGE, s, dtype=np.int64)) for s in SHAPES]
    return RecordDict(
        {
            RECORD_KEY_CONFIGS: ConfigRecord({Key.MASKED_PARAMETERS: blobs}),
            FITRES_PARAMETERS: ArrayRecord(),
            FITRES_NUM_EXAMPLES: MetricRecord({"num_examples": int(rng.integers(1, 1000))}),
            FITRES_METRICS: ConfigRecord({"loss": 0.3}),
            FITRES_STATUS: ConfigRecord({"code": 0, "message": "ok"}),
        }
    )


def npy_of_int(a: np.ndarray) -> bytes:
    from flwr.app import Array

    return bytes(Array(a).data)


@st.composite
def secagg_cases(draw: st.DrawFn) -> tuple[str, RecordDict, str]:
    """(kind, a collect-masked-vectors reply, expectation)."""
    content = honest_masked(draw(st.integers(0, 2**16)))
    cfg = dict(content.config_records[RECORD_KEY_CONFIGS])
    blobs = list(cfg[Key.MASKED_PARAMETERS])  # type: ignore[arg-type]
    kind = draw(
        st.sampled_from(
            [
                "honest",
                "header-bomb",
                "truncated",
                "empty-data",
                "garbage",
                "dtype",
                "shape",
                "out-of-range",
                "count",
                "not-bytes",
                "object-npy",
                "num-examples",
                "status",
                "fit-metrics",
                "clear-arrays",
                "missing-record",
            ]
        )
    )
    i = draw(st.integers(0, len(blobs) - 1))
    if kind == "header-bomb":
        blobs[i] = npy_bytes("<i8", draw(st.sampled_from([(2**60,), (2**31, 2**31)])), b"")
    elif kind == "truncated":
        blobs[i] = blobs[i][: draw(st.integers(0, len(blobs[i]) - 1))]
    elif kind == "empty-data":
        blobs[i] = npy_bytes("<i8", SHAPES[i], b"")
    elif kind == "garbage":
        blobs[i] = draw(st.binary(max_size=120))
    elif kind == "dtype":
        descr = draw(st.sampled_from(["<f8", "<i4", ">i8", "<u8"]))
        blobs[i] = npy_bytes(descr, SHAPES[i], b"\x00" * 8 * math.prod(SHAPES[i]))
        if descr == "<i4":
            blobs[i] = npy_bytes(descr, SHAPES[i], b"\x00" * 4 * math.prod(SHAPES[i]))
    elif kind == "shape":
        blobs[i] = npy_of_int(np.zeros(math.prod(SHAPES[i]) + 1, np.int64))
    elif kind == "out-of-range":
        blobs[i] = npy_of_int(
            np.full(SHAPES[i], draw(st.sampled_from([-1, MOD_RANGE, 2**62])), np.int64)
        )
    elif kind == "count":
        blobs = blobs[:-1] if draw(st.booleans()) else [*blobs, blobs[0]]
    elif kind == "not-bytes":
        cfg[Key.MASKED_PARAMETERS] = draw(
            st.one_of(INT64, st.lists(INT64, min_size=1, max_size=3), st.text(max_size=4))
        )
    elif kind == "object-npy":
        blobs[i] = npy_bytes("|O", SHAPES[i], b"\x80\x04\x95" + b"\x00" * 20 + b".")
    if kind != "not-bytes":
        cfg[Key.MASKED_PARAMETERS] = blobs
    content[RECORD_KEY_CONFIGS] = ConfigRecord(cfg)
    if kind == "num-examples":
        value = draw(
            st.one_of(
                st.sampled_from([0, -1, 10**6, 2**62]), st.floats(), st.lists(INT64, max_size=2)
            )
        )
        content[FITRES_NUM_EXAMPLES] = MetricRecord({"num_examples": value})
    elif kind == "status":
        value = draw(
            st.one_of(st.integers(1, 2**31), CONFIG_VALUE.filter(lambda v: type(v) is not int))
        )
        content[FITRES_STATUS] = ConfigRecord({"code": value, "message": "x"})
    elif kind == "fit-metrics":
        content[FITRES_METRICS] = ConfigRecord({"loss": draw(st.lists(INT64, max_size=2))})
    elif kind == "clear-arrays":
        from flwr.app import Array

        content[FITRES_PARAMETERS] = ArrayRecord({"w": Array(np.ones(3, np.float32))})
    elif kind == "missing-record":
        del content[draw(st.sampled_from([FITRES_NUM_EXAMPLES, FITRES_STATUS, RECORD_KEY_CONFIGS]))]
    return kind, content, "accept" if kind == "honest" else "reject"


@fuzz("secagg+")
@given(drawn=secagg_cases(), wire=st.booleans(), setup_damage=st.binary(max_size=80))
def test_secagg_replies(
    drawn: tuple[str, RecordDict, str], wire: bool, setup_damage: bytes
) -> None:
    kind, content, expect = drawn
    case = Case(kind, content, expect, SITES[0], wire)
    received = as_sent(case)
    try:
        check_masked_reply(received, SHAPES, MOD_RANGE, MAX_WEIGHT, QRANGE)
        accepted, reasons = True, []
    except InvalidReply as exc:
        accepted, reasons = False, [str(exc)]
    except Exception as exc:  # noqa: BLE001
        escaped("secagg+", case, exc)
    judge("secagg+", case, accepted, reasons, kit=True)
    # the setup stage: keys that are garbage, or not bytes at all
    setup = RecordDict(
        {RECORD_KEY_CONFIGS: ConfigRecord({Key.PUBLIC_KEY_1: setup_damage, Key.PUBLIC_KEY_2: b"x"})}
    )
    with pytest.raises(InvalidReply):
        check_setup_reply(setup)
    # the protocol's mean is checked like a clear model before it replaces the global one
    mean = honest_arrays(len(setup_damage))
    if kind in ("out-of-range", "header-bomb"):  # a mean the masks could not hide: absurd
        mean["conv.weight"] = np.full_like(mean["conv.weight"], 3e38)
        assert check_train_reply(R.TrainReply(mean, 1, 0.0, 0.0, "aggregate"), REF)


# ----------------------------------------------------------------------------- evaluations


def verify_evaluation(verifier: ReplyVerifier) -> Callable[[R.EvalReply, RecordDict], str | None]:
    def verify(reply: R.EvalReply, content: RecordDict) -> str | None:  # as RoundDriver._pool
        return verifier.check(R.EVALUATE, reply.site_id, ROUND, RUN_KEY, reply.digest(), content)

    return verify


@functools.lru_cache(maxsize=64)
def honest_eval_content(site: str, seed: int) -> RecordDict:
    ev = honest_evaluation(site, seed)
    return sign_reply(ev.to_content(), R.EVALUATE, site, ROUND, ev.digest(), SIGNERS[site])


@fuzz("evaluate")
@given(case=evaluation_cases(SIGNERS), seed=st.integers(0, 2**16))
def test_evaluate_replies(case: Case, seed: int) -> None:
    received = as_sent(case)
    site = case.node_site
    others = [
        (NODE[s], honest_eval_content(s, (seed + i) % 16)) for i, s in enumerate(SITES) if s != site
    ]
    for verifier in (KIT, NO_KIT):
        reasons: list[str] = []
        try:
            content: RecordDict | None = received
            if case.kind.startswith("carried:"):  # as the Carrier reads a train reply
                try:
                    content = carry.carried_evaluation(received)
                except ValueError as exc:
                    content, reasons = None, [f"malformed evaluation: {exc}"]
                else:
                    if content is None:
                        reasons = ["carried no evaluation: the site is asked again"]
            replies = ([(NODE[site], content)] if content is not None else []) + others
            pooled, parsed, problems = pool_replies(
                replies, {}, SITE_OF, 0.5, verify_evaluation(verifier)
            )
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001
            escaped("evaluate", case, exc)
        accepted = any(p.site_id == site for p in parsed)
        judge("evaluate", case, accepted, reasons or problems.get(site, []), kit=verifier is KIT)
        finite = math.isfinite(pooled["loss"]) and 0.0 <= pooled["pr_auc"] <= 1.0
        if not finite:
            TALLY["evaluate"]["exploded"] += 1
        assert finite, f"pooled metrics of {case.kind}: {pooled}"
        assert {p.site_id for p in parsed} <= set(SITES) and len(parsed) == len(
            {p.site_id for p in parsed}
        )


# ----------------------------------------------------------------------------- telemetry


@fuzz("telemetry")
@given(case=telemetry_cases(SIGNERS))
def test_telemetry_replies(case: Case) -> None:
    received = as_sent(case)
    for verifier in (KIT, NO_KIT):
        reasons: list[str] = []
        tel: R.Telemetry | str | None = None
        try:
            content: RecordDict | None = received
            if case.kind.startswith("carried:"):  # as the Carrier keeps what a reply carries
                try:
                    content = carry.carried_telemetry(received)
                except ValueError as exc:
                    content, reasons = None, [f"carried telemetry refused: {exc}"]
                else:
                    if content is None:
                        reasons = ["carried no telemetry: the node is asked again"]
            if content is not None:
                tel, refusal = read_telemetry(content, SITES, verifier, ROUND, RUN_KEY)
                reasons = [refusal] if refusal is not None else []
        except AssertionError:
            raise
        except Exception as exc:  # noqa: BLE001
            escaped("telemetry", case, exc)
        accepted = isinstance(tel, R.Telemetry) and not reasons
        judge("telemetry", case, accepted, reasons, kit=verifier is KIT)
        if accepted:
            assert isinstance(tel, R.Telemetry) and tel.num_train_examples >= 1
            assert all(math.isfinite(v) for v in tel.readings.values())


def test_every_mode_threw_its_share_and_nothing_escaped() -> None:
    """The module's totals (when every fuzz test above ran): 10,000 replies at least."""
    counts = {mode: t["cases"] for mode, t in TALLY.items()}
    if not all(counts.values()):
        pytest.skip(f"not every fuzz test ran in this session: {counts}")
    total = Counter[str]()
    for t in TALLY.values():
        total.update(t)
    assert total["malformed"] >= MINIMUM, total
    assert total["escaped"] == 0 and total["exploded"] == 0 and total["no_reason"] == 0, total
    for mode, t in TALLY.items():
        assert t["rejected"] > 0 and t["accepted"] > 0, (mode, t)


# ----------------------------------------------------------------------------- a real driver


def signed_client(hostile: Mapping[str, str], signers: Mapping[str, Signer]) -> ClientApp:
    """Sites that add (index + 1) to every weight and sign what they send; ``hostile`` names
    one damage per site: ``header-bomb`` (train arrays), ``replay`` (evaluation signed for the
    round before), ``claim`` (evaluation naming another site), ``nan-reading`` (carried
    telemetry)."""
    app = ClientApp()

    def site(ctx: Context) -> str:
        return str(ctx.node_config["site-id"])

    def telemetry(sid: str, round_: int, run_key: str, how: str) -> RecordDict:
        readings = {"cpu_util_percent": float("nan") if how == "nan-reading" else 12.0}
        tel = R.Telemetry(sid, SIZES[sid], "cpu", "cpu", readings)
        payload = R.signing_payload(R.TELEMETRY, sid, round_, run_key, tel.digest())
        return R.attach_signature(tel.to_content(), signers[sid].sign(payload))

    def evaluation(sid: str, round_: int, run_key: str, how: str) -> RecordDict:
        hp, hn = [0] * R.HIST_BINS, [0] * R.HIST_BINS
        hp[-1], hn[0] = 2, 8
        named = SITES[(SITES.index(sid) + 1) % len(SITES)] if how == "claim" else sid
        ev = R.EvalReply(named, 10, 2, 0.3, {"pr_auc": 1.0}, hp, hn)
        signed_round = round_ - 1 if how == "replay" else round_
        payload = R.signing_payload(R.EVALUATE, named, signed_round, run_key, ev.digest())
        return R.attach_signature(ev.to_content(), signers[named].sign(payload))

    def add_telemetry(msg: Message, content: RecordDict, sid: str, run_key: str) -> None:
        asked = carry.read_telemetry_request(msg.content)
        if asked is not None:
            carry.attach_telemetry(content, telemetry(sid, asked, run_key, hostile.get(sid, "")))

    @app.query("telemetry")
    def query(msg: Message, ctx: Context) -> Message:
        round_, run_key, _ = R.read_telemetry_instruction(msg.content)
        return Message(telemetry(site(ctx), round_, run_key, ""), reply_to=msg)

    @app.train()
    def train(msg: Message, ctx: Context) -> Message:
        arrays, cfg = R.read_instruction(msg.content)
        assert arrays is not None and cfg is not None
        sid = site(ctx)
        how = hostile.get(sid, "")
        out = {k: v + float(SITES.index(sid) + 1) for k, v in arrays.items()}
        reply = R.TrainReply(out, SIZES[sid], 0.5, 0.01, sid, round=cfg.round)
        payload = R.signing_payload(R.TRAIN, sid, cfg.round, cfg.run_key, reply.digest())
        content = R.attach_signature(reply.to_content(), signers[sid].sign(payload))
        if how == "header-bomb" and cfg.round >= 2:
            content[R.ARRAYS] = ArrayRecord(
                {"fedcore.packed-safetensors": _bomb_array()}  # 2**60 elements claimed
            )
        evaluated = carry.read_evaluation_request(msg.content)
        if evaluated is not None:
            carry.attach_evaluation(content, evaluation(sid, evaluated, cfg.run_key, how))
        add_telemetry(msg, content, sid, cfg.run_key)
        return Message(content, reply_to=msg)

    @app.evaluate()
    def evaluate(msg: Message, ctx: Context) -> Message:
        _, cfg = R.read_instruction(msg.content)
        assert cfg is not None
        sid = site(ctx)
        content = evaluation(sid, cfg.round, cfg.run_key, hostile.get(sid, ""))
        add_telemetry(msg, content, sid, cfg.run_key)
        return Message(content, reply_to=msg)

    return app


def _bomb_array() -> Any:
    from flwr.app import Array

    data = npy_bytes("|u1", (2**60,), b"\x00" * 16)
    return Array(dtype="uint8", shape=(len(data),), stype="numpy.ndarray", data=data)


@pytest.fixture
def hostile_run(
    write_scenario: Callable[..., Scenario],
    inprocess_grid: Callable[..., InProcessGrid],
    tmp_path: Path,
) -> Callable[[dict[str, str]], list[dict[str, Any]]]:
    def run(hostile: dict[str, str]) -> list[dict[str, Any]]:
        sites = "\n".join(
            f"  - {{id: {s}, data: {{kind: generated, transactions: 300}}}}" for s in SITES
        )
        scenario = write_scenario(
            textwrap.dedent("name: fuzzed\nrounds: 3\nscheduler: {min_sites: 1}\nsites:\n")
            + sites
            + "\n"
        )
        grid = inprocess_grid(signed_client(hostile, SIGNERS), {s: {"site-id": s} for s in SITES})
        out = tmp_path / "out"
        init = {k: np.zeros_like(v) for k, v in REF.items() if v.ndim}
        driver = RoundDriver(
            grid,
            scenario,
            RandomSelector(1.0, 1, 0),
            out,
            init,
            wait_for_sites=1,
            registered_keys=registered(SIGNERS),
        )
        assert driver.run()["status"] == "completed"
        import json

        return [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]

    return run


def test_hostile_replies_reach_the_round_record_with_their_reasons(
    hostile_run: Callable[[dict[str, str]], list[dict[str, Any]]],
) -> None:
    log = hostile_run({"bank-a": "nan-reading", "bank-b": "replay", "bank-c": "header-bomb"})
    assert [r["round"] for r in log] == [1, 2, 3]
    second = log[1]
    # train: the arrays' header claims 2**60 elements; refused before anything is allocated
    assert "bank-c" not in second["sites"]
    assert any("expected at most" in r for r in second["rejected"]["bank-c"])
    # evaluate: bank-b's evaluation is signed for the round before (a replay)
    for r in log:
        reasons = r["eval_problems"].get("bank-b", [])
        assert any("signature does not verify" in x for x in reasons), r["eval_problems"]
        assert "bank-b" not in r["per_site"]
    # telemetry: bank-a's carried telemetry holds a NaN reading: refused, asked again, noted
    # (left out of round 2; asked again for round 3, it answers a telemetry query cleanly)
    reasons = log[1]["telemetry_problems"].get("bank-a", [])
    assert any("'cpu_util_percent'" in x for x in reasons), log[1]["telemetry_problems"]
    assert "bank-a" not in log[1]["sites"]
    assert any("telemetry:" in x for x in log[1]["rejected"]["bank-a"])


def test_an_evaluation_claiming_another_site_is_left_out_with_its_reason(
    hostile_run: Callable[[dict[str, str]], list[dict[str, Any]]],
) -> None:
    log = hostile_run({"bank-a": "claim"})
    for r in log:
        reasons = r["eval_problems"].get("bank-a", [])
        assert any("names site 'bank-b'" in x for x in reasons), r["eval_problems"]
        assert set(r["per_site"]) == {"bank-b", "bank-c"}
