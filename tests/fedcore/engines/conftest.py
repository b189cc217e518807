"""Fixtures shared by the deployment-engine tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.fedcore.engines.test_deployment import ProcessWatch


@pytest.fixture
def watch(tmp_path: Path) -> Iterator[ProcessWatch]:
    """Watches the test's processes; kills every survivor by PID, also when the test fails."""
    w = ProcessWatch(tmp_path)
    try:
        yield w
    finally:
        w.kill_all()
