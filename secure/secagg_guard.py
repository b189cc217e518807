"""Checks on every SecAgg+ (Bell et al., CCS 2020) reply, so that a bad reply becomes a dropout."""

from __future__ import annotations

import base64
import binascii
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, cast

import numpy as np
from flwr.app import ConfigRecord, Message, RecordDict
from flwr.common.secure_aggregation.crypto.shamir import combine_shares
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.serverapp import Grid
from flwr.supercore.primitives.asymmetric import (
    bytes_to_private_key,
    bytes_to_public_key,
    public_key_to_bytes,
)

from fedcore.engines.polling import GridWrapper
from fedcore.npy import read_npy
from fedcore.records import message_nbytes

log = logging.getLogger(__name__)

SITE_TIMING = "secagg.site"
"""MetricRecord a site adds to each SecAgg+ reply: its own protocol seconds (``seconds``)
and the seconds of training inside it (``train_seconds``)."""

STAGES: tuple[str, str, str, str] = Stage.all()
"""The four stages, in order: setup, share_keys, collect_masked_vectors, unmask."""

FITRES_PARAMETERS = "fitres.parameters"
FITRES_NUM_EXAMPLES = "fitres.num_examples"
FITRES_METRICS = "fitres.metrics"
FITRES_STATUS = "fitres.status"

SEED_BYTES = 32
"""Length of a site's private mask seed (``os.urandom(32)`` in Flower's client)."""

_MAX_SUBSETS = 2000
"""How many share subsets the search for a faulty key share may try before giving up."""


class SecAggError(RuntimeError):
    """A SecAgg+ round that cannot produce a correct aggregate (too few sites, or shares that disagree)."""


class InvalidReply(ValueError):
    """A site's protocol reply that fails a check; the message says what was expected and found."""


@dataclass(frozen=True)
class Dropout:
    """Why a site stopped taking part in a SecAgg+ round.

    Attributes:
        node_id: The site's node id.
        stage: The stage in which it dropped (one of :data:`STAGES`).
        reason: What happened: an error it reported, no reply, or the check its reply failed.
    """

    node_id: int
    stage: str
    reason: str


# --------------------------------------------------------------------------- reply checks


def _configs(content: RecordDict) -> ConfigRecord:
    if RECORD_KEY_CONFIGS not in content.config_records:
        raise InvalidReply(
            f"expected a {RECORD_KEY_CONFIGS!r} record, found records "
            f"{sorted(content.keys())}; is the site running secagg_mod?"
        )
    return content.config_records[RECORD_KEY_CONFIGS]


def _typed_list(record: ConfigRecord, key: str, kind: type) -> list[object]:
    if key not in record:
        raise InvalidReply(f"expected key {key!r}, found keys {sorted(record.keys())}")
    value = record[key]
    if not isinstance(value, list):
        raise InvalidReply(f"expected {key!r} to be a list, found {type(value).__name__}")
    wrong = [type(v).__name__ for v in value if type(v) is not kind]
    if wrong:
        raise InvalidReply(f"expected {key!r} to hold only {kind.__name__}, found {wrong[0]}")
    return list(value)


def check_setup_reply(content: RecordDict) -> tuple[bytes, bytes]:
    """Check a setup-stage reply and return its two public keys.

    Both keys must be distinct PEM-encoded EC public keys on the curve Flower's
    client uses (SECP384R1): a key on another curve or garbage bytes would make
    every neighbour of the site fail when it derives a shared key.

    Raises:
        InvalidReply: saying which key is missing or malformed.
    """
    cfg = _configs(content)
    keys = []
    for name in (Key.PUBLIC_KEY_1, Key.PUBLIC_KEY_2):
        value = cfg.get(name)
        if type(value) is not bytes:
            raise InvalidReply(
                f"expected public key {name!r} as bytes, found {type(value).__name__}"
            )
        try:
            key = bytes_to_public_key(value)
            curve = key.curve.name
        except Exception as exc:  # noqa: BLE001 - any parse failure means a bad key
            raise InvalidReply(f"public key {name!r} is not a PEM EC public key: {exc}") from None
        if curve != "secp384r1":
            raise InvalidReply(f"public key {name!r} is on curve {curve}, expected secp384r1")
        keys.append(value)
    if keys[0] == keys[1]:
        raise InvalidReply("the two public keys are identical; expected two distinct keys")
    return keys[0], keys[1]


