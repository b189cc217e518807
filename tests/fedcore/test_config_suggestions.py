"""A mistyped choice or field name in a scenario or site file gets the closest valid one."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from fedcore.config import (
    ConfigError,
    Scenario,
    SiteConfig,
    closest_choice,
    is_site_file,
    known_fields,
    load_scenario,
    load_site_config,
)

GOOD = textwrap.dedent(
    """
    name: tiny
    sites:
      - id: bank-a
        data: {kind: generated, transactions: 500, customer_mix: retail}
      - id: bank-b
        data: {kind: generated, transactions: 400}
    scheduler: {min_sites: 2}
    """
)


def problem(tmp_path: Path, text: str) -> str:
    path = tmp_path / "s.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_scenario(path)
    return err.value.message


@pytest.mark.parametrize(
    ("old", "new", "expected"),
    [
        (
            "customer_mix: retail",
            "customer_mix: retial",
            "sites[0] (id 'bank-a').data.customer_mix: Input should be 'retail', 'business' or "
            "'mixed' (found 'retial'); did you mean 'retail'?",
        ),
        ("kind: generated, transactions: 400", "kind: generatd", "did you mean 'generated'?"),
        ("{min_sites: 2}", "{min_sites: 2, policy: orot}", "did you mean 'oort'?"),
        ("{min_sites: 2}", "{min_sites: 2}\nprivacy: {mode: CKKS}", "did you mean 'ckks'?"),
        ("{min_sites: 2}", "{min_site: 2}", "scheduler.min_site: unknown field"),
        ("{min_sites: 2}", "{min_site: 2}", "did you mean 'min_sites'?"),
        ("transactions: 500", "transaction: 500", "did you mean 'transactions'?"),
        ("name: tiny", "name: tiny\nroudns: 3", "roudns: unknown field"),
    ],
)
def test_closest_valid_value_is_suggested(
    tmp_path: Path, old: str, new: str, expected: str
) -> None:
    assert old in GOOD
    assert expected in problem(tmp_path, GOOD.replace(old, new))


def test_nothing_close_gets_no_suggestion(tmp_path: Path) -> None:
    msg = problem(tmp_path, GOOD.replace("customer_mix: retail", "customer_mix: zzzzzz"))
    assert "found 'zzzzzz'" in msg and "did you mean" not in msg


def test_closest_choice() -> None:
    assert closest_choice("retial", ["retail", "business", "mixed"]) == "retail"
    assert closest_choice("Mixed", ["retail", "business", "mixed"]) == "mixed"
    assert closest_choice("xyz", ["retail", "business"]) is None
    assert closest_choice(3, ["retail"]) is None


def test_known_fields_follow_lists_and_data_kinds() -> None:
    assert "rounds" in known_fields(Scenario, ())
    assert "customer_mix" in known_fields(Scenario, ("sites", 0, "data", "generated"))
    assert "columns" in known_fields(Scenario, ("sites", 0, "data", "csv"))
    assert "state_dir" in known_fields(SiteConfig, ())
    assert known_fields(Scenario, ("nowhere",)) == []


def test_site_file_suggestions(tmp_path: Path) -> None:
    path = tmp_path / "bank-a.yaml"
    path.write_text("id: bank-a\nstate_dri: x\ndata: {kind: generated}\n")
    with pytest.raises(ConfigError) as err:
        load_site_config(path)
    assert "state_dri: unknown field" in err.value.message
    assert "did you mean 'state_dir'?" in err.value.message


def test_is_site_file() -> None:
    assert is_site_file({"id": "bank-a", "data": {"kind": "generated"}})
    assert is_site_file({"state_dir": "x"})
    assert not is_site_file({"name": "x", "sites": []})
    assert not is_site_file({"name": "x"})
    assert not is_site_file(["id"])
