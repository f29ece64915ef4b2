"""Ingestion's scratch space lives in the data directory (`<data dir>/tmp/`), and what a killed run left there is
removed by the next one (orchestration/scratch.py)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from orchestration import scratch
from orchestration.ingest import core, ingest_source

CE_CSV = ("event_id,occurred_at,channel,event_type,openid,unionid,wecom_external_userid,phone,member_id,campaign,wecom_staff_userid\n"
          "e1,2024-01-31 10:00:00,wecom,follow,o1,,,,,春节大促,\n")


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def _made(parent: Path, name: str, *, age_seconds: float = 0.0) -> Path:
    d = parent / name
    d.mkdir(parents=True)
    (d / "part-000001.parquet").write_bytes(b"PAR1")
    if age_seconds:
        then = time.time() - age_seconds
        os.utime(d, (then, then))
    return d


def test_sweep_removes_the_directories_of_processes_that_are_gone(tmp_path):
    host, dead, day = socket.gethostname(), _dead_pid(), 24 * 3600
    gone = _made(tmp_path, f"ingest-orders.{dead}@{host}.abc123")
    mine = _made(tmp_path, f"ingest-orders.{os.getpid()}@{host}.abc123")
    parent_alive = _made(tmp_path, f"ingest-orders.{os.getppid()}@{host}.abc123")
    other_host = _made(tmp_path, f"ingest-orders.{dead}@{host}-elsewhere.abc123")  # its pid means nothing here
    other_host_old = _made(tmp_path, f"ingest-orders.{dead}@{host}-elsewhere.def456", age_seconds=day + 60)
    unknown = _made(tmp_path, "something-else")
    unknown_old = _made(tmp_path, "something-older", age_seconds=day + 60)
    (tmp_path / f"not-a-dir.{dead}@{host}.abc").write_text("x")
    removed = scratch.sweep(tmp_path)
    assert sorted(p.name for p in removed) == sorted([gone.name, other_host_old.name])
    # a name this module did not write is never removed, however old (tmp/ may hold the user's own folders)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [mine.name, parent_alive.name, other_host.name, unknown.name, unknown_old.name, f"not-a-dir.{dead}@{host}.abc"])
    assert scratch.sweep(tmp_path / "missing") == []


def test_ingestion_spills_into_the_data_directory_and_cleans_up(con, settings, land, tmp_path, monkeypatch):
    system_tmp = tmp_path / "system-tmp"
    system_tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(system_tmp))
    land("channel_events/dt=2024-01-31/utf8.csv", CE_CSV)
    land("channel_events/dt=2024-01-31/gbk.csv", CE_CSV.replace("e1,", "e2,").encode("gbk"))  # transcoded first
    transcoded: list[Path] = []
    real_path = core._Scratch.path
    monkeypatch.setattr(core._Scratch, "path", lambda self: transcoded.append(real_path(self)) or transcoded[-1])
    during: list[list[Path]] = []

    def validate(frame):
        during.append(sorted((settings.data_dir / "tmp").rglob("*.parquet")))
        return None

    report = ingest_source(con, "channel_events", settings, "t", validate=validate)
    assert [f.status for f in report.files] == ["loaded", "loaded"] and report.rows_loaded == 2
    scratch_dir = settings.data_dir / "tmp"
    # the parts and the transcoded file were in the data directory, one directory for the run
    assert during and during[0] and {p.parent for p in during[0]} == {Path(report.frame.state()[0][0]).parent}
    spill = Path(report.frame.state()[0][0]).parent
    assert spill.parent == scratch_dir and spill.name.startswith(f"ingest-channel_events.{os.getpid()}@")
    assert transcoded and all(p.is_relative_to(spill) for p in transcoded)
    assert list(system_tmp.iterdir()) == []
    report.frame.close()
    assert list(scratch_dir.iterdir()) == []


def test_a_killed_runs_scratch_is_removed_by_the_next_run(con, settings, land):
    left = _made(settings.data_dir / "tmp", f"ingest-orders.{_dead_pid()}@{socket.gethostname()}.xyz789")
    land("channel_events/dt=2024-01-31/utf8.csv", CE_CSV)
    report = ingest_source(con, "channel_events", settings, "t")
    report.frame.close()
    assert not left.exists() and list((settings.data_dir / "tmp").iterdir()) == []