def is_fernet_token(token: bytes) -> bool:
    """Whether ``token`` has the layout of a Fernet token (how sites encrypt key shares).

    Checks base64url encoding, version byte, and length (version 1 + time 8 + IV 16
    + whole AES blocks + HMAC 32); the content itself only the recipient can check.
    """
    try:
        raw = base64.b64decode(token, altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        return False
    return len(raw) >= 73 and raw[0] == 0x80 and (len(raw) - 57) % 16 == 0


def check_share_keys_reply(content: RecordDict, expected_destinations: set[int]) -> None:
    """Check a share-keys reply: one well-formed ciphertext for each neighbour it was sent.

    Args:
        content: The reply's content.
        expected_destinations: The site's live neighbours (the public keys it was
            sent, less its own).

    Raises:
        InvalidReply: saying what is missing, extra, or malformed.
    """
    cfg = _configs(content)
    dsts = _typed_list(cfg, Key.DESTINATION_LIST, int)
    ctxts = _typed_list(cfg, Key.CIPHERTEXT_LIST, bytes)
    if len(dsts) != len(ctxts):
        raise InvalidReply(
            f"expected one ciphertext per destination, found {len(ctxts)} ciphertexts "
            f"for {len(dsts)} destinations"
        )
    if len(set(dsts)) != len(dsts) or set(dsts) != expected_destinations:
        raise InvalidReply(
            f"expected key shares for its neighbours {sorted(expected_destinations)}, "
            f"found destinations {dsts}"
        )
    bad = [i for i, c in enumerate(ctxts) if not is_fernet_token(c)]  # type: ignore[arg-type]
    if bad:
        raise InvalidReply(
            f"expected Fernet ciphertexts, found {len(bad)} malformed (first for node "
            f"{dsts[bad[0]]}, {len(ctxts[bad[0]])} bytes)"  # type: ignore[arg-type]
        )


def _check_fitres(content: RecordDict, max_weight: float, quantization_range: int) -> int:
    """Check the legacy fit records that ride along with the masked vector; return num_examples."""
    for key, records in (
        (FITRES_PARAMETERS, content.array_records),
        (FITRES_NUM_EXAMPLES, content.metric_records),
        (FITRES_METRICS, content.config_records),
        (FITRES_STATUS, content.config_records),
    ):
        if key not in records:
            raise InvalidReply(f"expected legacy record {key!r}, found {sorted(content.keys())}")
    clear = {name: len(rec) for name, rec in content.array_records.items() if len(rec) > 0}
    if clear:
        raise InvalidReply(
            f"reply carries clear arrays {clear}; a SecAgg+ reply must carry only masked "
            "vectors (the site must run secagg_mod)"
        )
    status = content.config_records[FITRES_STATUS]
    code = status.get("code")
    if type(code) is not int or code != 0:
        raise InvalidReply(f"site reported fit status code {code!r} ({status.get('message')!r})")
    for name, value in content.config_records[FITRES_METRICS].items():
        if not isinstance(value, (bool, bytes, float, int, str)):
            raise InvalidReply(
                f"expected scalar fit metrics, found {name!r} of type {type(value).__name__}"
            )
    n = content.metric_records[FITRES_NUM_EXAMPLES].get("num_examples")
    if type(n) is not int or n <= 0:
        raise InvalidReply(f"expected num_examples as a positive int, found {n!r}")
    if n > max_weight:
        raise InvalidReply(
            f"num_examples {n} exceeds max_weight {max_weight:g}: its weighted values would be "
            "clipped and the weight sum may overflow. Raise privacy.secagg.max_weight to at "
            "least the largest site's num_examples"
        )
    if round(n / max_weight * quantization_range) < 1:
        raise InvalidReply(
            f"num_examples {n} quantizes to weight 0 (num_examples / max_weight * "
            f"quantization_range < 0.5 with max_weight {max_weight:g}); lower max_weight"
        )
    return n


def check_masked_reply(
    content: RecordDict,
    shapes: Sequence[tuple[int, ...]],
    mod_range: int,
    max_weight: float,
    quantization_range: int,
) -> int:
    """Check a collect-masked-vectors reply; return the site's (clear) num_examples.

    The masked vector must be one ``.npy`` int64 array per expected shape (the
    weight factor ``(1,)`` first, then one per model array), every value in
    ``[0, mod_range)``; the legacy fit records must be present, scalar and OK. Each
    array's ``.npy`` header is checked (dtype, shape, data length) before anything is
    allocated (:func:`fedcore.npy.read_npy`).

    Raises:
        InvalidReply: naming the array or record that is wrong, and how.
    """
    cfg = _configs(content)
    blobs = _typed_list(cfg, Key.MASKED_PARAMETERS, bytes)
    if len(blobs) != len(shapes):
        raise InvalidReply(
            f"expected {len(shapes)} masked arrays (weight factor + {len(shapes) - 1} model "
            f"arrays), found {len(blobs)}"
        )
    for i, (blob, shape) in enumerate(zip(blobs, shapes, strict=True)):
        try:
            arr = read_npy(blob, f"masked array {i}", dtypes=[np.dtype("<i8")], shape=tuple(shape))
        except ValueError as exc:  # truncated, oversized or garbage .npy bytes
            raise InvalidReply(str(exc)) from None
        if arr.size and (int(arr.min()) < 0 or int(arr.max()) >= mod_range):
            raise InvalidReply(
                f"masked array {i}: expected values in [0, {mod_range}), found "
                f"[{int(arr.min())}, {int(arr.max())}]"
            )
    return _check_fitres(content, max_weight, quantization_range)


def check_unmask_reply(
    content: RecordDict, expected_owners: set[int], num_shares: int
) -> dict[int, bytes]:
    """Check an unmask reply: one well-formed key share per node it was asked about.

    Args:
        content: The reply's content.
        expected_owners: The live and dropped neighbours it was asked about.
        num_shares: Shares each secret was split into (a share's index is in ``1..num_shares``).

    Returns:
        Owner node id -> the share.

    Raises:
        InvalidReply: saying which owner or share is wrong.
    """
    cfg = _configs(content)
    nids = _typed_list(cfg, Key.NODE_ID_LIST, int)
    shares = _typed_list(cfg, Key.SHARE_LIST, bytes)
    if len(nids) != len(shares):
        raise InvalidReply(f"expected one share per node id, found {len(shares)} for {len(nids)}")
    if len(set(nids)) != len(nids) or set(nids) != expected_owners:
        raise InvalidReply(
            f"expected shares for nodes {sorted(expected_owners)}, found node ids {nids}"
        )
    out: dict[int, bytes] = {}
    for owner, share in zip(nids, shares, strict=True):
        assert isinstance(owner, int) and isinstance(share, bytes)
        index = int.from_bytes(share[:4], "little")
        if len(share) < 20 or (len(share) - 4) % 16 or not 1 <= index <= num_shares:
            raise InvalidReply(
                f"share for node {owner} is malformed ({len(share)} bytes, index {index}); "
                f"expected 4 index bytes + 16-byte chunks and index in 1..{num_shares}"
            )
        out[owner] = share
    return out


def _combine(shares: Sequence[bytes]) -> bytes | None:
    try:
        return combine_shares(list(shares))
    except Exception:  # noqa: BLE001 - inconsistent shares fail in many ways
        return None


def consistent_holders(
    shares: Mapping[int, bytes],
    threshold: int,
    accept: Callable[[bytes], bool],
    *,
    strong: bool,
) -> set[int] | None:
    """Find which holders' Shamir shares lie on the one polynomial that hides the secret.

    ``threshold`` shares determine the polynomial; a share ``j`` lies on the
    polynomial through subset ``B`` iff combining ``B`` less its first share plus
    ``j`` yields the same secret. With all shares good this costs
    ``len(shares) - threshold + 1`` combinations.

    Args:
        shares: Holder node id -> its share of one owner's secret.
        threshold: Shares needed to rebuild the secret.
        accept: Whether a rebuilt secret is plausible (e.g. matches a public key).
        strong: ``accept`` only passes the true secret (so a subset it accepts needs
            no further support); otherwise the polynomial must be supported by more
            than ``threshold`` shares to be believed.

    Returns:
        The holders whose shares are consistent, or ``None`` when no believable
        polynomial exists (the faulty shares cannot be told apart).
    """
    holders = sorted(shares)
    if len(holders) < threshold:
        return None
    for subset in itertools.islice(itertools.combinations(holders, threshold), _MAX_SUBSETS):
        secret = _combine([shares[h] for h in subset])
        if secret is None or not accept(secret):
            continue
        rest = [shares[h] for h in subset[1:]]
        on = set(subset) | {
            j for j in holders if j not in subset and _combine([*rest, shares[j]]) == secret
        }
        if len(on) == len(holders) or strong or len(on) > threshold:
            return on
    return None


def _seed_like(secret: bytes) -> bool:
    return len(secret) == SEED_BYTES


def _private_key_for(public_pem: bytes) -> Callable[[bytes], bool]:
    def accept(secret: bytes) -> bool:
        try:
            return public_key_to_bytes(bytes_to_private_key(secret).public_key()) == public_pem
        except Exception:  # noqa: BLE001 - a wrong secret is not a key
            return False

    return accept


def faulty_share_holders(
    shares_by_owner: Mapping[int, Mapping[int, bytes]],
    dead: set[int],
    public_keys: Mapping[int, bytes],
    threshold: int,
) -> dict[int, str]:
    """Holders whose key shares disagree with the others', with the reason.

    A dropped owner's secret is its first private key, checked against the public
    key it published; a live owner's secret is its 32-byte mask seed, checked by
    agreement of more than ``threshold`` shares.

    Raises:
        SecAggError: when shares of one owner disagree and the faulty ones cannot be
            identified (rebuilding from them would corrupt the aggregate).
    """
    bad: dict[int, str] = {}
    for owner, by_holder in sorted(shares_by_owner.items()):
        if len(by_holder) < threshold:
            continue  # the workflow stops for want of shares; nothing to verify
        is_dead = owner in dead
        accept = _private_key_for(public_keys[owner]) if is_dead else _seed_like
        good = consistent_holders(by_holder, threshold, accept, strong=is_dead)
        what = "private key" if is_dead else "mask seed"
        if good is None:
            raise SecAggError(
                f"the {len(by_holder)} shares of node {owner}'s {what} disagree and the faulty "
                f"ones cannot be identified (threshold {threshold}); stopping rather than "
                "building a corrupt aggregate. Check the sites' logs and the network path"
            )
        for holder in sorted(set(by_holder) - good):
            bad.setdefault(
                holder,
                f"its share of node {owner}'s {what} does not match the other holders' "
                "shares (tampered or corrupted)",
            )
    return bad


# --------------------------------------------------------------------------- the guarded grid


@dataclass
class Ledger:
    """What the guarded grid saw in one round: dropouts, bytes, seconds, site reports."""

    dropouts: dict[int, Dropout] = field(default_factory=dict)
    bytes_down: dict[int, int] = field(default_factory=dict)
    bytes_up: dict[int, int] = field(default_factory=dict)
    grid_seconds: dict[str, float] = field(default_factory=dict)
    accounting_seconds: dict[str, float] = field(default_factory=dict)
    site_seconds: dict[int, dict[str, float]] = field(default_factory=dict)
    public_keys: dict[int, bytes] = field(default_factory=dict)

    def drop(self, node_id: int, stage: str, reason: str) -> None:
        """Record (and log) that ``node_id`` dropped out; the first reason wins."""
        if node_id not in self.dropouts:
            log.warning("SecAgg+ %s: node %d dropped: %s", stage, node_id, reason)
            self.dropouts[node_id] = Dropout(node_id, stage, reason)


def _stage_of(msgs: Sequence[Message]) -> str:
    stages = set()
    for msg in msgs:
        cfg = msg.content.config_records.get(RECORD_KEY_CONFIGS)
        stages.add(str(cfg.get(Key.STAGE)) if cfg is not None else "?")
    if len(stages) != 1 or not stages <= set(STAGES):
        raise SecAggError(f"expected one SecAgg+ stage per batch of messages, found {stages}")
    return stages.pop()


@dataclass
class GuardedGrid(GridWrapper):
    """A ``Grid`` that checks every SecAgg+ reply before the workflow sees it.

    Flower's ``SecAggPlusWorkflow`` trusts what sites send: a missing key, a list
    of the wrong length or a truncated array makes it raise, and a masked vector
    of the wrong shape or a tampered key share silently corrupts the sum. This
    grid sits between the workflow and the real grid and drops a reply that fails
    its stage's check, as if the site had not answered; the workflow then treats
    the site as dropped out, which the protocol is built to survive, and the
    reason goes to :attr:`ledger`. Only ``send_and_receive`` carries protocol
    traffic (it is all the workflow calls).

    Args:
        inner: The real grid.
        allowed: The selected node ids; addressing any other node is a bug and raises.
        shapes: Expected masked-vector shapes (``(1,)`` first, then the model's).
        max_weight: The round's ``max_weight``.
        quantization_range: The round's ``quantization_range``.
        mod_range: The masking modulus.
        num_shares: Shares each secret is split into.
        threshold: Shares needed to rebuild a secret.
    """

    inner: Grid
    allowed: frozenset[int]
    shapes: list[tuple[int, ...]]
    max_weight: float
    quantization_range: int
    mod_range: int
    num_shares: int
    threshold: int
    ledger: Ledger = field(default_factory=Ledger)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:  # noqa: D102
        raise SecAggError("the SecAgg+ bridge only relays send_and_receive (unchecked push)")

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:  # noqa: D102
        raise SecAggError("the SecAgg+ bridge only relays send_and_receive (unchecked pull)")

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """Relay one stage's messages and return only the replies that pass its check."""
        msgs = list(messages)
        if not msgs:
            return []
        stage = _stage_of(msgs)
        stray = sorted({m.metadata.dst_node_id for m in msgs} - self.allowed)
        if stray:
            raise SecAggError(f"the workflow addressed unselected nodes {stray}")
        expected = {m.metadata.dst_node_id: self._expectation(stage, m) for m in msgs}

        t0 = time.perf_counter()
        replies = list(self.inner.send_and_receive(msgs, timeout=timeout))
        t1 = time.perf_counter()
        self._add(self.ledger.grid_seconds, stage, t1 - t0)
        for m in msgs:
            self._add(self.ledger.bytes_down, m.metadata.dst_node_id, message_nbytes(m))
        by_id = {m.metadata.message_id: m.metadata.dst_node_id for m in msgs}
        answered: dict[int, Message] = {}
        repeated: set[int] = set()
        for reply in replies:
            dst = by_id.get(reply.metadata.reply_to_message_id)
            if dst is None:
                log.warning("SecAgg+ %s: ignored a reply to an unknown message", stage)
                continue
            self._add(self.ledger.bytes_up, dst, message_nbytes(reply))
            if dst in answered or dst in repeated:
                repeated.add(dst)
                answered.pop(dst, None)
                self.ledger.drop(dst, stage, "sent more than one reply")
                continue
            answered[dst] = reply
        self._add(self.ledger.accounting_seconds, stage, time.perf_counter() - t1)

        accepted: list[Message] = []
        for dst in expected:
            if dst not in answered:
                if dst not in self.ledger.dropouts:
                    self.ledger.drop(dst, stage, f"no reply within {timeout}s")
                continue
            reply = answered[dst]
            if reply.has_error():
                self.ledger.drop(dst, stage, f"site reported an error: {reply.error.reason}")
                accepted.append(reply)  # the workflow counts it as a failure
                continue
            if reply.metadata.src_node_id != dst:
                self.ledger.drop(
                    dst, stage, f"reply came from node {reply.metadata.src_node_id}, not {dst}"
                )
                continue
            try:
                self._check(stage, dst, reply.content, expected[dst])
            except InvalidReply as exc:
                self.ledger.drop(dst, stage, f"rejected reply: {exc}")
                continue
            self._site_timing(dst, stage, reply.content)
            accepted.append(reply)
        if stage == Stage.SETUP:
            accepted = self._unique_keys(accepted)
        if stage == Stage.UNMASK:
            accepted = self._verify_shares(accepted, expected)
        return accepted

    # ------------------------------------------------------------------ per stage

    @staticmethod
    def _add(table: dict[Any, Any], key: int | str, value: float) -> None:
        table[key] = table.get(key, 0) + value

    @staticmethod
    def _expectation(stage: str, msg: Message) -> tuple[set[int], set[int]]:
        """(node ids a reply must cover, the dropped ones among them) for this message."""
        cfg = msg.content.config_records[RECORD_KEY_CONFIGS]
        me = msg.metadata.dst_node_id
        if stage == Stage.SHARE_KEYS:
            return {int(k) for k in cfg if k != Key.STAGE} - {me}, set()
        if stage == Stage.UNMASK:
            active = {int(x) for x in cfg[Key.ACTIVE_NODE_ID_LIST]}  # type: ignore[union-attr]
            dead = {int(x) for x in cfg[Key.DEAD_NODE_ID_LIST]}  # type: ignore[union-attr]
            return active | dead, dead
        return set(), set()

    def _check(
        self, stage: str, node: int, content: RecordDict, expected: tuple[set[int], set[int]]
    ) -> None:
        if stage == Stage.SETUP:
            self.ledger.public_keys[node] = check_setup_reply(content)[0]
        elif stage == Stage.SHARE_KEYS:
            check_share_keys_reply(content, expected[0])
        elif stage == Stage.COLLECT_MASKED_VECTORS:
            check_masked_reply(
                content, self.shapes, self.mod_range, self.max_weight, self.quantization_range
            )
        else:
            check_unmask_reply(content, expected[0], self.num_shares)

    def _site_timing(self, node: int, stage: str, content: RecordDict) -> None:
        rec = content.metric_records.get(SITE_TIMING)
        value = rec.get("seconds") if rec is not None else None
        if type(value) in (int, float) and 0 <= float(value) < 1e7:  # type: ignore[arg-type]
            self.ledger.site_seconds.setdefault(node, {})[stage] = float(value)  # type: ignore[arg-type]
        elif value is not None:
            log.warning("SecAgg+ %s: node %d reported seconds %r; ignored", stage, node, value)

    def _unique_keys(self, accepted: list[Message]) -> list[Message]:
        """Drop every site whose public key another site also sent (a copied key breaks its neighbours)."""
        owners: dict[bytes, list[int]] = {}
        for msg in accepted:
            if not msg.has_error():
                cfg = msg.content.config_records[RECORD_KEY_CONFIGS]
                for key in (cfg[Key.PUBLIC_KEY_1], cfg[Key.PUBLIC_KEY_2]):
                    owners.setdefault(key, []).append(msg.metadata.src_node_id)  # type: ignore[arg-type]
        clash = {n for nodes in owners.values() if len(nodes) > 1 for n in nodes}
        for node in sorted(clash):
            self.ledger.drop(
                node, Stage.SETUP, "rejected reply: its public key duplicates another site's"
            )
        return [m for m in accepted if m.has_error() or m.metadata.src_node_id not in clash]

    def _verify_shares(
        self, accepted: list[Message], expected: Mapping[int, tuple[set[int], set[int]]]
    ) -> list[Message]:
        shares_by_owner: dict[int, dict[int, bytes]] = {}
        dead: set[int] = set()
        for msg in accepted:
            if msg.has_error():
                continue
            holder = msg.metadata.src_node_id
            dead |= expected[holder][1]
            cfg = msg.content.config_records[RECORD_KEY_CONFIGS]
            owners = cast(list[int], cfg[Key.NODE_ID_LIST])
            shares = cast(list[bytes], cfg[Key.SHARE_LIST])
            for owner, share in zip(owners, shares, strict=True):
                shares_by_owner.setdefault(owner, {})[holder] = share
        missing = sorted(o for o in dead if o not in self.ledger.public_keys)
        if missing:
            raise SecAggError(f"no public key recorded for dropped nodes {missing}")
        bad = faulty_share_holders(shares_by_owner, dead, self.ledger.public_keys, self.threshold)
        for holder, reason in bad.items():
            self.ledger.drop(holder, Stage.UNMASK, f"rejected reply: {reason}")
        return [m for m in accepted if m.has_error() or m.metadata.src_node_id not in bad]
