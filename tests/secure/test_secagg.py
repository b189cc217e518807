"""SecAgg+ bridge: real Flower SecAgg+ rounds over in-process sites, with dropouts and tampering."""

from __future__ import annotations

import importlib.util
import io
import logging
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.clientapp import ClientApp
from flwr.common import Scalar, ndarray_to_bytes
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.common.secure_aggregation.crypto.shamir import create_shares
from flwr.common.secure_aggregation.secaggplus_constants import (
    RECORD_KEY_CONFIGS,
    RECORD_KEY_STATE,
    Key,
    Stage,
)
from flwr.supercore.task_identity import TaskIdentity

from fedcore.config import SecAggSpec
from fedcore.engines.inprocess import InProcessGrid, node_id_for
from secure.secagg import (
    SecAggError,
    SecAggOutcome,
    effective_num_shares,
    fit_reply_content,
    is_legacy_fit,
    read_fit_instruction,
    run_secagg_round,
    secagg_error_bound,
    secagg_mod,
)
from secure.secagg_guard import consistent_holders, is_fernet_token

SEED = 20240611
SHAPES = [(3, 4), (7,)]
GLOBAL = [np.full(s, 0.25, dtype=np.float32) for s in SHAPES]
# Every site is every site's neighbour with 5 sites: 3 others + itself = 4 shares,
# raised to 5 (odd); 2 of them rebuild a secret, so up to 3 sites may drop.
SPEC = SecAggSpec(num_shares=3, reconstruction_threshold=2, max_weight=1000.0)
FIT_CONFIG: dict[str, Scalar] = {"fedcore.round": '{"round": 1}', "lr": 0.05, "local_epochs": 2}


def site_id(i: int) -> str:
    return f"bank-{i}"


def node(i: int) -> int:
    return node_id_for(site_id(i))


def site_arrays(i: int) -> list[np.ndarray]:
    rng = np.random.default_rng([SEED, i])
    return [rng.normal(0.0, 0.5, s).astype(np.float32) for s in SHAPES]


def site_weight(i: int) -> int:
    return 100 + 137 * i  # 100, 237, 374, 511, 648, 785: all below max_weight


def exact_mean(sites: Iterable[int]) -> list[np.ndarray]:
    sites = list(sites)
    w = np.array([site_weight(i) for i in sites], dtype=np.float64)
    return [
        sum(wi * site_arrays(i)[k].astype(np.float64) for wi, i in zip(w, sites, strict=True))
        / w.sum()
        for k in range(len(SHAPES))
    ]


def assert_mean_of(outcome: SecAggOutcome, sites: Iterable[int], spec: SecAggSpec = SPEC) -> None:
    sites = list(sites)
    assert outcome.contributors == tuple(node(i) for i in sites)
    bound = secagg_error_bound(spec, [site_weight(i) for i in sites], dtype=np.float32)
    assert outcome.error_bound == pytest.approx(bound)
    assert bound < 1e-3, "the test settings should make the bound meaningful"
    for got, want in zip(outcome.arrays, exact_mean(sites), strict=True):
        assert got.dtype == np.float32 and got.shape == want.shape
        assert np.max(np.abs(got.astype(np.float64) - want)) <= bound


# --------------------------------------------------------------------------- harness


