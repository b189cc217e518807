"""The consoles every command prints with: whole lines when the output is not a terminal."""

from __future__ import annotations

import io

import pytest

from fedcore.cli.common import command_console

LONG_PATH = "runs/bank-fraud-" + "x" * 90 + "/sites/bank-a/export/default/model.int8.onnx"


def test_a_long_path_stays_on_one_line_when_not_a_terminal(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "80")
    console = command_console(markup=False)
    assert not console.is_terminal  # pytest captures stdout
    buf = io.StringIO()
    console.file = buf
    console.print(f"2 sites, 3 rounds, engine inprocess, privacy plaintext, out {LONG_PATH}")
    assert buf.getvalue() == (
        f"2 sites, 3 rounds, engine inprocess, privacy plaintext, out {LONG_PATH}\n"
    )


def test_a_terminal_keeps_rich_wrapping(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FORCE_COLOR", "1")  # rich treats the output as a terminal
    console = command_console(stderr=True)
    assert console.is_terminal and console.stderr and not console.soft_wrap
