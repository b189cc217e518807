"""Oort-style guided participant selection: statistical x system utility, explore then exploit.

Lai et al., "Oort: Efficient Federated Learning via Guided Participant Selection", OSDI 2021.
"""

from __future__ import annotations

import hashlib
import logging
import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from scheduling.base import Candidate, Selection, Selector, SiteResult, by_site_id
from scheduling.random_selector import sample_size

log = logging.getLogger(__name__)

_STATE_VERSION = 1

LOSS_KEY = "last_train_loss"
"""Readings key: the site's mean training loss in its last round (when nothing was observed)."""

DURATION_KEY = "last_round_seconds"
"""Readings key: the measured duration of the site's last round, in seconds."""

SPEED_KEY = "relative_throughput"
"""Readings key: device speed relative to an A100 (1.0); orders the sites not explored yet."""


def statistical_utility(num_examples: int, loss: float) -> float:
    """Oort's statistical utility ``|B| * sqrt(mean over B of loss^2)``, from a mean loss.

    With only the site's mean training loss ``L`` of the round, ``sqrt(mean(loss^2))`` is
    taken as ``L`` (exact when every example has the same loss, a lower bound otherwise),
    so ``U = num_examples * L``.

    Args:
        num_examples: ``|B|``, the examples the site trains on (>= 0).
        loss: Its mean training loss (finite, >= 0).

    >>> statistical_utility(200, 0.5)
    100.0
    """
    if num_examples < 0:
        raise ValueError(f"num_examples must be >= 0; found {num_examples!r}")
    if not (math.isfinite(loss) and loss >= 0.0):
        raise ValueError(f"loss must be a finite number >= 0; found {loss!r}")
    return float(num_examples) * loss


def system_penalty(duration_s: float | None, preferred_s: float, alpha: float) -> float:
    """Oort's system utility factor ``(T / t) ** alpha`` when ``t > T``, else 1.

    Args:
        duration_s: ``t``, the site's last round duration; ``None`` (unknown) means no penalty.
        preferred_s: ``T``, the preferred round duration (``inf``: no penalty at all).
        alpha: The penalty exponent (Oort's default 2).

    >>> system_penalty(120.0, 60.0, 2.0), system_penalty(50.0, 60.0, 2.0)
    (0.25, 1.0)
    """
    if duration_s is None or duration_s <= preferred_s:
        return 1.0
    return float((preferred_s / duration_s) ** alpha)


def staleness_bonus(round_: int, last_round: int, weight: float = 0.1) -> float:
    """Oort's temporal-uncertainty bonus ``sqrt(weight * ln(R) / L)``.

    Args:
        round_: ``R``, the round being selected (no bonus in rounds 0 and 1, where ``ln R <= 0``).
        last_round: ``L``, the round the site last trained in (taken as at least 1).
        weight: The factor under the root (0.1 in the paper).

    >>> round(staleness_bonus(10, 2), 4)  # sqrt(0.1 * 2.302585 / 2)
    0.3393
    """
    if round_ <= 1:
        return 0.0
    return math.sqrt(weight * math.log(round_) / max(last_round, 1))


def exploration_rate(round_: int, initial: float, decay: float, minimum: float) -> float:
    """Share of the slots kept for untried sites in round ``round_``.

    ``max(minimum, initial * decay ** (round_ - 1))``: ``initial`` in round 1, decaying by
    ``decay`` each round down to ``minimum``.

    >>> round(exploration_rate(3, 0.9, 0.98, 0.2), 6)  # 0.9 * 0.98^2
    0.86436
    """
    return max(minimum, initial * decay ** max(round_ - 1, 0))


def preferred_duration(durations: Sequence[float], quantile: float) -> float:
    """The preferred round duration ``T``: the ``quantile`` of the known durations.

    Nearest rank from below, as Oort's reference implementation: the sorted durations'
    element ``min(floor(n * quantile), n - 1)``; ``inf`` (no penalty) when none is known.

    >>> preferred_duration([40.0, 10.0, 30.0, 20.0], 0.3)  # sorted[floor(1.2)] = sorted[1]
    20.0
    """
    if not durations:
        return math.inf
    ordered = sorted(durations)
    return ordered[min(int(len(ordered) * quantile), len(ordered) - 1)]