@dataclass
class Sites:
    """Site behaviour a test can change: crashes per (site, stage), replies the handler records."""

    crash: set[tuple[int, str]] = field(default_factory=set)
    raw_reply: dict[int, Callable[[Message], Message]] = field(default_factory=dict)
    seen_config: dict[int, dict[str, Scalar]] = field(default_factory=dict)
    seen_arrays: dict[int, list[np.ndarray]] = field(default_factory=dict)

    def app(self) -> ClientApp:
        def crash_mod(msg: Message, ctxt: Context, call_next: Callable[..., Message]) -> Message:
            cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
            stage = str(cfg.get(Key.STAGE)) if cfg is not None else ""
            if (int(ctxt.node_config["index"]), stage) in self.crash:
                raise RuntimeError(f"site crashed in {stage}")
            return call_next(msg, ctxt)

        app = ClientApp(mods=[crash_mod, secagg_mod])

        @app.train()
        def train(msg: Message, context: Context) -> Message:
            i = int(context.node_config["index"])
            if i in self.raw_reply:
                return self.raw_reply[i](msg)
            if (i, "train") in self.crash:
                raise RuntimeError("out of GPU memory while training")
            arrays, config = read_fit_instruction(msg.content)
            self.seen_arrays[i], self.seen_config[i] = arrays, config
            metrics = {"loss": 0.5 + i, "num_examples": site_weight(i)}
            return Message(fit_reply_content(site_arrays(i), site_weight(i), metrics), reply_to=msg)

        return app


def stage_of(msg: Message) -> str:
    return str(msg.content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])


class SpyGrid(InProcessGrid):
    """The in-process grid, recording every message and reply and able to tamper with or lose replies."""

    sent: list[Message]
    replies: list[Message]
    tamper: dict[tuple[int, str], Callable[[ConfigRecord, RecordDict], None]]
    lose: set[tuple[int, str]]

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        msgs = list(messages)
        stage = stage_of(msgs[0])
        self.sent.extend(msgs)
        out = []
        for reply in super().send_and_receive(msgs, timeout=timeout):
            src = reply.metadata.src_node_id
            if (src, stage) in self.lose:
                continue
            if (src, stage) in self.tamper and reply.has_content():
                self.tamper[(src, stage)](
                    reply.content.config_records[RECORD_KEY_CONFIGS], reply.content
                )
            self.replies.append(reply)
            out.append(reply)
        return out


def make_grid(sites: Sites, n: int = 5) -> SpyGrid:
    grid = SpyGrid(sites.app(), {site_id(i): {"index": i} for i in range(n)})
    grid.sent, grid.replies, grid.tamper, grid.lose = [], [], {}, set()
    return grid


pytestmark = pytest.mark.usefixtures("task_identity")


@pytest.fixture
def task_run_id() -> int:
    """Every test runs as the coordinator's task of run 7 (``task_identity``, tests/conftest.py)."""
    return 7


def run(grid: SpyGrid, sites: Iterable[int] = range(5), spec: SecAggSpec = SPEC) -> SecAggOutcome:
    return run_secagg_round(grid, [node(i) for i in sites], FIT_CONFIG, GLOBAL, spec, 1, 30.0)


# --------------------------------------------------------------------------- (a) the mean


def test_mean_equals_exact_weighted_mean_within_the_quantization_bound() -> None:
    sites = Sites()
    grid = make_grid(sites)
    out = run(grid)
    assert_mean_of(out, range(5))
    assert out.dropouts == {} and out.dropped == {}
    assert out.num_shares == 5 and out.threshold == 2
    # every site got the global model and the fit config
    for i in range(5):
        assert all(np.array_equal(a, g) for a, g in zip(sites.seen_arrays[i], GLOBAL, strict=True))
        assert sites.seen_config[i] == FIT_CONFIG
    # legacy fit metrics and weights reach the coordinator
    assert out.num_examples == {node(i): site_weight(i) for i in range(5)}
    assert out.metrics[node(2)] == {"loss": 2.5, "num_examples": site_weight(2)}
    w = [site_weight(i) for i in range(5)]
    assert out.mean_loss == pytest.approx(sum((0.5 + i) * w[i] for i in range(5)) / sum(w))
    # costs are measured
    assert set(out.stage_seconds) == set(Stage.all()) == set(out.coordinator_seconds)
    assert all(set(s) == set(Stage.all()) for s in out.site_seconds.values())
    assert len(out.site_seconds) == 5
    assert all(out.bytes_up_by_node[node(i)] > 0 for i in range(5))
    assert out.bytes_up == sum(out.bytes_up_by_node.values())
    # masked vectors are int64 (8 bytes a value) for float32 updates: up-link > 2x the model
    assert out.bytes_up_by_node[node(0)] > 2 * 4 * sum(np.prod(s) for s in SHAPES)


