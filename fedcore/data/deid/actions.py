"""What each action code of the PS3.15 Basic Profile table does in fedcore: resolution and dummy values."""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Final

from fedcore.data.deid.ps315_profile import BASIC_PROFILE, FEDCORE_EXTRAS

_TEXT_DUMMY: Final = "ANONYMIZED"
_BINARY_DUMMY: Final = bytes(8)  # even, and a whole number of OD/OF/OL/OV values

COMPOUND_RESOLUTION: Final[Mapping[str, str]] = MappingProxyType(
    {"X/Z": "X", "X/D": "X", "X/Z/D": "X", "X/Z/U*": "X", "Z/D": "Z"}
)
"""The strictest choice for each compound code of the table (see :mod:`fedcore.data.deid`)."""

_SIMPLE_CODES: Final = frozenset({"X", "Z", "D", "K", "U"})

_DUMMY_BY_VR: Final[Mapping[str, str | int | float | bytes]] = MappingProxyType(
    {
        "AE": _TEXT_DUMMY,
        "AS": "000D",
        "CS": _TEXT_DUMMY,
        "DA": "19000101",
        "DS": "0",
        "DT": "19000101000000",
        "IS": "0",
        "LO": _TEXT_DUMMY,
        "LT": _TEXT_DUMMY,
        "PN": "ANONYMOUS",
        "SH": _TEXT_DUMMY,
        "ST": _TEXT_DUMMY,
        "TM": "000000",
        "UC": _TEXT_DUMMY,
        "UR": _TEXT_DUMMY,
        "UT": _TEXT_DUMMY,
        "FL": 0.0,
        "FD": 0.0,
        "SL": 0,
        "SS": 0,
        "SV": 0,
        "UL": 0,
        "US": 0,
        "UV": 0,
        "OB": _BINARY_DUMMY,
        "OD": _BINARY_DUMMY,
        "OF": _BINARY_DUMMY,
        "OL": _BINARY_DUMMY,
        "OV": _BINARY_DUMMY,
        "OW": _BINARY_DUMMY,
        "UN": _BINARY_DUMMY,
    }
)


def resolve_action(code: str) -> str:
    """The action fedcore carries out for a table code: one of ``X``, ``Z``, ``D``, ``K``, ``U``.

    Args:
        code: An action code of PS3.15 Table E.1-1, simple (``"D"``) or compound (``"X/Z/D"``).

    Raises:
        ValueError: For a code the table does not use.
    """
    if code in _SIMPLE_CODES:
        return code
    try:
        return COMPOUND_RESOLUTION[code]
    except KeyError:
        known = ", ".join(sorted(_SIMPLE_CODES | set(COMPOUND_RESOLUTION)))
        raise ValueError(
            f"unknown de-identification action code {code!r}: expected one of {known}"
        ) from None


def profile_code(tag: int) -> str | None:
    """The table's action code for a public tag (``None``: not in the profile, kept as it is).

    Args:
        tag: The element's tag as an integer, e.g. ``0x00100010`` for Patient's Name.
    """
    return BASIC_PROFILE.get(tag) or FEDCORE_EXTRAS.get(tag)


def dummy_value(vr: str) -> str | int | float | bytes:
    """The dummy value that action ``D`` writes for a value representation.

    Args:
        vr: A DICOM value representation such as ``"PN"`` or ``"DA"``; for an ambiguous one
            (``"US or SS"``) the first is used.

    Raises:
        ValueError: For ``SQ``, ``UI`` and ``AT``, which have no dummy value (a sequence is
            emptied, a UID remapped, see :mod:`fedcore.data.deid`), or an unknown VR.
    """
    key = vr.split(" or ")[0].strip()
    try:
        return _DUMMY_BY_VR[key]
    except KeyError:
        raise ValueError(
            f"no dummy value for VR {vr!r}: expected one of {', '.join(sorted(_DUMMY_BY_VR))}"
        ) from None


def tag_string(tag: int) -> str:
    """``"(gggg,eeee)"`` for a tag, as DICOM writes it."""
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"
