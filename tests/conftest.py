"""Fixtures shared by the whole test tree: Flower's task identity, scenario files, in-process grids.

Pytest runs with ``--import-mode=importlib``, so tests cannot import from this file: every
helper here is a fixture, and the ones that build things return a callable.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from flwr.clientapp import ClientApp
from flwr.common.constant import SUPERLINK_NODE_ID
from flwr.supercore.task_identity import TaskIdentity

from fedcore.config import Scenario, load_scenario
from fedcore.engines.inprocess import InProcessGrid


@contextmanager
def _coordinator_identity(run_id: int) -> Iterator[None]:
    """Be the coordinator's task of run ``run_id``, then put the previous identity back.

    A ServerApp runtime sets Flower's ``TaskIdentity`` (run id, node id
    ``SUPERLINK_NODE_ID``, task id 1) before the app's main runs; ``Message(...)`` reads
    it for every instruction. Tests that drive a grid outside such a runtime set it here.
    """
    saved = (TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id)
    TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = run_id, SUPERLINK_NODE_ID, 1
    try:
        yield
    finally:
        TaskIdentity._run_id, TaskIdentity._node_id, TaskIdentity._task_id = saved


@pytest.fixture
def task_run_id() -> int:
    """The run id :func:`task_identity` sets: 1 (override this fixture in a module for another)."""
    return 1


@pytest.fixture
def task_identity(task_run_id: int) -> Iterator[None]:
    """Flower's ``TaskIdentity`` set for the test as a ServerApp runtime sets it, restored after.

    Run id :func:`task_run_id`, node id ``SUPERLINK_NODE_ID``, task id 1.
    """
    with _coordinator_identity(task_run_id):
        yield


@pytest.fixture(scope="module")
def module_task_identity() -> Iterator[None]:
    """:func:`task_identity` (run 1) for module-scoped fixtures, restored after the module."""
    with _coordinator_identity(1):
        yield


GridFactory = Callable[[ClientApp, Mapping[str, Mapping[str, Any]]], InProcessGrid]


@pytest.fixture
def inprocess_grid(task_identity: None) -> GridFactory:
    """Builds an ``InProcessGrid`` from a client app and ``{site id: node config}``.

    Flower's task identity is set for the test (:func:`task_identity`), so the grid can be
    driven at once, as a ServerApp would drive it.
    """

    def make(client_app: ClientApp, node_configs: Mapping[str, Mapping[str, Any]]) -> InProcessGrid:
        return InProcessGrid(client_app, node_configs)

    return make


@pytest.fixture(scope="session")
def scenario_file(tmp_path_factory: pytest.TempPathFactory) -> Callable[..., Path]:
    """Writes scenario YAML text to a file and returns its path, unvalidated (for bad files too).

    Call it as ``scenario_file(text, name="scenario.yaml", folder=None)``: the file is
    ``name`` in ``folder``, or in a fresh folder under pytest's temporary directory.
    Session-scoped so that module-scoped fixtures can write scenarios too.
    """

    def write(text: str, *, name: str = "scenario.yaml", folder: Path | None = None) -> Path:
        path = (folder or tmp_path_factory.mktemp("scenario")) / name
        path.write_text(text)
        return path

    return write


@pytest.fixture(scope="session")
def write_scenario(scenario_file: Callable[..., Path]) -> Callable[..., Scenario]:
    """Writes scenario YAML text as :func:`scenario_file` does; returns the validated ``Scenario``.

    Raises ``fedcore.config.ConfigError`` for an invalid scenario, as ``load_scenario`` does.
    """

    def write(text: str, *, name: str = "scenario.yaml", folder: Path | None = None) -> Scenario:
        return load_scenario(scenario_file(text, name=name, folder=folder))

    return write


# --------------------------------------------------------------------------- fuzz counts

_FUZZ_OUTPUT: list[str] = []
"""What the fuzz suites (test modules named ``*fuzz*``) printed, for the terminal summary."""
_FUZZ_SEEN: dict[str, str] = {}


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    """Keep what a fuzz suite printed (its counts), also when pytest captured it."""
    module = report.nodeid.split("::", 1)[0]
    if "fuzz" not in Path(module).name:
        return
    # a later phase's report repeats what the earlier phases printed: keep only what is new
    seen = _FUZZ_SEEN.get(report.nodeid, "")
    printed = report.capstdout
    new = printed[len(seen) :] if printed.startswith(seen) else printed
    _FUZZ_SEEN[report.nodeid] = printed
    if new.strip():
        _FUZZ_OUTPUT.append(f"{report.nodeid}:")
        _FUZZ_OUTPUT.extend(f"  {line}" for line in new.strip().splitlines())


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """Print the fuzz suites' counts after the run, so CI logs show them."""
    if _FUZZ_OUTPUT:
        terminalreporter.section("fuzz counts")
        for line in _FUZZ_OUTPUT:
            terminalreporter.write_line(line)