def test_coordinator_never_receives_a_site_update_in_clear() -> None:
    grid = make_grid(Sites())
    run(grid)
    plain = {i: site_arrays(i) for i in range(5)}
    raw = [a.tobytes() for arrays in plain.values() for a in arrays]
    assert len(grid.replies) == 4 * 5  # four stages, five sites
    for reply in grid.replies:
        for name, arr_rec in reply.content.array_records.items():
            assert len(arr_rec) == 0, f"reply carries arrays in {name!r}"
        for cfg_rec in reply.content.config_records.values():
            for value in cfg_rec.values():
                for blob in value if isinstance(value, list) else [value]:
                    if not isinstance(blob, bytes):
                        continue
                    assert not any(r in blob for r in raw)
                    try:
                        arr = np.load(io.BytesIO(blob), allow_pickle=False)
                    except Exception:  # noqa: BLE001 - keys, ciphertexts, shares
                        continue
                    for arrays in plain.values():
                        for p in arrays:
                            assert not (arr.shape == p.shape and np.allclose(arr, p, atol=1e-3))


def test_no_flower_or_random_state_is_left_behind() -> None:
    random.seed(5)
    np.random.seed(5)
    before = (random.getstate(), np.random.get_state())
    run(make_grid(Sites()))
    assert random.getstate() == before[0]
    after = np.random.get_state()
    assert all(np.array_equal(a, b) for a, b in zip(after, before[1], strict=True))
    assert (TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id) == (
        7,
        SUPERLINK_NODE_ID,
        1,
    )


# --------------------------------------------------------------------------- (b) dropouts


def test_site_dying_after_key_sharing_leaves_the_exact_mean_of_the_survivors() -> None:
    """The acceptance test: site 2 shares its keys, then crashes while training.

    Its neighbours have already added pairwise masks with site 2 to their own
    vectors; the coordinator must rebuild site 2's private key from the others'
    shares and strip those masks, or the mean is garbage.
    """
    sites = Sites(crash={(2, "train")})
    grid = make_grid(sites)
    out = run(grid)

    # site 2 did take part in setup and key sharing, and was asked for its vector
    stages_sent_to_2 = [stage_of(m) for m in grid.sent if m.metadata.dst_node_id == node(2)]
    assert stages_sent_to_2 == [Stage.SETUP, Stage.SHARE_KEYS, Stage.COLLECT_MASKED_VECTORS]
    # ... and the survivors were sent its encrypted key shares
    collect = [m for m in grid.sent if stage_of(m) == Stage.COLLECT_MASKED_VECTORS]
    to_0 = next(m for m in collect if m.metadata.dst_node_id == node(0))
    assert node(2) in to_0.content.config_records[RECORD_KEY_CONFIGS][Key.SOURCE_LIST]  # type: ignore[operator]

    drop = out.dropouts[node(2)]
    assert drop.stage == Stage.COLLECT_MASKED_VECTORS
    assert "out of GPU memory while training" in drop.reason
    assert out.dropped == {node(2): f"{drop.stage}: {drop.reason}"}
    assert_mean_of(out, [0, 1, 3, 4])
    assert node(2) not in out.num_examples and node(2) not in out.metrics


@pytest.mark.parametrize(
    ("stage", "contributors"),
    [
        (Stage.SETUP, [0, 1, 3, 4]),
        (Stage.SHARE_KEYS, [0, 1, 3, 4]),
        (Stage.COLLECT_MASKED_VECTORS, [0, 1, 3, 4]),
        (Stage.UNMASK, [0, 1, 2, 3, 4]),  # its masked vector is already in the sum
    ],
)
def test_a_site_crashing_in_any_stage_is_survived(stage: str, contributors: list[int]) -> None:
    out = run(make_grid(Sites(crash={(2, stage)})))
    assert out.dropouts[node(2)].stage == stage
    assert f"site crashed in {stage}" in out.dropouts[node(2)].reason
    assert_mean_of(out, contributors)


