"""Per-site telemetry history: what each site reported, was given and took, round by round."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from fedcore.storage import atomic_write_json

FORMAT = "fedcore.telemetry_history"
"""The ``format`` tag of :meth:`TelemetryHistory.to_dict`."""
VERSION = 1
"""The layout version of :meth:`TelemetryHistory.to_dict`."""
_OBS_KEYS = ("round", "time", "readings", "work", "duration_s")


@dataclass(frozen=True)
class Observation:
    """One site in one round: the telemetry it sent, the work it was given, the time it took.

    Attributes:
        site_id: The site's id.
        round: The round number (>= 0).
        time: When the telemetry was taken, in seconds (wall clock or a simulator's virtual
            clock); ``None`` when only work or duration was recorded for the round.
        readings: Telemetry readings sent before the round (``device_utilization_percent``,
            ``background_load_percent``, ``relative_throughput``, ...); any key may be missing.
        work: The work the site was given, e.g. ``{"steps": 50, "examples": 3200}``.
        duration_s: The measured duration of the round in seconds; ``None`` until known.
    """

    site_id: str
    round: int
    time: float | None = None
    readings: dict[str, float] = field(default_factory=dict)
    work: dict[str, float] = field(default_factory=dict)
    duration_s: float | None = None

    @property
    def measured(self) -> bool:
        """Whether the round's duration is known."""
        return self.duration_s is not None


