"""The round record's data-quality entry: each summary once, again only when it changes."""

from __future__ import annotations

from coordinator.round_notes import quality_note


def test_quality_summaries_are_recorded_when_new_or_changed() -> None:
    shown: dict[str, dict[str, float]] = {}
    first = {"bank-a": {"rows": 10.0}, "bank-b": {"rows": 20.0}}
    assert quality_note(first, shown) == {"data_quality": first}
    assert quality_note(first, shown) == {}  # nothing new: nothing recorded
    changed = {"bank-a": {"rows": 10.0}, "bank-b": {"rows": 25.0}}
    assert quality_note(changed, shown) == {"data_quality": {"bank-b": {"rows": 25.0}}}
    assert shown == changed
    assert quality_note({}, shown) == {}
