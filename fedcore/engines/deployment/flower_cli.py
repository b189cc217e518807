"""Flower's command line and Control API as fedcore uses them: config arguments, commands, environment, connection, node registration."""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import re
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fedcore import pki
from fedcore.engines.deployment.errors import DeploymentConfigError, DeploymentError

__all__ = [
    "APP_DIR",
    "APP_FILES",
    "CONNECTION_NAME",
    "ControlApi",
    "config_args",
    "flower_command",
    "flower_env",
    "flower_error_text",
    "write_connection_config",
]

logger = logging.getLogger(__name__)

#: The Flower app directory that ``fed-coordinator`` submits (shipped as package data).
APP_DIR = Path(__file__).resolve().parent.parent.parent / "cli" / "flowerapp"

#: The files of that app directory, and so of the app bundle (FAB) Flower builds from it: the
#: coordinator submits exactly these, and each site builds the bundle it approves by default
#: from its own installed copy of them, so both sides build the same bytes.
APP_FILES = ("pyproject.toml", "fedcore_clientapp.py", "fedcore_serverapp.py")

#: Name of the SuperLink connection written into the coordinator's ``FLWR_HOME``.
CONNECTION_NAME = "fedcore"

_CONFIG_KEY = re.compile(r"^[A-Za-z0-9_.-]+$")


def _toml_string(value: str) -> str:
    if not any(c in value for c in "'\n\r"):
        return f"'{value}'"  # TOML literal string: no escapes at all
    if not any(c in value for c in '"\\\n\r'):
        return f'"{value}"'
    raise DeploymentConfigError(
        f"cannot pass {value!r} to Flower: a value may not hold a newline, nor both a "
        "quote (') and a double quote or backslash. Rename the file or directory."
    )


def config_args(values: Mapping[str, str | int | float | bool]) -> str:
    """Render values for Flower's ``--run-config`` / ``--node-config`` (``k='v' n=3``).

    Flower splits the text on spaces outside quotes and parses each value as TOML;
    strings become TOML literal strings, so paths need no escaping.

    Raises:
        DeploymentConfigError: for a key Flower cannot parse or a string that cannot be quoted.
    """
    parts = []
    for key, value in values.items():
        if not _CONFIG_KEY.match(key):
            raise DeploymentConfigError(f"config key {key!r} must match {_CONFIG_KEY.pattern}")
        if isinstance(value, bool):
            text = "true" if value else "false"
        elif isinstance(value, int | float):
            text = repr(value)
        else:
            text = _toml_string(value)
        parts.append(f"{key}={text}")
    return " ".join(parts)


def flower_command(name: str) -> str:
    """Absolute path of a Flower console script from this Python environment.

    Raises:
        DeploymentError: if it is neither next to ``sys.executable`` nor on ``PATH``.
    """
    sibling = Path(sys.executable).parent / name
    if sibling.is_file() and os.access(sibling, os.X_OK):
        return str(sibling)
    found = shutil.which(name)
    if found:
        return found
    raise DeploymentError(
        f"the Flower command {name!r} was found neither next to {sys.executable} nor on PATH; "
        "install flwr 1.42 into this environment (pip install 'flwr>=1.42,<1.43')"
    )