class TelemetryHistory:
    """The coordinator's record of every site's rounds: the predictor's training data.

    The three ``record_*`` calls may come in any order for a round; each fills its part of
    the round's :class:`Observation`. Only the newest ``max_rounds`` rounds of each site are
    kept (older rounds are dropped as new ones arrive). Every value is checked when recorded,
    so the history always serializes to plain JSON.

    Args:
        max_rounds: Rounds kept per site (default 500), >= 1.
    """

    def __init__(self, max_rounds: int = 500) -> None:
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
            raise ValueError(f"max_rounds must be an integer >= 1, got {max_rounds!r}")
        self.max_rounds = max_rounds
        self._sites: dict[str, dict[int, Observation]] = {}

    def record_telemetry(
        self, site_id: str, round_: int, time: float, readings: Mapping[str, float]
    ) -> None:
        """Record the readings a site sent for round ``round_`` at ``time`` seconds.

        The readings a round was first recorded with stay: a later reply of the same round
        (e.g. the train reply) only adds keys that were missing, so the readings always
        describe the site as it was when the round was scheduled.

        Raises:
            ValueError: On an empty site id, a negative round, or a non-finite value.
        """
        where = _where(site_id, round_)
        clean = _numbers(readings, f"{where} readings")
        obs = self._entry(site_id, round_)
        merged = {**clean, **obs.readings}
        first_time = obs.time if obs.time is not None else _finite(time, f"{where} time")
        self._put(replace(obs, time=first_time, readings=merged))

    def record_work(self, site_id: str, round_: int, work: Mapping[str, float]) -> None:
        """Record the work given to a site for round ``round_`` (replaces earlier work).

        Raises:
            ValueError: On a negative or non-finite amount of work.
        """
        where = _where(site_id, round_)
        clean = _numbers(work, f"{where} work")
        for key, value in clean.items():
            if value < 0:
                raise ValueError(f"{where} work[{key!r}]: expected >= 0, found {value!r}")
        self._put(replace(self._entry(site_id, round_), work=clean))

    def record_duration(self, site_id: str, round_: int, duration_s: float) -> None:
        """Record how long round ``round_`` took at a site, in seconds (> 0).

        Raises:
            ValueError: On a duration that is not a finite number > 0.
        """
        where = _where(site_id, round_)
        duration = _duration(duration_s, f"{where} duration_s")
        self._put(replace(self._entry(site_id, round_), duration_s=duration))

    def for_site(self, site_id: str) -> list[Observation]:
        """The site's kept observations in round order (empty for an unknown site)."""
        rounds = self._sites.get(site_id, {})
        return [rounds[r] for r in sorted(rounds)]

    def sites(self) -> list[str]:
        """The ids of every site with at least one observation, sorted."""
        return sorted(self._sites)

    def histories(self) -> dict[str, list[Observation]]:
        """Every site's observations in round order, keyed by site id (a forecaster's input)."""
        return {s: self.for_site(s) for s in self.sites()}

    def __len__(self) -> int:
        return sum(len(r) for r in self._sites.values())

    def __repr__(self) -> str:
        return (
            f"TelemetryHistory(sites={len(self._sites)}, observations={len(self)}, "
            f"max_rounds={self.max_rounds})"
        )

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe form, for the coordinator's checkpoint (inverse of :meth:`from_dict`)."""
        return {
            "format": FORMAT,
            "version": VERSION,
            "max_rounds": self.max_rounds,
            "sites": {
                s: [
                    {
                        "round": o.round,
                        "time": o.time,
                        "readings": dict(o.readings),
                        "work": dict(o.work),
                        "duration_s": o.duration_s,
                    }
                    for o in self.for_site(s)
                ]
                for s in self.sites()
            },
        }

    @classmethod
    def from_dict(cls, data: Any) -> TelemetryHistory:
        """Rebuild a history from :meth:`to_dict` output, checking every field.

        Raises:
            ValueError: Naming the first field that is missing or wrong.
        """
        if not isinstance(data, dict):
            raise _bad("the top level", "a JSON object", data)
        if data.get("format") != FORMAT:
            raise _bad("format", repr(FORMAT), data.get("format"))
        if data.get("version") != VERSION:
            raise _bad("version", str(VERSION), data.get("version"))
        max_rounds = data.get("max_rounds")
        if isinstance(max_rounds, bool) or not isinstance(max_rounds, int) or max_rounds < 1:
            raise _bad("max_rounds", "an integer >= 1", max_rounds)
        sites = data.get("sites")
        if not isinstance(sites, dict):
            raise _bad("sites", "an object of site id -> list of rounds", sites)
        history = cls(max_rounds)
        for site_id, rows in sites.items():
            if not isinstance(site_id, str) or not site_id:
                raise _bad("sites", "non-empty site ids", site_id)
            if not isinstance(rows, list):
                raise _bad(f"sites[{site_id!r}]", "a list of rounds", rows)
            kept: dict[int, Observation] = {}
            for i, row in enumerate(rows):
                obs = _observation(site_id, row, f"sites[{site_id!r}][{i}]")
                if obs.round in kept:
                    raise _bad(f"sites[{site_id!r}][{i}].round", "each round once", obs.round)
                kept[obs.round] = obs
            if kept:
                history._sites[site_id] = kept
                history._trim(site_id)
        return history

    def save(self, path: str | Path) -> None:
        """Write :meth:`to_dict` as JSON to ``path``, atomically (old file or new, never half)."""
        atomic_write_json(Path(path), self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TelemetryHistory:
        """Read a history written by :meth:`save`.

        Raises:
            ValueError: When the file is not valid JSON or not a telemetry history.
        """
        p = Path(path)
        try:
            data = json.loads(p.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(
                f"{p}: expected a telemetry history in JSON, found invalid JSON ({e}); "
                "restore it from a backup or delete it to start a fresh history"
            ) from None
        try:
            return cls.from_dict(data)
        except ValueError as e:
            raise ValueError(f"{p}: {e}") from None

    def _entry(self, site_id: str, round_: int) -> Observation:
        return self._sites.get(site_id, {}).get(round_) or Observation(site_id, round_)

    def _put(self, obs: Observation) -> None:
        self._sites.setdefault(obs.site_id, {})[obs.round] = obs
        self._trim(obs.site_id)

    def _trim(self, site_id: str) -> None:
        rounds = self._sites[site_id]
        for r in sorted(rounds)[: max(0, len(rounds) - self.max_rounds)]:
            del rounds[r]


def _where(site_id: object, round_: object) -> str:
    if not isinstance(site_id, str) or not site_id:
        raise ValueError(f"site_id must be a non-empty string, got {site_id!r}")
    if isinstance(round_, bool) or not isinstance(round_, int) or round_ < 0:
        raise ValueError(f"site {site_id!r}: round must be an integer >= 0, got {round_!r}")
    return f"site {site_id!r} round {round_}"


def _finite(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ValueError(f"{what}: expected a finite number, found {value!r}")
    return float(value)


def _duration(value: object, what: str) -> float:
    duration = _finite(value, what)
    if duration <= 0:
        raise ValueError(f"{what}: expected a duration > 0 seconds, found {value!r}")
    return duration


def _numbers(values: object, what: str) -> dict[str, float]:
    if not isinstance(values, Mapping):
        raise ValueError(f"{what}: expected a mapping of name -> number, found {values!r}")
    out: dict[str, float] = {}
    for key, value in values.items():
        if not isinstance(key, str):
            raise ValueError(f"{what}: expected string keys, found {key!r}")
        out[key] = _finite(value, f"{what}[{key!r}]")
    return out


def _bad(where: str, expected: str, found: object) -> ValueError:
    return ValueError(
        f"telemetry history {where}: expected {expected}, found {found!r}; "
        "restore the history from a backup or delete it to start a fresh one"
    )


def _observation(site_id: str, row: object, where: str) -> Observation:
    if not isinstance(row, dict):
        raise _bad(where, "an object with keys " + ", ".join(_OBS_KEYS), row)
    if set(row) != set(_OBS_KEYS):
        raise _bad(where, "exactly the keys " + ", ".join(_OBS_KEYS), sorted(row))
    try:
        round_ = row["round"]
        _where(site_id, round_)
        time = None if row["time"] is None else _finite(row["time"], "time")
        readings = _numbers(row["readings"], "readings")
        work = _numbers(row["work"], "work")
        if any(v < 0 for v in work.values()):
            raise ValueError(f"work: expected amounts >= 0, found {work!r}")
        duration = None if row["duration_s"] is None else _duration(row["duration_s"], "duration")
    except ValueError as e:
        raise ValueError(
            f"telemetry history {where}: {e}; "
            "restore the history from a backup or delete it to start a fresh one"
        ) from None
    return Observation(site_id, round_, time, readings, work, duration)
