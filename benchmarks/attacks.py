"""Hostile sites: poisoned model updates and poisoned labels, sent by real sites of an in-process consortium.

The attacks, each a pure function on numpy arrays (a site's update is ``local - global``,
every float array of the model; integer arrays such as counters pass unchanged):

* **Scaled update** (model replacement / boosting; Bagdasaryan et al., "How To Backdoor
  Federated Learning", AISTATS 2020; Bhagoji et al., "Analyzing Federated Learning through
  an Adversarial Lens", ICML 2019): ``global + k (local - global)``, ``k`` = 10 or 100.
* **Sign flip** (Li et al., "RSA: Byzantine-Robust Stochastic Aggregation Methods",
  AAAI 2019; Karimireddy et al., "Learning from History for Byzantine Robust
  Optimization", ICML 2021): ``global - k (local - global)``, ``k`` = 1 unless stated.
* **Gaussian noise** (Blanchard et al., "Machine Learning with Adversaries: Byzantine
  Tolerant Gradient Descent" (Krum), NeurIPS 2017): the update is replaced by
  ``N(0, sigma^2)`` per coordinate, ``sigma`` stated with the attack.
* **Label flipping** (Tolpegin et al., "Data Poisoning Attacks Against Federated Learning
  Systems", ESORICS 2020; Fang et al., "Local Model Poisoning Attacks to Byzantine-Robust
  Federated Learning", USENIX Security 2020): the hostile site trains on its own data with
  every training label flipped (fraud <-> legitimate); its held-out test rows keep their
  true labels, so every evaluation stays honest. Done on the data before the run
  (:func:`poison_site_labels`), not on the update.
* **A little is enough** (ALIE; Baruch, Baruch and Goldberg, "A Little Is Enough:
  Circumventing Defenses For Distributed Learning", NeurIPS 2019): every hostile site sends
  ``mean - z_max * std`` per coordinate, where ``s = floor(n / 2 + 1) - f`` and ``z_max`` is
  the largest ``z`` with ``Phi(z) < (n - s) / n`` (``Phi`` the standard normal CDF), ``n``
  the sites in the round and ``f`` the hostile ones (:func:`alie_z_max`). How the attackers
  know ``mean`` and ``std``: they are **omniscient**, the usual evaluation setting (Baruch
  et al. estimate them from the corrupted workers' honest gradients and report that the
  attack works as well as when they are known): ``mean`` and ``std`` (population, ``ddof=0``)
  are taken per coordinate over the honest updates of every site that trained in the round,
  the hostile sites' own honest updates (which they really compute) included. The
  in-process engine lets a hostile site see them because :class:`HostileSites` sees the
  whole batch of a round's replies before any of them leaves a site; with colluding
  attackers that pool only their own honest updates the attack is weaker, so the
  omniscient one is the harder test for a defence.

The harness, :class:`HostileSites`, is a reply hook for the in-process engine
(``fedcore.engines.inprocess.ReplyHook``, ``run_scenario(..., reply_hook=...)``): the
hostile sites are real sites that run the real ClientApp on their real data; the hook then
replaces the local model in their train replies with the attack's and signs the reply
again with the site's own node key (from the kit its node config names, as the site
itself signs). The coordinator checks every signature as usual: a hostile bank holds its
own key, so its replies verify; nothing here bypasses a check. Only clear updates can be
rewritten: run the attacks in ``privacy.mode: plaintext``.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from statistics import NormalDist
from typing import Any

import numpy as np
from flwr.app import Message

Arrays = dict[str, np.ndarray]

# --------------------------------------------------------------------------- pure maths


def _floats(arrays: Mapping[str, np.ndarray]) -> list[str]:
    """Names of the float arrays, in order (the ones an attack changes)."""
    return [k for k, v in arrays.items() if np.issubdtype(np.asarray(v).dtype, np.floating)]


def update_of(global_: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray]) -> Arrays:
    """``local - global`` for every float array (the site's update).

    Raises:
        ValueError: the two models do not have the same float arrays and shapes.
    """
    names = _floats(global_)
    if names != _floats(local) or any(global_[k].shape != local[k].shape for k in names):
        raise ValueError(
            "the local model must have the global model's float arrays and shapes; expected "
            f"{[(k, global_[k].shape) for k in names]}, found "
            f"{[(k, np.shape(local[k])) for k in _floats(local)]}"
        )
    return {k: np.asarray(local[k]) - np.asarray(global_[k]) for k in names}


def apply_update(global_: Mapping[str, np.ndarray], update: Mapping[str, np.ndarray]) -> Arrays:
    """``global + update`` for the float arrays (cast back to each array's dtype); others copied."""
    out: Arrays = {}
    for k, v in global_.items():
        v = np.asarray(v)
        out[k] = (v + update[k]).astype(v.dtype) if k in update else v.copy()
    return out


def flatten(update: Mapping[str, np.ndarray]) -> np.ndarray:
    """One float64 vector of every array of ``update``, in order."""
    if not update:
        return np.zeros(0)
    return np.concatenate([np.asarray(v, dtype=np.float64).ravel() for v in update.values()])


def unflatten(vector: np.ndarray, like: Mapping[str, np.ndarray]) -> Arrays:
    """The arrays of ``like`` (names and shapes) filled from ``vector`` in order.

    Raises:
        ValueError: ``vector`` has another length than ``like`` holds values.
    """
    total = sum(int(np.asarray(v).size) for v in like.values())
    if vector.shape != (total,):
        raise ValueError(f"expected a vector of {total} values, found shape {vector.shape}")
    out: Arrays = {}
    at = 0
    for k, v in like.items():
        v = np.asarray(v)
        out[k] = vector[at : at + v.size].reshape(v.shape)
        at += v.size
    return out


def scaled_update(
    global_: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray], k: float
) -> Arrays:
    """The model a boosting attacker sends: ``global + k (local - global)``.

    Bagdasaryan et al., AISTATS 2020 (model replacement); ``k = 1`` sends ``local``.
    """
    upd = update_of(global_, local)
    return apply_update(global_, {n: k * u for n, u in upd.items()})


def sign_flipped(
    global_: Mapping[str, np.ndarray], local: Mapping[str, np.ndarray], k: float = 1.0
) -> Arrays:
    """The model a sign-flipping attacker sends: ``global - k (local - global)``.

    Li et al., AAAI 2019 (RSA); ``k`` scales the reversed update (1: as large as the honest one).
    """
    return scaled_update(global_, local, -k)


def gaussian_model(
    global_: Mapping[str, np.ndarray], sigma: float, rng: np.random.Generator
) -> Arrays:
    """The model of an attacker whose update is pure noise: ``global + N(0, sigma^2)`` per value.

    Blanchard et al., NeurIPS 2017 (the Gaussian Byzantine worker).

    Raises:
        ValueError: ``sigma`` is negative.
    """
    if sigma < 0:
        raise ValueError(f"sigma must be >= 0, got {sigma}")
    noise = {k: rng.normal(0.0, sigma, size=np.shape(global_[k])) for k in _floats(global_)}
    return apply_update(global_, noise)


def alie_z_max(n: int, f: int) -> float:
    """``z_max`` of "A little is enough" (Baruch et al., NeurIPS 2019, Sec. 4).

    ``s = floor(n / 2 + 1) - f`` honest sites must be "convinced"; ``z_max`` is the ``z``
    with ``Phi(z) = (n - s) / n`` (the supremum of the paper's ``Phi(z) < (n - s) / n``).
    E.g. ``n = 5, f = 1``: ``s = 2``, ``Phi(z) = 0.6``, ``z = 0.2533``; ``n = 50, f = 12``:
    ``s = 14``, ``Phi(z) = 0.72``, ``z = 0.5828``.

    Raises:
        ValueError: ``n < 2``, or ``f`` not in ``1 .. n - 1``.
    """
    if n < 2 or not 1 <= f < n:
        raise ValueError(f"need n >= 2 sites and 1 <= f < n hostile ones, got n={n}, f={f}")
    s = math.floor(n / 2 + 1) - f
    p = (n - s) / n
    if p >= 1.0:  # so many attackers that no honest site needs convincing: any z works
        p = 1.0 - 1e-9
    if p <= 0.0:
        p = 1e-9
    return NormalDist().inv_cdf(p)


def alie_update(honest: np.ndarray, z: float) -> np.ndarray:
    """``mean - z * std`` per coordinate of the honest updates (rows of ``honest``, ``ddof=0``).

    Baruch et al., NeurIPS 2019, Algorithm 3 (the direction opposite to the mean's sign is
    the paper's other choice; this one shifts every coordinate down by ``z`` std).

    Raises:
        ValueError: ``honest`` is not a 2-D array with at least one row.
    """
    if honest.ndim != 2 or honest.shape[0] < 1:
        raise ValueError(f"honest updates must be rows of a 2-D array, found shape {honest.shape}")
    return np.asarray(honest.mean(axis=0) - z * honest.std(axis=0))


def flip_training_labels(label: np.ndarray, test: np.ndarray) -> np.ndarray:
    """Labels with every training row flipped (``1 - y``) and the test rows (``test`` true) kept.

    Tolpegin et al., ESORICS 2020 (label flipping; with two classes every label flips).
    """
    if label.shape != test.shape:
        raise ValueError(f"label and test mask must match, found {label.shape} vs {test.shape}")
    return np.where(test, label, 1 - label).astype(label.dtype)


# --------------------------------------------------------------------------- attacks by name


@dataclass(frozen=True)
class Attack:
    """One attack and its parameters.

    Attributes:
        kind: ``scaled``, ``sign-flip``, ``gaussian``, ``label-flip``, ``alie`` or ``none``.
        factor: ``scaled`` and ``sign-flip``: the ``k`` of the update.
        sigma: ``gaussian``: the noise's standard deviation per value.
    """

    kind: str
    factor: float = 1.0
    sigma: float = 0.0

    @property
    def on_updates(self) -> bool:
        """Whether the attack rewrites train replies (label flipping works on the data)."""
        return self.kind in ("scaled", "sign-flip", "gaussian", "alie")


ATTACKS: dict[str, Attack] = {
    "none": Attack("none"),
    "scaled-x10": Attack("scaled", factor=10.0),
    "scaled-x100": Attack("scaled", factor=100.0),
    "sign-flip": Attack("sign-flip", factor=1.0),
    # the bank-fraud model has 5,025 values and an honest update's L2 norm is about 1.7 in
    # round 1: sigma 0.1 gives noise of norm about 0.1 x sqrt(5025) = 7.1, some 4x an honest one
    "gaussian": Attack("gaussian", sigma=0.1),
    "label-flip": Attack("label-flip"),
    "alie": Attack("alie"),
}
"""The attacks by name, with the parameters the benchmark uses."""


def attack_named(name: str) -> Attack:
    """The attack called ``name`` (``ValueError`` listing the valid names otherwise)."""
    if name not in ATTACKS:
        raise ValueError(f"unknown attack {name!r}; valid: {', '.join(ATTACKS)}")
    return ATTACKS[name]


# --------------------------------------------------------------------------- the harness


def _seed_for(seed: int, site_id: str, round_: int) -> int:
    digest = hashlib.sha256(f"{seed}:{site_id}:{round_}:attack".encode()).digest()
    return int.from_bytes(digest[:8], "big")


@dataclass
class HostileSites:
    """A reply hook that makes ``hostile`` sites send ``attack``'s model, re-signed with their key.

    Call it with a batch of ``fedcore.engines.inprocess.Delivery``; returns the replies that
    leave (honest ones untouched). Only train replies with a clear model are rewritten.

    Attributes:
        hostile: Ids of the hostile sites.
        attack: The attack (one on updates; ``label-flip`` and ``none`` rewrite nothing).
        seed: Seeds the Gaussian attack's noise (per site and round).
        log: One entry per rewritten reply: round, site, attack, the honest update's and
            the sent update's L2 norms.
    """

    hostile: frozenset[str]
    attack: Attack
    seed: int = 0
    log: list[dict[str, Any]] = field(default_factory=list)

    def __call__(self, batch: Sequence[Any]) -> list[Message]:
        from fedcore import records as R

        replies: list[Message] = [d.reply for d in batch]
        if not self.attack.on_updates:
            return replies
        trains = [
            i
            for i, d in enumerate(batch)
            if d.instruction.metadata.message_type == R.TRAIN and not d.reply.has_error()
        ]
        if not any(batch[i].site_id in self.hostile for i in trains):
            return replies
        parsed = {i: self._parse(batch[i]) for i in trains}
        honest = {i: update_of(g, r.arrays) for i, (g, _, r) in parsed.items()}
        z = 0.0
        mean_std: np.ndarray | None = None
        if self.attack.kind == "alie":
            f = sum(1 for i in trains if batch[i].site_id in self.hostile)
            z = alie_z_max(len(trains), f) if len(trains) >= 2 and f < len(trains) else 0.0
            mean_std = alie_update(np.stack([flatten(honest[i]) for i in trains]), z)
        for i in trains:
            d = batch[i]
            if d.site_id not in self.hostile:
                continue
            global_, cfg, reply = parsed[i]
            sent = self._attacked(global_, reply.arrays, d.site_id, cfg.round, mean_std)
            replies[i] = self._reply(d, cfg, reply, sent)
            self.log.append(
                {
                    "round": cfg.round,
                    "site": d.site_id,
                    "attack": self.attack.kind,
                    "honest_norm": float(np.linalg.norm(flatten(honest[i]))),
                    "sent_norm": float(np.linalg.norm(flatten(update_of(global_, sent)))),
                    **({"z_max": z} if self.attack.kind == "alie" else {}),
                }
            )
        return replies

    def _parse(self, d: Any) -> tuple[Arrays, Any, Any]:
        from fedcore import records as R

        global_, cfg = R.read_instruction(d.instruction.content)
        if global_ is None or cfg is None:
            raise ValueError(
                f"site {d.site_id}: the train instruction carries no clear model (privacy mode "
                "ckks or secagg+?); the attacks rewrite clear updates: use privacy.mode plaintext"
            )
        reply = R.TrainReply.from_content(d.reply.content)
        if reply.encrypted is not None:
            raise ValueError(
                f"site {d.site_id}: its train reply is encrypted; use privacy.mode plaintext"
            )
        return global_, cfg, reply

    def _attacked(
        self,
        global_: Arrays,
        local: Arrays,
        site_id: str,
        round_: int,
        mean_std: np.ndarray | None,
    ) -> Arrays:
        a = self.attack
        if a.kind == "scaled":
            return scaled_update(global_, local, a.factor)
        if a.kind == "sign-flip":
            return sign_flipped(global_, local, a.factor)
        if a.kind == "gaussian":
            rng = np.random.default_rng(_seed_for(self.seed, site_id, round_))
            return gaussian_model(global_, a.sigma, rng)
        if a.kind == "alie":
            assert mean_std is not None
            return apply_update(global_, unflatten(mean_std, update_of(global_, local)))
        raise ValueError(f"attack {a.kind!r} does not rewrite updates")

    @staticmethod
    def _reply(d: Any, cfg: Any, reply: Any, arrays: Arrays) -> Message:
        """The site's reply with ``arrays`` as its model, signed again with the site's own key."""
        from fedcore import records as R

        content = d.reply.content
        sent = dataclasses.replace(reply, arrays=arrays)
        content[R.ARRAYS] = R.arrays_to_record(arrays)
        kit_path = str(d.context.node_config.get("kit", "") or "")
        if kit_path:  # a site without a kit signs nothing, and neither does its hostile self
            from secure.kit import load_kit, sign

            kit = load_kit(Path(kit_path), role="site")
            payload = R.signing_payload(
                R.TRAIN, reply.site_id, cfg.round, cfg.run_key, sent.digest()
            )
            R.attach_signature(content, sign(kit, payload))
        return Message(content, reply_to=d.instruction)


# --------------------------------------------------------------------------- label flipping


def poison_site_labels(
    scenario_path: Path, site_ids: Iterable[str], out_dir: Path
) -> dict[str, dict[str, Any]]:
    """Write the data of ``site_ids`` as CSVs whose training labels are flipped.

    Each site's transactions are loaded as the site loads them (generated from its spec and
    seed, or its CSV), the training rows (all but the latest ``task.test_fraction``, as
    :func:`fedcore.data.graph.time_split` holds them out) get ``1 - label``, and the test
    rows keep theirs.

    Returns:
        Per site, the ``data`` section that points the site at its poisoned CSV.
    """
    from fedcore.config import SiteConfig, load_scenario
    from fedcore.data.csv_loader import write_transactions_csv
    from fedcore.data.graph import time_split
    from fedcore.data.sites import load_site_transactions

    scenario = load_scenario(scenario_path)
    out: dict[str, dict[str, Any]] = {}
    for site_id in site_ids:
        cfg = SiteConfig.from_scenario(scenario, site_id)
        tx = load_site_transactions(cfg, scenario.task).sorted_by_time()
        test = time_split(tx.timestamp.astype(np.float64), scenario.task.test_fraction)
        flipped = dataclasses.replace(tx, label=flip_training_labels(tx.label, test))
        path = (out_dir / f"{site_id}-flipped.csv").resolve()
        mapping = write_transactions_csv(flipped, path)
        out[site_id] = {
            "kind": "csv",
            "path": str(path),
            "columns": mapping.model_dump(mode="json"),
        }
    return out