def test_a_site_that_never_answers_is_a_dropout() -> None:
    grid = make_grid(Sites())
    grid.lose.add((node(4), Stage.COLLECT_MASKED_VECTORS))
    out = run(grid)
    assert out.dropouts[node(4)].reason == "no reply within 30.0s"
    assert_mean_of(out, [0, 1, 2, 3])


# --------------------------------------------------------------------------- (c) tampering


def _masked(cfg: ConfigRecord) -> list[bytes]:
    return cfg[Key.MASKED_PARAMETERS]  # type: ignore[return-value]


def _retype(cfg: ConfigRecord, content: RecordDict) -> None:
    blobs = _masked(cfg)
    blobs[1] = ndarray_to_bytes(np.load(io.BytesIO(blobs[1])).astype(np.float64))


def _reshape(cfg: ConfigRecord, content: RecordDict) -> None:
    blobs = _masked(cfg)
    blobs[2] = ndarray_to_bytes(np.load(io.BytesIO(blobs[2]))[:-1])


def _out_of_range(cfg: ConfigRecord, content: RecordDict) -> None:
    blobs = _masked(cfg)
    blobs[1] = ndarray_to_bytes(np.load(io.BytesIO(blobs[1])) + 2**32)


def _leak(cfg: ConfigRecord, content: RecordDict) -> None:
    content.array_records["fitres.parameters"] = ArrayRecord([np.ones(3, np.float32)])


def _garbage_ciphertexts(cfg: ConfigRecord, content: RecordDict) -> None:
    cfg[Key.CIPHERTEXT_LIST] = [b"not a ciphertext" * 8 for _ in cfg[Key.CIPHERTEXT_LIST]]  # type: ignore[union-attr]


def _one_share_missing(cfg: ConfigRecord, content: RecordDict) -> None:
    cfg[Key.DESTINATION_LIST] = cfg[Key.DESTINATION_LIST][:-1]  # type: ignore[index]
    cfg[Key.CIPHERTEXT_LIST] = cfg[Key.CIPHERTEXT_LIST][:-1]  # type: ignore[index]


def _garbage_key(cfg: ConfigRecord, content: RecordDict) -> None:
    cfg[Key.PUBLIC_KEY_1] = b"-----BEGIN PUBLIC KEY-----\ngarbage\n-----END PUBLIC KEY-----\n"


def _short_share_list(cfg: ConfigRecord, content: RecordDict) -> None:
    cfg[Key.SHARE_LIST] = cfg[Key.SHARE_LIST][:-1]  # type: ignore[index]


def _flip_share_bit(cfg: ConfigRecord, content: RecordDict) -> None:
    shares = list(cast(list[bytes], cfg[Key.SHARE_LIST]))
    first = bytearray(shares[0])
    first[6] ^= 0x01  # inside the first 16-byte chunk: the padding check cannot see it
    shares[0] = bytes(first)
    cfg[Key.SHARE_LIST] = shares


