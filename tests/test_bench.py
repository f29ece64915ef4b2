"""The benchmark scripts in bench/ still run (they are not tests: this only runs them at a tiny size, so that a
change of the code they call cannot leave them broken until the next benchmark)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def _run(*args: str) -> str:
    proc = subprocess.run([sys.executable, *args], cwd=BENCH.parent, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def test_segments_scale_runs_at_a_tiny_size(tmp_path):
    out = _run(str(BENCH / "segments_scale.py"), "--customers", "2000", "--dir", str(tmp_path / "segments"))
    assert "sync plan rows" in out


def test_identity_scale_runs_at_a_tiny_size():
    assert "total graph + keys" in _run(str(BENCH / "identity_scale.py"), "--customers", "2000")


def test_pipeline_scale_parses_its_options():
    assert "--sizes" in _run(str(BENCH / "pipeline_scale.py"), "--help")