def sample_proportional(weights: Sequence[float], k: int, rng: np.random.Generator) -> list[int]:
    """Draw ``k`` distinct indices, each draw in proportion to the weights of those left.

    Efraimidis-Spirakis keys ``ln(u) / w`` (``u`` uniform): the ``k`` largest keys are a
    sample without replacement with the same law as ``k`` successive weighted draws. Zero
    weights come last, lower indices first. One uniform is drawn per weight, so the result
    depends only on the generator's state, the weights and ``k``.

    Args:
        weights: Non-negative finite weights.
        k: How many indices, ``0 <= k <= len(weights)``.
        rng: The generator to draw from.

    Returns:
        The chosen indices, in the order drawn.
    """
    if not 0 <= k <= len(weights):
        raise ValueError(f"k must be in [0, {len(weights)}] (the number of weights); found {k!r}")
    bad = [w for w in weights if not (math.isfinite(w) and w >= 0.0)]
    if bad:
        raise ValueError(f"weights must be finite and >= 0; found {bad!r}")
    uniforms = rng.random(len(weights))
    keys = [
        math.log(max(float(u), 1e-300)) / w if w > 0.0 else -math.inf
        for u, w in zip(uniforms, weights, strict=True)
    ]
    return sorted(range(len(weights)), key=lambda i: -keys[i])[:k]


@dataclass
class _SiteState:
    last_round: int
    loss: float
    duration_s: float | None
    rounds_trained: int


@dataclass(frozen=True)
class _View:
    """What the selector knows about one candidate this round (state first, readings next)."""

    loss: float | None
    duration_s: float | None
    last_round: int
    rounds_trained: int
    speed: float | None


def _reading(readings: Mapping[str, float], key: str, *, positive: bool) -> float | None:
    value = readings.get(key)
    if value is None or not math.isfinite(value):
        return None
    value = float(value)
    ok = value > 0.0 if positive else value >= 0.0
    return value if ok else None


