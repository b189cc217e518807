"""`--help` of the benchmark and the training ground answers at once: torch loads only to do the work."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

# run the command's --help in this interpreter, then say whether torch (or ONNX) was loaded
WRAPPER = """
import runpy, sys
sys.argv = [{argv0!r}, "--help"]
try:
    {run}
except SystemExit as exc:
    code = exc.code or 0
else:
    code = 0
heavy = sorted(m for m in ("torch", "onnx", "onnxruntime", "torch_geometric") if m in sys.modules)
print("HEAVY:", ",".join(heavy) or "none")
sys.exit(code)
"""


@pytest.mark.parametrize(
    ("argv0", "run"),
    [
        (
            "benchmarks/quantized_inference.py",
            "runpy.run_path('benchmarks/quantized_inference.py', run_name='__main__')",
        ),
        (
            "scheduling.training_ground",
            "runpy.run_module('scheduling.training_ground', run_name='__main__')",
        ),
    ],
)
def test_help_is_fast_and_loads_no_torch(argv0: str, run: str) -> None:
    start = time.perf_counter()
    res = subprocess.run(
        [sys.executable, "-c", WRAPPER.format(argv0=argv0, run=run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    seconds = time.perf_counter() - start
    assert res.returncode == 0, res.stderr
    assert "--help" in res.stdout and "Usage" in res.stdout
    assert "HEAVY: none" in res.stdout
    assert seconds < 10, f"{argv0} --help took {seconds:.1f} s"  # was 12-20 s with torch
