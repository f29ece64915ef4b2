"""The warehouse writer lock (orchestration/locking.py) and readable DuckDB lock errors, with real processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from orchestration import locking, warehouse

PRIVDOM = Path(sys.executable).with_name("privdom")


def _hold_lock_in_child(data_dir: Path, seconds: float) -> subprocess.Popen:
    code = textwrap.dedent(
        f"""
        import sys, time
        from orchestration.locking import warehouse_lock
        with warehouse_lock({str(data_dir)!r}, what="test holder"):
            print("held", flush=True)
            time.sleep({seconds})
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout.readline().strip() == "held"
    return child


def test_second_holder_waits_says_for_whom_and_gets_the_lock_when_the_first_ends(tmp_path):
    child = _hold_lock_in_child(tmp_path, 1.5)
    messages: list[str] = []
    started = time.monotonic()
    with locking.warehouse_lock(tmp_path, what="second", log=messages.append, poll_seconds=0.05):
        waited = time.monotonic() - started
        assert locking.holder(tmp_path)["what"] == "second"
    child.wait()
    assert waited >= 1.0, "got the lock while the first holder (1.5 s) still had it"
    assert messages and "test holder" in messages[0] and f"PID {child.pid}" in messages[0]


def test_a_holder_that_has_not_said_who_it_is_yet_is_named_once_it_has(tmp_path):
    # the window between taking the lock and writing who holds it, made long: a waiter starting in it names
    # the holder once it is written, not "another privdom process" (two runs started at once met it)
    code = textwrap.dedent(
        f"""
        import fcntl, json, os, time
        fd = os.open({str(locking.lock_path(tmp_path))!r}, os.O_RDWR | os.O_CREAT, 0o644)
        fcntl.flock(fd, fcntl.LOCK_EX)
        print("locked", flush=True)
        time.sleep(0.8)
        os.pwrite(fd, (json.dumps({{"pid": os.getpid(), "what": "slow writer", "since": "now"}}) + "\\n").encode(), 0)
        time.sleep(1.0)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout.readline().strip() == "locked"
    messages: list[str] = []
    with locking.warehouse_lock(tmp_path, what="second", log=messages.append, poll_seconds=0.05):
        pass
    child.wait()
    assert messages and "slow writer" in messages[0] and f"PID {child.pid}" in messages[0], messages


def test_a_killed_holder_never_blocks_the_next(tmp_path):
    child = _hold_lock_in_child(tmp_path, 600)
    os.killpg(child.pid, signal.SIGKILL)
    child.wait()
    with locking.warehouse_lock(tmp_path, what="next", timeout=5, poll_seconds=0.05):
        assert locking.is_held_here(tmp_path)
    assert not locking.is_held_here(tmp_path)


def test_lock_is_reentrant_in_one_process_and_times_out_across_processes(tmp_path):
    with locking.warehouse_lock(tmp_path, what="outer"):
        with locking.warehouse_lock(tmp_path, what="inner", timeout=0.1):
            assert locking.holder(tmp_path)["what"] == "outer"
        assert locking.is_held_here(tmp_path)
    child = _hold_lock_in_child(tmp_path, 600)
    try:
        with pytest.raises(locking.WarehouseBusyTimeout, match="test holder"):
            with locking.warehouse_lock(tmp_path, timeout=0.3, poll_seconds=0.05, log=lambda m: None):
                pass
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def _hold_duckdb_in_child(path: Path, comment: str = "", args: tuple[str, ...] = ()) -> subprocess.Popen:
    code = f"import duckdb, time; c = duckdb.connect({str(path)!r}); print('open', flush=True); time.sleep(600){comment}"
    child = subprocess.Popen([sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, start_new_session=True)
    assert child.stdout.readline().strip() == "open"
    return child


def test_duckdb_lock_held_by_another_process_gives_a_readable_error(tmp_path, settings):
    path = settings.warehouse_path
    path.parent.mkdir(parents=True)
    duckdb.connect(str(path)).close()
    child = _hold_duckdb_in_child(path)
    try:
        with pytest.raises(warehouse.WarehouseLockedError) as info:
            warehouse.ensure_not_locked(path)
        message = str(info.value)
        assert "in use by another process" in message and f"PID {child.pid}" in message
        # dbt-duckdb reports the same DuckDB text inside its own; the translation finds it there too
        dbt_text = f"Runtime Error\n  IO Error: {str(info.value.__cause__)}\n"
        assert warehouse.is_lock_conflict(dbt_text)
        assert f"PID {child.pid}" in str(warehouse.locked_error(path, dbt_text))

        result = subprocess.run(
            [str(PRIVDOM), "--data-dir", str(settings.data_dir), "run"], capture_output=True, text=True, timeout=300
        )
        assert result.returncode == 1
        assert "in use by another process" in result.stderr and "Traceback" not in result.stderr
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()


def test_a_dbt_command_left_by_a_killed_run_is_named_as_privdoms_own(tmp_path, settings):
    """After `kill -9` of a run, its dbt command could hold the warehouse a few seconds more, and the next run
    told the user to close "a notebook, a DuckDB shell, a BI tool" (crash review). A holder that is privdom's
    warm dbt server (its command line names orchestration.warm; here a stand-in that does) is named as such."""
    path = settings.warehouse_path
    path.parent.mkdir(parents=True)
    duckdb.connect(str(path)).close()
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    warm = "  # as the warm server is started: from orchestration.warm import main"
    child = _hold_duckdb_in_child(path, comment=warm, args=("--parent", str(gone.pid)))
    try:
        with pytest.raises(warehouse.WarehouseLockedError) as info:
            warehouse.ensure_not_locked(path)
        message = str(info.value)
        assert "a dbt command of privdom" in message and f"kill {child.pid}" in message, message
        assert "notebook" not in message
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    # its run still going (here, this test's process): wait, not kill (diff review)
    child = _hold_duckdb_in_child(path, comment=warm, args=("--parent", str(os.getpid())))
    try:
        with pytest.raises(warehouse.WarehouseLockedError) as info:
            warehouse.ensure_not_locked(path)
        message = str(info.value)
        assert f"of a privdom process that is still going (PID {os.getpid()}); wait for it to end" in message, message
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
