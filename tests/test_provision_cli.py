"""`fedcore provision` as an operator runs it: kits written, kits checked, exit codes 0/1/2."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from typer.testing import CliRunner

from fedcore.cli.main import app
from secure import kitfiles

ROOT = Path(__file__).resolve().parents[1]
CONSORTIUM = textwrap.dedent(
    """
    name: hospitals
    sites: [h-north, h-south, h-east]
    coordinator: {hosts: [fed.example.org, 192.0.2.10]}
    """
)


def cli(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, ["provision", *args], env={"COLUMNS": "200"})
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, result.stderr


@pytest.fixture(scope="module")
def provisioned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "c.yaml").write_text(CONSORTIUM)
    code, out, err = cli(str(tmp / "c.yaml"), "--out", str(tmp / "kits"))
    assert code == 0, out + err
    return tmp / "kits", out


def secret_bytes(kits: Path) -> list[bytes]:
    out = []
    for p in kits.rglob("*"):
        if p.is_file() and p.name in kitfiles.SECRET_FILES and p.suffix != ".ctx":
            data = p.read_bytes()
            out += [ln for ln in data.splitlines() if len(ln) >= 32 and not ln.startswith(b"---")]
            key = (
                serialization.load_ssh_private_key(data, None)
                if p.name == kitfiles.NODE_KEY
                else serialization.load_pem_private_key(data, None)
            )
            assert isinstance(key, ec.EllipticCurvePrivateKey)
            out.append(f"{key.private_numbers().private_value:x}".encode())
    return out


def test_provision_prints_kits_and_next_steps(provisioned: tuple[Path, str]) -> None:
    kits, out = provisioned
    flat = " ".join(out.split())
    for kit in ("ca", "coordinator", "h-north", "h-south", "h-east"):
        assert f"{kits / kit}/" in flat
    assert "keep offline" in flat and "fed-coordinator start --kit" in flat
    assert "fedcore provision --check" in flat and "fed.example.org, 192.0.2.10" in flat
    for frag in secret_bytes(kits):
        assert frag.decode() not in out
    assert "PRIVATE" not in out


def test_check_passes(provisioned: tuple[Path, str]) -> None:
    kits, _ = provisioned
    code, out, _ = cli("--check", str(kits / "h-north"))
    assert code == 0, out
    assert "✓ certificate chain" in out and "✗" not in out and "all 9 checks passed" in out
    for frag in secret_bytes(kits):
        assert frag.decode() not in out


def test_check_every_kit_of_a_directory(provisioned: tuple[Path, str]) -> None:
    kits, _ = provisioned
    code, out, _ = cli("--check", str(kits))
    assert code == 0, out
    assert out.count("checks passed") == 5


def test_check_fails_with_reason(provisioned: tuple[Path, str], tmp_path: Path) -> None:
    kits = Path(shutil.copytree(provisioned[0], tmp_path / "kits"))
    os.chmod(kits / "h-south" / kitfiles.NODE_KEY, 0o640)
    code, out, _ = cli("--check", str(kits / "h-south"))
    assert code == 1
    assert "✗ permissions" in out and "chmod 600" in " ".join(out.split())
    assert "1 of 9 checks failed" in out


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["NOPE.yaml", "--out", "K"], "file not found"),
        (["--out", "K"], "missing CONSORTIUM"),
        ([], "missing CONSORTIUM and --out"),
        (["--check", "NOPE"], "does not exist"),
        (["c.yaml", "--check", "K"], "--check takes only a kit directory"),
        (["c.yaml", "--out", "K", "--host", "http://x"], "--host: not an IP address or DNS name"),
        (["bad.yaml", "--out", "K"], "sites: invalid site id"),
    ],
)
def test_bad_input_exits_2(tmp_path: Path, args: list[str], says: str) -> None:
    (tmp_path / "c.yaml").write_text(CONSORTIUM)
    (tmp_path / "bad.yaml").write_text("name: x\nsites: [Bank A]\n")
    args = [
        str(tmp_path / a) if a in ("NOPE.yaml", "NOPE", "c.yaml", "bad.yaml", "K") else a
        for a in args
    ]
    code, out, err = cli(*args)
    assert code == 2, out + err
    assert says in " ".join(err.split()) and "Traceback" not in err
    assert not (tmp_path / "K").exists()


def test_existing_kits_need_force(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONSORTIUM)
    kits = tmp_path / "kits"
    assert cli(str(tmp_path / "c.yaml"), "--out", str(kits))[0] == 0
    code, _, err = cli(str(tmp_path / "c.yaml"), "--out", str(kits))
    text = " ".join(err.split())
    assert code == 2 and "already exist" in text
    assert "run `fedcore provision` again with --force" in text and "force=True" not in text
    code, out, _ = cli(
        str(tmp_path / "c.yaml"), "--out", str(kits), "--force", "--host", "10.1.2.3"
    )
    assert code == 0 and f"replaced {kits / 'coordinator'}/" in " ".join(out.split())
    assert "certificate names: 10.1.2.3" in out
    assert cli("--check", str(kits / "coordinator"))[0] == 0


def test_scenario_file_entry_point(tmp_path: Path) -> None:
    """The installed command: a scenario file provisions; a bad path exits 2 without a traceback."""

    def fedcore(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "fedcore.cli.main", "provision", *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    res = fedcore(str(ROOT / "scenarios" / "bank-fraud.yaml"), "--out", str(tmp_path / "kits"))
    assert res.returncode == 0, res.stderr
    assert sorted(p.name for p in (tmp_path / "kits").iterdir())[:5] == [
        "bank-a",
        "bank-b",
        "bank-c",
        "bank-d",
        "bank-e",
    ]
    res = fedcore("--check", str(tmp_path / "missing"))
    assert res.returncode == 2 and "Traceback" not in res.stderr


def test_a_long_out_path_stays_on_one_line_when_not_a_terminal(tmp_path: Path) -> None:
    (tmp_path / "c.yaml").write_text(CONSORTIUM)
    kits = tmp_path / ("a-consortium-folder-with-a-long-name-" * 2) / "kits"
    res = CliRunner().invoke(
        app, ["provision", str(tmp_path / "c.yaml"), "--out", str(kits)], env={"COLUMNS": "80"}
    )
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(
        app,
        ["provision", str(tmp_path / "c.yaml"), "--out", str(kits), "--force"],
        env={"COLUMNS": "80"},
    )
    assert res.exit_code == 0, res.output
    assert len(str(kits)) > 80
    assert f"replaced {kits / 'coordinator'}/ (its old keys and certificates are gone)\n" in (
        res.stdout
    )