def flower_env(flwr_home: Path, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment for Flower processes: private ``FLWR_HOME``, no telemetry, scripts on PATH.

    * ``FLWR_HOME`` keeps installed app bundles, credentials and the connection
      config per coordinator / site instead of in ``~/.flwr``.
    * Flower's usage telemetry and update check are off unless the caller set
      them (a consortium's machines should not phone home).
    * The directory of the Flower scripts goes first on ``PATH``: SuperLink and
      SuperNode start ``flower-superexec`` (which starts ``flwr-serverapp`` /
      ``flwr-clientapp``) by bare name.

    Flower's polling is fixed in 1.42: an idle SuperNode polls every 3 s and
    ``Grid.send_and_receive`` every 3 s (fedcore's coordinator wraps its grid in
    :class:`fedcore.engines.polling.FastPollGrid`, which pulls every 0.1 s). ``FLWR_SUPEREXEC_TASK_POLL_INTERVAL``
    (SuperExec, default 1 s) is left alone: 0.2 s measured no faster round here.
    """
    env = dict(os.environ if base is None else base)
    env["FLWR_HOME"] = str(flwr_home)
    env.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    env.setdefault("FLWR_DISABLE_UPDATE_CHECK", "1")
    env["PYTHONUNBUFFERED"] = "1"
    scripts = str(Path(sys.executable).parent)
    env["PATH"] = os.pathsep.join([scripts, env.get("PATH", "")]).rstrip(os.pathsep)
    return env


def write_connection_config(flwr_home: Path, address: str, ca_cert: Path | None = None) -> Path:
    """Write ``FLWR_HOME/config.toml`` with the SuperLink connection ``fedcore``.

    Args:
        flwr_home: The coordinator's Flower home.
        address: ``HOST:PORT`` of the SuperLink as this machine reaches it.
        ca_cert: The CA that signed the SuperLink's certificate (``root-certificates``,
            TLS); ``None`` writes ``insecure = true``.

    Returns:
        The path of the file, for ``FLWR_HOME=... flwr ls fedcore``.
    """
    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    transport = (
        f"root-certificates = {_toml_string(str(Path(ca_cert).resolve()))}\n"
        if ca_cert is not None
        else "insecure = true\n"
    )
    path.write_text(
        "# Written by fed-coordinator: `FLWR_HOME=<this dir> flwr ls fedcore` inspects runs.\n"
        f'[superlink]\ndefault = "{CONNECTION_NAME}"\n\n'
        f"[superlink.{CONNECTION_NAME}]\naddress = {_toml_string(address)}\n{transport}",
        encoding="utf-8",
    )
    return path


# --------------------------------------------------------------------------- logs


def flower_error_text(exc: Exception) -> str:
    """The reason inside a Flower Control/Fleet API error, or the exception text."""
    response = getattr(exc, "response", None)
    text = getattr(response, "text", "") if response is not None else ""
    if text:
        with contextlib.suppress(ValueError, TypeError):
            data = json.loads(text)
            if isinstance(data, dict):
                message = data.get("detail") or data.get("public_message") or data.get("message")
                code = data.get("code")
                if message:
                    return f"[code: {code}] {message}" if code else str(message)
    return str(exc) or type(exc).__name__


class ControlApi:
    """Minimal client for the SuperLink's Control API (what ``flwr ls`` uses), in-process.

    Calling ``flwr ls`` instead would start a Python process that imports flwr
    (~2.4 s CPU) for every poll.
    """

    def __init__(self, address: str, flwr_home: Path, ca_cert: Path | None = None) -> None:
        from flwr.cli.typing import SuperLinkConnection
        from flwr.cli.utils import init_http_client_from_connection

        connection = SuperLinkConnection(
            name=CONNECTION_NAME,
            address=address,
            root_certificates=str(ca_cert) if ca_cert is not None else None,
            insecure=ca_cert is None,
        )
        previous = os.environ.get("FLWR_HOME")
        os.environ["FLWR_HOME"] = str(flwr_home)  # where the flwr CLI keeps credentials
        try:
            with contextlib.redirect_stdout(io.StringIO()):  # it prints "Using SuperLink: ..."
                self._client = init_http_client_from_connection(connection)
        finally:
            if previous is None:
                os.environ.pop("FLWR_HOME", None)
            else:
                os.environ["FLWR_HOME"] = previous

    def nodes(self) -> list[Any]:
        """Every node the SuperLink knows (``NodeInfo``: id, name, status, public key ...)."""
        from flwr.proto.control_pb2 import ListNodesRequest

        return list(self._client.ListNodes(ListNodesRequest()).nodes_info)

    def online_nodes(self) -> list[str]:
        """Names (site ids) of the nodes online now; a node without a name shows its id."""
        return sorted(
            node.name or str(node.node_id) for node in self.nodes() if node.status == "online"
        )

    def sync_nodes(self, keys: Mapping[str, bytes]) -> tuple[list[str], list[str], list[str]]:
        """Make the registered node keys the members' keys, before any site connects.

        Registers each key not registered yet under its site id as node name, and
        unregisters every registered node whose key is not in ``keys`` (a member that
        left, or a key replaced by a new provisioning). The SuperLink never lets an
        unregistered key register again.

        Args:
            keys: Site id -> public key as Flower stores it (PEM SubjectPublicKeyInfo).

        Returns:
            ``(registered, kept, unregistered)``: site ids registered now, site ids that
            were registered already, and names or ids of the nodes unregistered.

        Raises:
            DeploymentError: if the SuperLink refuses a registration.
        """
        from flwr.proto.control_pb2 import RegisterNodeRequest, UnregisterNodeRequest

        by_key = {key: site_id for site_id, key in keys.items()}
        if len(by_key) != len(keys):
            twins = sorted(s for s in keys if list(keys.values()).count(keys[s]) > 1)
            raise DeploymentError(
                f"sites {', '.join(twins)} have the same node public key in the coordinator "
                f"kit: each site needs its own key pair. Fix: {pki.PROVISION_FIX}"
            )
        registered: list[str] = []
        kept: list[str] = []
        unregistered: list[str] = []
        present: set[bytes] = set()
        for node in self.nodes():
            if node.status == "unregistered":
                continue
            site_id = by_key.get(bytes(node.public_key))
            if site_id is None:
                try:
                    self._client.UnregisterNode(UnregisterNodeRequest(node_id=node.node_id))
                except Exception as exc:
                    raise DeploymentError(
                        f"could not unregister node {node.node_id} ({node.name or 'no name'}), "
                        f"whose key is not in the coordinator kit: {flower_error_text(exc)}"
                    ) from None
                unregistered.append(node.name or str(node.node_id))
                continue
            present.add(bytes(node.public_key))
            kept.append(site_id)
            if node.name and node.name != site_id:
                logger.warning(
                    "node %d is registered as %r but its key is site %r's in the kit",
                    node.node_id,
                    node.name,
                    site_id,
                )
        for site_id, key in keys.items():
            if key in present:
                continue
            try:
                self._client.RegisterNode(RegisterNodeRequest(public_key=key, name=site_id))
            except Exception as exc:
                raise DeploymentError(
                    f"the SuperLink refused to register site {site_id!r}'s node key: "
                    f"{flower_error_text(exc)}. A key unregistered once cannot be registered "
                    "again in the same state directory: provision a new key for the site, or "
                    "start with a fresh --state"
                ) from None
            registered.append(site_id)
        return sorted(registered), sorted(kept), sorted(unregistered)

    def run_status(self, run_id: int) -> tuple[str, str, str]:
        """``(status, sub_status, details)``, e.g. ``("finished", "failed", "...")``."""
        from flwr.common.serde import run_from_proto
        from flwr.proto.control_pb2 import ListRunsRequest

        res = self._client.ListRuns(ListRunsRequest(run_id=run_id))
        for proto in res.run_dict.values():
            run = run_from_proto(proto)
            return run.status.status, run.status.sub_status, run.status.details
        raise DeploymentError(f"the SuperLink does not know run {run_id}")

    def stop_run(self, run_id: int) -> None:
        """Ask the SuperLink to stop run ``run_id`` (``flwr stop``)."""
        from flwr.proto.control_pb2 import StopRunRequest

        self._client.StopRun(StopRunRequest(run_id=run_id))

    def close(self) -> None:
        """Close the connection; errors are ignored."""
        with contextlib.suppress(Exception):
            self._client.close()
