"""Checks on the values a message carries: every malformed field ends in a ValueError naming it."""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from typing import Any, TypeVar

from flwr.app import RecordDict
from pydantic import BaseModel

# --------------------------------------------------------------------------- instruction fields


MAX_ROUND = 10_000
"""Largest round an instruction may name (a scenario runs at most 10,000 rounds)."""
MAX_WEIGHT = 1e9
"""Largest aggregation weight a site may be given (sums of weights: times :data:`MAX_SITES`)."""
MAX_SITES = 10_000
"""Most sites one round may sum."""
MAX_DEVICE = 1_023
"""Largest device index a schedule may name in a site's pool."""
MAX_EPOCHS = 1_000
"""Most local epochs a schedule may ask for (``training.local_epochs`` has the same bound)."""
MAX_DEADLINE_S = 1e7
"""Longest round deadline, seconds (about 4 months)."""
MAX_SPEC_CHARS = 65_536
"""Longest JSON text of one scenario section in an instruction."""
MAX_CKKS_LENGTH = 2**31 - 1
"""Most values one encrypted aggregate may hold."""
RUN_KEY_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
"""A run key names a folder in the site's state directory: no separators, no ``..``."""


def _shown(value: object) -> str:
    """A value from a peer, short enough for a message: its type and a clipped repr."""
    try:
        text = repr(value)
    except ValueError:  # an integer too long to print (Python's digit limit)
        text = f"of {value.bit_length()} bits" if isinstance(value, int) else "(unprintable)"
    return f"{type(value).__name__} {text if len(text) <= 60 else text[:57] + '...'}"


_Spec = TypeVar("_Spec", bound=BaseModel)


class _Fields:
    """Reads the fields of an instruction's record, refusing what a coordinator must not send.

    Each reader names the field, what was expected and what was found; an absent field
    takes its default (``None``: required).
    """

    def __init__(self, rec: Mapping[str, Any], where: str) -> None:
        if not isinstance(rec, Mapping):
            raise ValueError(f"{where}: expected a record of fields, found {type(rec).__name__}")
        self.rec = rec
        self.where = where

    def _get(self, key: str, default: object) -> object:
        if key in self.rec:
            return self.rec[key]
        if default is None:
            raise ValueError(f"{self.where} lacks {key!r}: expected it in every instruction")
        return default

    def _bad(self, key: str, expected: str, value: object) -> ValueError:
        return ValueError(
            f"malformed {self.where}: field {key!r}: expected {expected}, found {_shown(value)}; "
            "the coordinator sent a malformed instruction"
        )

    def integer(self, key: str, default: int | None, lo: int, hi: int) -> int:
        value = self._get(key, default)
        if type(value) is not int or not lo <= value <= hi:
            raise self._bad(key, f"an integer in {lo}..{hi}", value)
        return value

    def number(self, key: str, default: float | None, lo: float, hi: float) -> float:
        value = self._get(key, default)
        expected = f"a finite number in [{lo:g}, {hi:g}]"
        if type(value) not in (int, float):
            raise self._bad(key, expected, value)
        try:
            x = float(value)  # type: ignore[arg-type]
        except OverflowError:  # an integer beyond any float
            x = math.inf
        if not (math.isfinite(x) and lo <= x <= hi):
            raise self._bad(key, expected, value)
        return x

    def run_key(self) -> str:
        value = self._get("run_key", "")
        if type(value) is not str or (value and not RUN_KEY_PATTERN.fullmatch(value)):
            raise self._bad(
                "run_key", "'' or up to 128 letters, digits, '.', '_' or '-' (a folder name)", value
            )
        return value

    def spec(self, key: str, model: type[_Spec], default: str | None = "{}") -> _Spec:
        """A scenario section sent as JSON text: it must validate and hold finite numbers only."""
        value = self._get(key, default)
        if type(value) is not str or len(value) > MAX_SPEC_CHARS:
            raise self._bad(key, f"the JSON text of a {model.__name__} section", value)
        try:
            spec = model.model_validate_json(value)
        except ValueError as exc:  # pydantic's ValidationError, with every reason
            raise ValueError(
                f"malformed {self.where}: field {key!r}: expected a valid {model.__name__} "
                f"section, found one that does not validate: {_first_lines(str(exc))}"
            ) from None
        bad = _non_finite(spec.model_dump())
        if bad:
            raise ValueError(
                f"malformed {self.where}: field {key!r}: expected finite numbers, found "
                f"{bad[1]!r} at {key}.{bad[0]}"
            )
        return spec


def _first_lines(text: str, lines: int = 4) -> str:
    """The first ``lines`` lines of ``text`` on one line (a validation error can be long)."""
    head = text.splitlines()[:lines]
    return "; ".join(line.strip() for line in head)[:400]