@pytest.mark.parametrize(
    ("stage", "tamper", "reason", "contributors"),
    [
        (
            Stage.COLLECT_MASKED_VECTORS,
            lambda cfg, _: _masked(cfg).pop(),
            "expected 3 masked arrays (weight factor + 2 model arrays), found 2",
            [0, 1, 2, 4],
        ),
        (
            Stage.COLLECT_MASKED_VECTORS,
            lambda cfg, _: _masked(cfg).__setitem__(1, _masked(cfg)[1][:-9]),
            "masked array 1: header claims 96 byte(s) of data ((3, 4) of int64), found 87",
            [0, 1, 2, 4],
        ),
        (
            Stage.COLLECT_MASKED_VECTORS,
            _retype,
            "expected dtype int64, found float64",
            [0, 1, 2, 4],
        ),
        (Stage.COLLECT_MASKED_VECTORS, _reshape, "expected shape (7,), found (6,)", [0, 1, 2, 4]),
        (
            Stage.COLLECT_MASKED_VECTORS,
            _out_of_range,
            "expected values in [0, 4294967296)",
            [0, 1, 2, 4],
        ),
        (Stage.COLLECT_MASKED_VECTORS, _leak, "reply carries clear arrays", [0, 1, 2, 4]),
        (
            Stage.SHARE_KEYS,
            _garbage_ciphertexts,
            "expected Fernet ciphertexts, found 4 malformed",
            [0, 1, 2, 4],
        ),
        (
            Stage.SHARE_KEYS,
            _one_share_missing,
            "expected key shares for its neighbours",
            [0, 1, 2, 4],
        ),
        (Stage.SETUP, _garbage_key, "public key 'pk1' is not a PEM EC public key", [0, 1, 2, 4]),
        (
            Stage.UNMASK,
            _short_share_list,
            "expected one share per node id, found 4 for 5",
            [0, 1, 2, 3, 4],
        ),
        (
            Stage.UNMASK,
            _flip_share_bit,
            "does not match the other holders' shares",
            [0, 1, 2, 3, 4],
        ),
    ],
    ids=[
        "masked-wrong-length",
        "masked-truncated-bytes",
        "masked-wrong-dtype",
        "masked-wrong-shape",
        "masked-out-of-range",
        "clear-update-attached",
        "garbage-share-message",
        "share-message-missing-a-share",
        "garbage-public-key",
        "unmask-truncated-share-list",
        "unmask-tampered-share",
    ],
)
def test_a_tampered_reply_is_rejected_and_the_round_goes_on(
    stage: str,
    tamper: Callable[[ConfigRecord, RecordDict], None],
    reason: str,
    contributors: list[int],
) -> None:
    grid = make_grid(Sites())
    grid.tamper[(node(3), stage)] = tamper
    out = run(grid)
    assert out.dropouts[node(3)].stage == stage
    assert reason in out.dropouts[node(3)].reason
    assert out.dropouts[node(3)].reason.startswith("rejected reply: ")
    assert list(out.dropouts) == [node(3)]
    assert_mean_of(out, contributors)


def test_a_tampered_share_of_a_dropped_sites_key_is_caught_by_its_public_key() -> None:
    sites = Sites(crash={(2, "train")})
    grid = make_grid(sites)

    def flip_dead_share(cfg: ConfigRecord, content: RecordDict) -> None:
        shares = list(cast(list[bytes], cfg[Key.SHARE_LIST]))
        assert cfg[Key.NODE_ID_LIST][-1] == node(2)  # type: ignore[index]
        last = bytearray(shares[-1])  # dropped nodes come last: node 2's private key
        last[40] ^= 0x01
        shares[-1] = bytes(last)
        cfg[Key.SHARE_LIST] = shares

    grid.tamper[(node(3), Stage.UNMASK)] = flip_dead_share
    out = run(grid)
    assert "node " + str(node(2)) + "'s private key does not match" in out.dropouts[node(3)].reason
    assert out.dropouts[node(2)].stage == Stage.COLLECT_MASKED_VECTORS
    assert_mean_of(out, [0, 1, 3, 4])


