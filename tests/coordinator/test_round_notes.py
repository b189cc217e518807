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


def test_site_summaries_record_quality_and_serving_once_each_change() -> None:
    from coordinator.round_notes import SiteSummaries

    notes = SiteSummaries()
    notes.seen("bank-a", {"rows": 10.0}, {"psi": 0.05, "retrain": 0.0})
    notes.seen("bank-b", {}, {})  # nothing to show
    first = notes.notes()
    assert first == {
        "data_quality": {"bank-a": {"rows": 10.0}},
        "serving": {"bank-a": {"psi": 0.05, "retrain": 0.0}},
    }
    assert notes.notes() == {}  # unchanged: not repeated
    notes.seen("bank-a", {"rows": 10.0}, {"psi": 0.31, "retrain": 1.0})
    assert notes.notes() == {"serving": {"bank-a": {"psi": 0.31, "retrain": 1.0}}}