def _non_finite(value: object, path: str = "") -> tuple[str, float] | None:
    """The first (path, value) in a nested structure whose float is NaN or infinite."""
    if isinstance(value, float):
        return None if math.isfinite(value) else (path.lstrip("."), value)
    if isinstance(value, Mapping):
        items: Any = value.items()
    elif isinstance(value, list | tuple):
        items = enumerate(value)
    else:
        return None
    for k, v in items:
        found = _non_finite(v, f"{path}.{k}")
        if found is not None:
            return found
    return None


# --------------------------------------------------------------------------- reply fields
#
# Everything a site reports is read through these: a hostile reply may hold any type
# in any field, and decoding must end in a ValueError that says which field, what was
# expected and what was found, never in another exception.

MAX_EXAMPLES = 10**10
"""Most examples a site may report (training or evaluation)."""

MAX_SECONDS = 10.0**7
"""Longest a site may say its round took, seconds (about 4 months)."""


def _field(m: Mapping[str, Any], key: str, where: str) -> Any:
    if key not in m:
        raise ValueError(f"{where} lacks {key!r}")
    return m[key]


def _int(value: object, name: str, lo: int, hi: int) -> int:
    """``value`` as an int in ``lo..hi`` (bools and floats refused)."""
    if type(value) is not int:
        raise ValueError(
            f"{name}: expected an integer in {lo}..{hi}, found {type(value).__name__} {value!r:.60}"
        )
    if not lo <= value <= hi:
        raise ValueError(f"{name}: expected an integer in {lo}..{hi}, found {value}")
    return value


def _float(
    value: object, name: str, lo: float = -math.inf, hi: float = math.inf, *, nan: bool = False
) -> float:
    """``value`` as a finite float in ``[lo, hi]`` (NaN only where ``nan``)."""
    if type(value) not in (int, float):
        raise ValueError(
            f"{name}: expected a finite number in [{lo:g}, {hi:g}], found "
            f"{type(value).__name__} {value!r:.60}"
        )
    try:
        x = float(value)  # type: ignore[arg-type]
    except OverflowError:
        x = math.inf if value > 0 else -math.inf  # type: ignore[operator]
    if math.isnan(x) and nan:
        return x
    if not (math.isfinite(x) and lo <= x <= hi):
        raise ValueError(f"{name}: expected a finite number in [{lo:g}, {hi:g}], found {x!r}")
    return x


def _str(value: object, name: str, *, empty: bool = True, limit: int = 256) -> str:
    if type(value) is not str or len(value) > limit or (not empty and not value):
        what = f"{len(value)} characters" if isinstance(value, str) else type(value).__name__
        size = f"0..{limit}" if empty else f"1..{limit}"
        raise ValueError(f"{name}: expected a string of {size} characters, found {what}")
    return value


def _counts(value: object, name: str, length: int) -> list[int]:
    """A histogram: ``length`` non-negative integers."""
    if not isinstance(value, list) or len(value) != length:
        found = f"{len(value)} values" if isinstance(value, list) else type(value).__name__
        raise ValueError(f"{name}: expected {length} counts, found {found}")
    bad = next((v for v in value if type(v) is not int or not 0 <= v <= MAX_EXAMPLES), None)
    if bad is not None:
        raise ValueError(
            f"{name}: expected non-negative integer counts, found {type(bad).__name__} {bad!r:.60}"
        )
    return list(value)


def _records(content: object, where: str) -> RecordDict:
    if not isinstance(content, RecordDict):
        raise ValueError(f"{where}: expected a RecordDict, found {type(content).__name__}")
    return content


# Physical range of a telemetry reading by the unit its name ends with (names carry units:
# ``cpu_util_percent``, ``device_temperature_c``...); any other reading: finite, |x| <= 1e15.
READING_RANGES: tuple[tuple[str, float, float], ...] = (
    ("_percent", 0.0, 100.0),
    ("_c", -273.15, 1000.0),
    ("_mib", 0.0, 2.0**40),
    ("_w", 0.0, 10.0**7),
    ("_seconds", 0.0, MAX_SECONDS),
    ("_s", 0.0, MAX_SECONDS),
    ("_bytes", 0.0, 2.0**63),
    ("_count", 0.0, 10.0**9),
    ("num_devices", 0.0, 10.0**6),
)
_ANY_READING = 10.0**15


def reading_range(name: str) -> tuple[float, float]:
    """The range a telemetry reading called ``name`` must lie in (see :data:`READING_RANGES`)."""
    for suffix, lo, hi in READING_RANGES:
        if name.endswith(suffix):
            return lo, hi
    return -_ANY_READING, _ANY_READING