def test_copied_public_keys_drop_both_sites() -> None:
    grid = make_grid(Sites())
    keys: dict[str, object] = {}

    def copy_keys(cfg: ConfigRecord, content: RecordDict) -> None:
        if not keys:  # the first of the two replies: remember its keys
            keys.update(cfg)
        else:  # the second: send the first one's keys as its own
            cfg[Key.PUBLIC_KEY_1] = keys[Key.PUBLIC_KEY_1]  # type: ignore[assignment]
            cfg[Key.PUBLIC_KEY_2] = keys[Key.PUBLIC_KEY_2]  # type: ignore[assignment]

    first, second = sorted([node(1), node(3)])
    grid.tamper[(first, Stage.SETUP)] = grid.tamper[(second, Stage.SETUP)] = copy_keys
    out = run(grid)
    assert {n: d.reason for n, d in out.dropouts.items()} == {
        n: "rejected reply: its public key duplicates another site's" for n in (first, second)
    }
    assert_mean_of(out, [0, 2, 4])


def test_a_train_reply_without_legacy_records_fails_at_the_site_with_a_clear_reason() -> None:
    sites = Sites(raw_reply={1: lambda msg: Message(RecordDict(), reply_to=msg)})
    out = run(make_grid(sites))
    assert "build it with secure.secagg.fit_reply_content" in out.dropouts[node(1)].reason
    assert_mean_of(out, [0, 2, 3, 4])


def test_non_finite_values_fail_at_the_site_instead_of_poisoning_the_sum() -> None:
    bad = [np.full(s, np.nan, dtype=np.float32) for s in SHAPES]
    sites = Sites(raw_reply={4: lambda msg: Message(fit_reply_content(bad, 10, {}), reply_to=msg)})
    out = run(make_grid(sites))
    assert "19 non-finite values" in out.dropouts[node(4)].reason
    assert_mean_of(out, [0, 1, 2, 3])


def test_a_weight_above_max_weight_is_rejected_with_the_fix() -> None:
    spec = SPEC.model_copy(update={"max_weight": 600.0})  # site 4 weighs 648
    out = run(make_grid(Sites()), spec=spec)
    assert "num_examples 648 exceeds max_weight 600" in out.dropouts[node(4)].reason
    assert "Raise privacy.secagg.max_weight" in out.dropouts[node(4)].reason
    assert_mean_of(out, [0, 1, 2, 3], spec)


# --------------------------------------------------------------------------- (d) too many dropouts


def test_too_many_dropouts_raise_secagg_error_naming_the_sites() -> None:
    # 4 sites, 4 shares each (everyone a neighbour), 3 needed: two losses leave 2 < 3
    spec = SecAggSpec(num_shares=3, reconstruction_threshold=3, max_weight=1000.0)
    sites = Sites(crash={(1, "train"), (3, "train")})
    with pytest.raises(SecAggError) as info:
        run(make_grid(sites, n=4), range(4), spec)
    msg = str(info.value)
    assert "halted in stage 'collect_masked_vectors'" in msg
    assert f"node {node(0)} has 2" in msg
    assert "live sites in its neighbourhood; each needs reconstruction_threshold = 3" in msg
    for i in (1, 3):
        assert f"node {node(i)} (collect_masked_vectors): site reported an error" in msg
    assert "To fix:" in msg


def test_too_few_selected_sites_raise_before_any_message() -> None:
    grid = make_grid(Sites())
    with pytest.raises(
        SecAggError, match=r"more selected sites than reconstruction_threshold \(2\); got 2"
    ):
        run(grid, [0, 1])
    assert grid.sent == []


def test_missing_task_identity_is_explained() -> None:
    TaskIdentity._run_id = None  # type: ignore[assignment]
    with pytest.raises(RuntimeError, match="inside a ServerApp main"):
        run(make_grid(Sites()))


# --------------------------------------------------------------------------- (e) selection