class OortSelector(Selector):
    """Oort's guided selection: explore untried sites, exploit those of highest utility.

    Each explored site (one whose training loss is known) has the utility

        ``util = (U / max U + sqrt(w * ln R / L)) * ((T / t) ** alpha if t > T else 1)``

    with ``U = num_train_examples * loss`` (:func:`statistical_utility`), ``R`` the round,
    ``L`` the round the site last trained in, ``t`` its last round duration and ``T`` the
    preferred duration. ``U`` is divided by the largest ``U`` among the candidates (Oort's
    reference implementation normalizes it likewise) so that the staleness bonus, on a
    scale of 0.1-0.5, weighs against it at all.

    Of the ``k`` slots, ``k_x = floor(k * (1 - epsilon))`` are for exploitation: drawn,
    in proportion to utility, among the explored sites whose utility is at least
    ``cut_off`` times that of the ``k_x``-th best. The other slots go to sites not explored
    yet, fastest first (``relative_throughput``, then a known ``last_round_seconds``, then
    site id). Slots that one group cannot fill go to the other; sites over
    ``blacklist_rounds`` come last of all.

    A site's loss, duration and last round come from :meth:`observe` (the round driver
    calls it after each round); the readings ``last_train_loss`` and ``last_round_seconds``
    stand in where nothing was observed (a site with no known last round counts as last
    trained in round 1). :meth:`select` only reads this state, so calling it twice for a
    round gives the same choice; the draw of round r depends only on (seed, r, the
    candidates and the state), not on the candidates' order or node ids.

    ``Selection.scores`` holds the utility of every explored candidate scaled so that the
    best is 100; sites not explored yet have no score.

    Args:
        fraction: Share of candidates to choose, in (0, 1].
        min_sites: Fewest sites to choose (when that many answered).
        seed: Seed of the per-round draws.
        preferred_duration_s: ``T`` in seconds; default ``None``: the ``duration_quantile``
            of the candidates' known durations, each round (:func:`preferred_duration`).
        alpha: Penalty exponent for sites slower than ``T`` (default 2.0, as in the paper).
        exploration: ``epsilon`` in round 1 (default 0.9, as in the paper).
        exploration_decay: Factor applied to ``epsilon`` each round (default 0.98).
        min_exploration: Floor of ``epsilon`` (default 0.2).
        cut_off: ``c``: explored sites within this fraction of the k-th best utility may be
            drawn (default 0.95, as in the paper).
        staleness_weight: ``w`` in the staleness bonus (default 0.1, as in the paper).
        duration_quantile: Quantile of the known durations taken as ``T`` when
            ``preferred_duration_s`` is ``None`` (default 0.3, Oort's reference setting).
        blacklist_rounds: Sites that trained in more rounds than this are left out, so that
            others get a turn (default ``None``: never).
        blacklist_max_fraction: At most this share of the candidates is left out that way,
            the most-trained first (default 0.3).
    """

    name = "oort"

    def __init__(
        self,
        fraction: float = 1.0,
        min_sites: int = 1,
        seed: int = 0,
        preferred_duration_s: float | None = None,
        alpha: float = 2.0,
        exploration: float = 0.9,
        exploration_decay: float = 0.98,
        min_exploration: float = 0.2,
        cut_off: float = 0.95,
        staleness_weight: float = 0.1,
        duration_quantile: float = 0.3,
        blacklist_rounds: int | None = None,
        blacklist_max_fraction: float = 0.3,
    ) -> None:
        def check(ok: bool, what: str, value: object) -> None:
            if not ok:
                raise ValueError(f"oort: {what}; found {value!r}")

        def finite(x: float) -> bool:
            return math.isfinite(x)

        check(finite(fraction) and 0.0 < fraction <= 1.0, "fraction must be in (0, 1]", fraction)
        check(min_sites >= 1, "min_sites must be >= 1", min_sites)
        check(
            preferred_duration_s is None
            or (finite(preferred_duration_s) and preferred_duration_s > 0.0),
            "preferred_duration_s must be a number of seconds > 0, or None to use a quantile "
            "of the known durations",
            preferred_duration_s,
        )
        check(finite(alpha) and alpha >= 0.0, "alpha must be a finite number >= 0", alpha)
        check(
            finite(exploration) and 0.0 <= exploration <= 1.0,
            "exploration must be in [0, 1]",
            exploration,
        )
        check(
            finite(exploration_decay) and 0.0 < exploration_decay <= 1.0,
            "exploration_decay must be in (0, 1]",
            exploration_decay,
        )
        check(
            finite(min_exploration) and 0.0 <= min_exploration <= exploration,
            f"min_exploration must be in [0, exploration={exploration}]; lower it or raise "
            "exploration",
            min_exploration,
        )
        check(finite(cut_off) and 0.0 < cut_off <= 1.0, "cut_off must be in (0, 1]", cut_off)
        check(
            finite(staleness_weight) and staleness_weight >= 0.0,
            "staleness_weight must be a finite number >= 0",
            staleness_weight,
        )
        check(
            finite(duration_quantile) and 0.0 <= duration_quantile <= 1.0,
            "duration_quantile must be in [0, 1]",
            duration_quantile,
        )
        check(
            blacklist_rounds is None or blacklist_rounds >= 0,
            "blacklist_rounds must be >= 0, or None to never leave sites out",
            blacklist_rounds,
        )
        check(
            finite(blacklist_max_fraction) and 0.0 <= blacklist_max_fraction <= 1.0,
            "blacklist_max_fraction must be in [0, 1]",
            blacklist_max_fraction,
        )
        self.fraction = fraction
        self.min_sites = min_sites
        self.seed = seed
        self.preferred_duration_s = preferred_duration_s
        self.alpha = alpha
        self.exploration = exploration
        self.exploration_decay = exploration_decay
        self.min_exploration = min_exploration
        self.cut_off = cut_off
        self.staleness_weight = staleness_weight
        self.duration_quantile = duration_quantile
        self.blacklist_rounds = blacklist_rounds
        self.blacklist_max_fraction = blacklist_max_fraction
        self._sites: dict[str, _SiteState] = {}

    # -- feedback and checkpoints ------------------------------------------------------------

    def observe(self, round_: int, results: Mapping[str, SiteResult]) -> None:
        """Learn each site's loss and duration from how round ``round_`` went.

        A result counts when it has no ``failed`` reason and a finite loss >= 0 (see
        :meth:`observe_site`); its ``seconds`` update the duration when > 0. Other results,
        and values out of range, are logged and left out.
        """
        known = [v.loss for v in self._sites.values() if v.loss is not None]
        neutral = float(statistics.median(known)) if known else 1.0
        for site, r in sorted(results.items()):
            if r.failed is not None or r.loss is None:
                # selected but no update (dropout, timeout): explored all the same, as in
                # Oort, so it is not re-explored every round; its loss stays unknown, so it
                # gets the median of the others, and its duration comes from its telemetry
                log.debug(
                    "oort round %d: %s not observed (%s)", round_, site, r.failed or "no loss"
                )
                if site not in self._sites:
                    self._sites[site] = _SiteState(round_, neutral, None, 0)
                else:
                    self._sites[site].last_round = round_
                continue
            seconds = r.seconds if r.seconds is not None and r.seconds > 0 else None
            try:
                self.observe_site(site, round_, r.loss, seconds)
            except ValueError as exc:
                log.warning("oort round %d: result of %s not kept: %s", round_, site, exc)

    def observe_site(
        self, site_id: str, round_: int, loss: float, duration_s: float | None = None
    ) -> None:
        """Record one site's outcome of round ``round_``.

        Args:
            site_id: The site.
            round_: The round it trained in (>= 0); observing a round twice counts it once.
            loss: Its mean training loss that round (finite, >= 0).
            duration_s: How long its round took (seconds > 0); ``None`` keeps the last known.
        """
        if round_ < 0:
            raise ValueError(f"oort: round must be >= 0; found {round_!r}")
        if not (math.isfinite(loss) and loss >= 0.0):
            raise ValueError(
                f"oort: loss of site {site_id!r} must be a finite number >= 0; found {loss!r}"
            )
        if duration_s is not None and not (math.isfinite(duration_s) and duration_s > 0.0):
            raise ValueError(
                f"oort: duration_s of site {site_id!r} must be seconds > 0 or None; "
                f"found {duration_s!r}"
            )
        old = self._sites.get(site_id)
        if old is None:
            self._sites[site_id] = _SiteState(round_, float(loss), duration_s, 1)
            return
        if round_ != old.last_round:
            old.rounds_trained += 1
        old.last_round = round_
        old.loss = float(loss)
        if duration_s is not None:
            old.duration_s = float(duration_s)

    def state_dict(self) -> dict[str, Any]:
        """Per-site state, JSON-ready, for checkpoints."""
        return {
            "version": _STATE_VERSION,
            "sites": {
                site: {
                    "last_round": s.last_round,
                    "loss": s.loss,
                    "duration_s": s.duration_s,
                    "rounds_trained": s.rounds_trained,
                }
                for site, s in sorted(self._sites.items())
            },
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Replace the per-site state with one saved by :meth:`state_dict` (``{}``: none).

        Raises:
            ValueError: When ``state`` is not an Oort state of this version; nothing changes.
        """
        if not state:
            self._sites = {}
            return
        if state.get("version") != _STATE_VERSION:
            raise ValueError(
                f"oort state: expected version {_STATE_VERSION}; found "
                f"{state.get('version')!r}; pass what state_dict() returned"
            )
        sites = state.get("sites")
        if not isinstance(sites, Mapping):
            raise ValueError(f"oort state: expected 'sites' to be a mapping; found {sites!r}")
        self._sites = {str(site): _site_from_json(str(site), raw) for site, raw in sites.items()}

    # -- selection ---------------------------------------------------------------------------

    def select(self, round_: int, candidates: Sequence[Candidate]) -> Selection:
        ordered = by_site_id(candidates)
        k = sample_size(len(ordered), self.fraction, self.min_sites)
        views = {c.site_id: self._view(c) for c in ordered}
        known = [v.duration_s for v in views.values() if v.duration_s is not None]
        preferred = (
            self.preferred_duration_s
            if self.preferred_duration_s is not None
            else preferred_duration(known, self.duration_quantile)
        )
        epsilon = exploration_rate(
            round_, self.exploration, self.exploration_decay, self.min_exploration
        )
        explored = [c for c in ordered if views[c.site_id].loss is not None]
        untried = [c for c in ordered if views[c.site_id].loss is None]
        util, penalty = self._utilities(explored, views, round_, preferred)
        best = max(util.values(), default=0.0)

        def scaled(u: float) -> float:  # the scores' scale: the best explored site = 100
            return 100.0 * u / best if best > 0.0 else 0.0

        scores = {s: scaled(u) for s, u in util.items()}
        banned = self._blacklist(explored, views, len(ordered))
        eligible = sorted(
            (c.site_id for c in explored if c.site_id not in banned),
            key=lambda s: (-util[s], s),
        )

        # slots: exploitation first takes floor(k * (1 - epsilon)), exploration the rest
        n_exploit = min(math.floor(k * (1.0 - epsilon) + 1e-9), len(eligible))
        n_explore = min(k - n_exploit, len(untried))
        n_exploit = min(k - n_explore, len(eligible))
        n_fill = k - n_explore - n_exploit  # from the blacklist, least trained first

        fastest = sorted(untried, key=lambda c: _speed_key(c.site_id, views[c.site_id]))
        explore = [c.site_id for c in fastest[:n_explore]]
        cut = self.cut_off * util[eligible[n_exploit - 1]] if n_exploit else math.inf
        admitted = [s for s in eligible if util[s] >= cut]
        digest = hashlib.sha256(f"{self.seed}:{round_}".encode()).digest()
        rng = np.random.default_rng(int.from_bytes(digest[:8], "big"))
        drawn = sample_proportional([util[s] for s in admitted], n_exploit, rng)
        exploit = [admitted[i] for i in drawn]
        by_trained = sorted(banned, key=lambda s: (views[s].rounds_trained, s))
        fill = by_trained[:n_fill]

        taken = set(explore) | set(exploit) | set(fill)
        rejected: dict[str, list[str]] = {}
        for c in untried:
            if c.site_id not in taken:
                rejected[c.site_id] = [self._untried_reason(views[c.site_id], n_explore, epsilon)]
        for c in explored:
            site = c.site_id
            if site in taken:
                continue
            if site in banned:
                reasons = [
                    f"trained in {views[site].rounds_trained} rounds, more than "
                    f"blacklist_rounds={self.blacklist_rounds}; left out to give others a turn"
                ]
            elif not n_exploit:
                reasons = [
                    f"utility {scores[site]:.1f}; all {k} slot(s) went to sites not explored "
                    f"yet (epsilon {epsilon:.2f})"
                ]
            elif util[site] < cut:
                reasons = [f"utility {scores[site]:.1f} below cut-off {scaled(cut):.1f}"]
            else:
                reasons = [
                    f"utility {scores[site]:.1f} within cut-off {scaled(cut):.1f} but "
                    "not drawn (drawn in proportion to utility)"
                ]
            if penalty[site] < 1.0:
                reasons.append(
                    f"last round took {views[site].duration_s:.1f} s, over the preferred "
                    f"{preferred:.1f} s: utility x {penalty[site]:.3f}"
                )
            rejected[site] = reasons
        log.info(
            "oort round %d: epsilon %.3f, preferred duration %.1f s, explore %s, exploit %s%s",
            round_,
            epsilon,
            preferred,
            ", ".join(explore) or "-",
            ", ".join(exploit) or "-",
            f", blacklisted {', '.join(fill)}" if fill else "",
        )
        return Selection(
            chosen=[c for c in ordered if c.site_id in taken], rejected=rejected, scores=scores
        )

    # -- helpers -----------------------------------------------------------------------------

    def _view(self, cand: Candidate) -> _View:
        state = self._sites.get(cand.site_id)
        r = cand.readings
        loss = state.loss if state is not None else _reading(r, LOSS_KEY, positive=False)
        duration = state.duration_s if state is not None else None
        if duration is None:
            duration = _reading(r, DURATION_KEY, positive=True)
        return _View(
            loss=loss,
            duration_s=duration,
            last_round=state.last_round if state is not None else 1,
            rounds_trained=state.rounds_trained if state is not None else 0,
            speed=_reading(r, SPEED_KEY, positive=True),
        )

    def _utilities(
        self,
        explored: Sequence[Candidate],
        views: Mapping[str, _View],
        round_: int,
        preferred_s: float,
    ) -> tuple[dict[str, float], dict[str, float]]:
        """Utility and system penalty of every explored site."""
        stat: dict[str, float] = {}
        for c in explored:
            loss = views[c.site_id].loss
            if loss is not None:  # always so: explored means the loss is known
                stat[c.site_id] = statistical_utility(c.num_train_examples, loss)
        top = max(stat.values(), default=0.0)
        util: dict[str, float] = {}
        penalty: dict[str, float] = {}
        for site, u in stat.items():
            view = views[site]
            bonus = staleness_bonus(round_, view.last_round, self.staleness_weight)
            penalty[site] = system_penalty(view.duration_s, preferred_s, self.alpha)
            util[site] = ((u / top if top > 0.0 else 0.0) + bonus) * penalty[site]
        return util, penalty

    def _blacklist(
        self, explored: Sequence[Candidate], views: Mapping[str, _View], n: int
    ) -> list[str]:
        """Sites over ``blacklist_rounds``, most trained first, at most the allowed share."""
        if self.blacklist_rounds is None:
            return []
        limit = self.blacklist_rounds
        over = [c.site_id for c in explored if views[c.site_id].rounds_trained > limit]
        over.sort(key=lambda s: (-views[s].rounds_trained, s))
        return over[: math.floor(self.blacklist_max_fraction * n + 1e-9)]

    @staticmethod
    def _untried_reason(view: _View, n_explore: int, epsilon: float) -> str:
        speed = (
            f"relative throughput {view.speed:.2f}" if view.speed is not None else "speed unknown"
        )
        if not n_explore:
            return f"not explored yet; no exploration slot this round (epsilon {epsilon:.2f})"
        return (
            f"not explored yet; the {n_explore} exploration slot(s) went to faster untried "
            f"sites ({speed})"
        )

    def __repr__(self) -> str:
        return (
            f"OortSelector(fraction={self.fraction}, min_sites={self.min_sites}, "
            f"seed={self.seed}, preferred_duration_s={self.preferred_duration_s}, "
            f"alpha={self.alpha}, exploration={self.exploration}, "
            f"exploration_decay={self.exploration_decay}, "
            f"min_exploration={self.min_exploration}, cut_off={self.cut_off}, "
            f"staleness_weight={self.staleness_weight}, "
            f"duration_quantile={self.duration_quantile}, "
            f"blacklist_rounds={self.blacklist_rounds}, "
            f"blacklist_max_fraction={self.blacklist_max_fraction})"
        )


def _speed_key(site_id: str, view: _View) -> tuple[float, float, str]:
    """Fastest first: higher relative throughput, then shorter known duration, then id."""
    return (
        -view.speed if view.speed is not None else math.inf,
        view.duration_s if view.duration_s is not None else math.inf,
        site_id,
    )


def _site_from_json(site: str, raw: object) -> _SiteState:
    def fail(detail: str) -> ValueError:
        return ValueError(
            f"oort state: site {site!r}: {detail}; found {raw!r}; pass what state_dict() returned"
        )

    if not isinstance(raw, Mapping):
        raise fail("expected a mapping")
    last, loss = raw.get("last_round"), raw.get("loss")
    duration, trained = raw.get("duration_s"), raw.get("rounds_trained")

    if not (isinstance(last, int) and not isinstance(last, bool) and last >= 0):
        raise fail("expected last_round to be an integer >= 0")
    if not (_is_number(loss) and isinstance(loss, int | float) and loss >= 0):
        raise fail("expected loss to be a finite number >= 0")
    if duration is not None and not (
        _is_number(duration) and isinstance(duration, int | float) and duration > 0
    ):
        raise fail("expected duration_s to be seconds > 0 or null")
    if not (isinstance(trained, int) and not isinstance(trained, bool) and trained >= 1):
        raise fail("expected rounds_trained to be an integer >= 1")
    return _SiteState(
        last_round=last,
        loss=float(loss),
        duration_s=None if duration is None else float(duration),
        rounds_trained=trained,
    )


def _is_number(x: object) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)