def test_only_the_selected_nodes_receive_messages_in_every_stage() -> None:
    sites = Sites()
    grid = make_grid(sites, n=6)
    chosen = [4, 1, 5, 2]
    out = run(grid, chosen)
    assert out.selected == tuple(node(i) for i in chosen)
    assert {m.metadata.dst_node_id for m in grid.sent} == {node(i) for i in chosen}
    for stage in Stage.all():
        dsts = sorted(m.metadata.dst_node_id for m in grid.sent if stage_of(m) == stage)
        assert dsts == sorted(node(i) for i in chosen)
    untouched = [grid._sites[node(i)].context.state for i in (0, 3)]
    assert all(RECORD_KEY_STATE not in s.config_records for s in untouched)
    assert sorted(sites.seen_config) == sorted(chosen)
    assert_mean_of(out, sorted(chosen, key=chosen.index))


# --------------------------------------------------------------------------- site-side helpers


def test_secagg_mod_passes_other_messages_through_untouched() -> None:
    msg = Message(RecordDict({"config": ConfigRecord({"round": 1})}), 5, "train")
    reply = Message(RecordDict(), reply_to=msg)
    calls: list[Message] = []

    def call_next(m: Message, c: Context) -> Message:
        calls.append(m)
        return reply

    ctx = Context(run_id=1, node_id=5, node_config={}, state=RecordDict(), run_config={})
    assert secagg_mod(msg, ctx, call_next) is reply
    assert calls == [msg] and calls[0] is msg
    assert len(ctx.state) == 0 and len(reply.content) == 0


def test_legacy_fit_records_round_trip() -> None:
    arrays: list[np.ndarray] = [
        np.arange(6, dtype=np.float32).reshape(2, 3),
        np.array(3, dtype=np.int64),
    ]
    content = fit_reply_content(arrays, 42, {"loss": 0.5})
    assert sorted(content.keys()) == [
        "fitres.metrics",
        "fitres.num_examples",
        "fitres.parameters",
        "fitres.status",
    ]
    assert content.metric_records["fitres.num_examples"]["num_examples"] == 42
    assert not is_legacy_fit(content)
    ins = RecordDict(
        {
            "fitins.parameters": content.array_records["fitres.parameters"],
            "fitins.config": ConfigRecord({"lr": 0.1}),
        }
    )
    assert is_legacy_fit(ins)
    back, config = read_fit_instruction(ins)
    assert config == {"lr": 0.1}
    assert all(
        np.array_equal(a, b) and a.dtype == b.dtype for a, b in zip(back, arrays, strict=True)
    )


def test_legacy_fit_helpers_say_what_is_wrong() -> None:
    with pytest.raises(ValueError, match="expected a legacy fit instruction"):
        read_fit_instruction(RecordDict({"config": ConfigRecord({"round": 1})}))
    with pytest.raises(ValueError, match="num_examples must be >= 0, got -1"):
        fit_reply_content([np.zeros(2)], -1, {})
    with pytest.raises(ValueError, match=r"fit metrics must be scalars .* \{'hist': 'list'\}"):
        fit_reply_content([np.zeros(2)], 1, {"hist": [1, 2]})  # type: ignore[dict-item]


# --------------------------------------------------------------------------- pure parts


@pytest.mark.parametrize(
    ("num_shares", "sites", "expected"),
    [
        (3, 4, 4),  # 3 others + itself = 4 = every site
        (3, 5, 5),  # 4 is even and not every site: raised to 5
        (3, 9, 5),
        (2, 9, 3),  # 2 others + itself = 3, odd
        (4, 9, 5),
        (6, 4, 4),  # never more than the sites there are
    ],
)
def test_effective_num_shares(num_shares: int, sites: int, expected: int) -> None:
    spec = SecAggSpec(num_shares=num_shares, reconstruction_threshold=2)
    assert effective_num_shares(spec, sites) == expected


def test_error_bound_arithmetic() -> None:
    # c = 8, Q = 2**22, m = 1000; weights 500 and 1000 quantize to 2**21 and 2**22:
    # S = 3 * 2**21; n c (3 + Q 2**-21) / S = 2 * 8 * 5 / (3 * 2**21)
    spec = SecAggSpec(max_weight=1000.0)
    assert secagg_error_bound(spec, [500, 1000]) == pytest.approx(80 / (3 * 2**21))
    # float32 output adds half an ulp at c: 8 * 2**-23 / 2
    assert secagg_error_bound(spec, [500, 1000], dtype=np.float32) == pytest.approx(
        80 / (3 * 2**21) + 8 * 2**-24
    )
    # uniform weights of 1 with the default max_weight of 100000: q_i = round(41.9) = 42;
    # 4 sites -> 4 * 8 * 5 / 168 ~ 0.95: the mean is noise. max_weight must fit the weights.
    assert secagg_error_bound(SecAggSpec(), [1, 1, 1, 1]) == pytest.approx(160 / 168)
    assert secagg_error_bound(SecAggSpec(quantization_range=2**8), [1]) == float("inf")


def test_consistent_holders_finds_a_tampered_share() -> None:
    secret = bytes(range(32))
    shares = dict(enumerate(create_shares(secret, 2, 5)))
    shares[3] = shares[3][:5] + bytes([shares[3][5] ^ 1]) + shares[3][6:]

    def is_secret(s: bytes) -> bool:
        return len(s) == 32

    assert consistent_holders(shares, 2, is_secret, strong=False) == {0, 1, 2, 4}
    # with only threshold + 1 shares the odd one out cannot be told apart
    three = {k: shares[k] for k in (0, 1, 3)}
    assert consistent_holders(three, 2, is_secret, strong=False) is None
    # unless the secret can be checked (a dropped site's key against its public key)
    assert consistent_holders(three, 2, lambda s: s == secret, strong=True) == {0, 1}


def test_fernet_token_shape() -> None:
    from cryptography.fernet import Fernet

    assert is_fernet_token(Fernet(Fernet.generate_key()).encrypt(b"x" * 100))
    assert not is_fernet_token(b"gAAAAA" + b"A" * 100)
    assert not is_fernet_token(b"not base64 at all!")


@pytest.fixture(scope="module")
def benchmark_secagg() -> Callable[..., dict[str, Any]]:
    """``benchmark_secagg`` of ``benchmarks/secagg_bench.py`` (benchmark scripts are no package)."""
    path = Path(__file__).parents[2] / "benchmarks" / "secagg_bench.py"
    spec = importlib.util.spec_from_file_location("secagg_bench", path)
    assert spec is not None and spec.loader is not None, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return cast(Callable[..., dict[str, Any]], module.benchmark_secagg)


def test_benchmark_measures_cost_and_error(
    benchmark_secagg: Callable[..., dict[str, Any]],
) -> None:
    res = benchmark_secagg(3, 64, seed=1)
    assert res["contributors"] == 3
    assert res["max_abs_error"] <= res["error_bound"] < 1e-4
    assert set(res["site_mask_seconds"]) == {"site-000", "site-001", "site-002"}
    assert all(v > 0 for v in res["site_mask_seconds"].values())
    assert all(v > 0 for v in res["site_unmask_seconds"].values())
    assert res["coordinator_aggregate_seconds"] > 0
    assert all(b > 64 * 8 for b in res["bytes_sent_per_site"].values())


def test_flower_logs_no_deprecated_feature_on_the_secagg_path(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Flower reports deprecations by logging "DEPRECATED FEATURE" (not as warnings).

    The SecAgg+ path leans on Flower's legacy compat layer, the workflow's state and the task
    identity: the day Flower deprecates one of them, this test says so.
    """
    from flwr.common.logger import warn_deprecated_feature

    with caplog.at_level(logging.WARNING, logger="flwr"):
        warn_deprecated_feature("probe")  # the capture sees Flower's deprecation log lines
        assert "DEPRECATED FEATURE: probe" in caplog.text
        caplog.clear()
        out = run(make_grid(Sites()))
    assert_mean_of(out, range(5))
    assert "DEPRECATED FEATURE" not in caplog.text, caplog.text
