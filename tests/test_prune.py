"""`privdom prune` (orchestration/prune.py): old run history, run logs and sync audit rows go, and the disk space
with them; the runs that hold a check's latest evaluation (which gates exports) and everything newer stay.

Runs are real Dagster runs of a tiny job on the data directory's own instance config (privdom's event log);
"older" is made by pruning as of a later `now`."""

from __future__ import annotations

import datetime as dt
import os
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest

from orchestration.cli import instance_config_text
from orchestration.defs.segments import _failed_at_error
from orchestration.prune import prune
from orchestration.segments.sync import ensure_sync_tables
from orchestration.settings import load_settings
from orchestration.warehouse import connect

DAY = 86_400
PRIVDOM = Path(sys.executable).with_name("privdom")
CHECK_PASSES = {"value": False}


@dg.asset
def gated():
    return 1


@dg.asset_check(asset=gated, blocking=True)
def gated_is_good():
    return dg.AssetCheckResult(passed=CHECK_PASSES["value"], severity=dg.AssetCheckSeverity.ERROR)


@dg.asset
def other():
    print("some step output")  # captured under storage/<run id>/
    return 2


@pytest.fixture(params=["data", "data &1 [x]"])
def data(tmp_path, monkeypatch, request):
    # odd characters in the path: the kept runs are read through a quoted SQLite URI, which a "#" cut short before
    # (the diff review); a "#" is now refused (settings.load_settings: dbt-duckdb cannot take it)
    settings = load_settings(tmp_path / request.param)
    settings.dagster_home.mkdir(parents=True)
    (settings.dagster_home / "dagster.yaml").write_text(instance_config_text(settings), encoding="utf-8")
    monkeypatch.setenv("DAGSTER_HOME", str(settings.dagster_home))
    return settings


def _run(instance, assets, checks=()) -> str:
    result = dg.materialize([*assets, *checks], instance=instance, raise_on_error=False)
    return result.run_id


def _run_files_exist(settings, run_id) -> bool:
    return (settings.dagster_home / "history" / "runs" / f"{run_id}.db").exists()


GATE = dg.AssetCheckKey(dg.AssetKey("gated"), "gated_is_good")


def test_old_runs_go_with_their_files_and_the_latest_check_evaluations_stay(data):
    with dg.DagsterInstance.get() as instance:
        CHECK_PASSES["value"] = False
        failed_gate = _run(instance, [gated], [gated_is_good])  # the gate's latest evaluation: failed
        plain = [_run(instance, [other]) for _ in range(2)]  # no check evaluated
    assert all(_run_files_exist(data, r) for r in [failed_gate, *plain])
    assert (data.dagster_home / "storage" / plain[0]).exists()
    later = time.time() + 2 * DAY

    dry = prune(data, older_than_days=1, now=later, dry_run=True)
    assert sorted(dry.runs) == sorted(plain) and dry.runs_kept_for_checks == 1 and dry.run_bytes > 0
    assert all(_run_files_exist(data, r) for r in plain)  # a dry run removes nothing

    assert prune(data, older_than_days=1, now=time.time()).runs == []  # nothing is a day old yet

    index = data.dagster_home / "history" / "runs" / "index.db"
    index_before = index.stat().st_size
    report = prune(data, older_than_days=1, now=later)
    assert sorted(report.runs) == sorted(plain) and report.runs_kept_for_checks == 1
    assert not any(_run_files_exist(data, r) for r in plain)
    assert not any((data.dagster_home / "storage" / r).exists() for r in plain)
    assert report.compacted == ["dagster/history/runs/index.db", "dagster/history/runs.db"]  # relative to the data directory
    assert index.stat().st_size < index_before
    assert sorted(p.name for p in data.data_dir.parent.iterdir()) == [data.data_dir.name]  # no file beside it
    with dg.DagsterInstance.get() as instance:
        assert [instance.get_run_by_id(r) for r in plain] == [None, None]
        assert instance.get_run_by_id(failed_gate) is not None
        # the failed gate still holds exports back after the prune
        assert [f.split(" ")[0] for f in _failed_at_error(instance, [GATE])] == ["gated:gated_is_good"]

        CHECK_PASSES["value"] = True
        passed_gate = _run(instance, [gated], [gated_is_good])  # a newer evaluation: the old run no longer holds the latest
    report = prune(data, older_than_days=1, now=later)
    assert report.runs == [failed_gate] and report.runs_kept_for_checks == 1  # the passed evaluation's run is kept
    with dg.DagsterInstance.get() as instance:
        assert instance.get_run_by_id(passed_gate) is not None and _failed_at_error(instance, [GATE]) == []
    # Dagster's delete_run leaves a run's check executions in index.db; prune removes them too
    con = sqlite3.connect(index)
    assert con.execute("select distinct run_id from asset_check_executions").fetchall() == [(passed_gate,)]
    con.close()


def _snapshot_ids(settings) -> set[str]:
    con = sqlite3.connect(settings.dagster_home / "history" / "runs.db")
    try:
        return {i for (i,) in con.execute("select snapshot_id from snapshots")}
    finally:
        con.close()


def test_the_snapshots_of_pruned_runs_go_and_those_of_kept_runs_stay(data):
    # runs of other jobs (a subset from the UI, a changed code or settings) store their own job and execution-plan
    # snapshots, and until the dbt resource stopped naming the warm client every privdom run did; Dagster's
    # delete_run leaves them
    with dg.DagsterInstance.get() as instance:
        old = _run(instance, [other])
        old_snaps = _snapshot_ids(data)
        kept = _run(instance, [gated], [gated_is_good])
        kept_run = instance.get_run_by_id(kept)
        kept_snaps = {kept_run.job_snapshot_id, kept_run.execution_plan_snapshot_id}
    assert len(old_snaps) == 2 and not old_snaps & kept_snaps

    report = prune(data, older_than_days=1, now=time.time() + 2 * DAY)
    assert report.runs == [old]
    assert _snapshot_ids(data) == kept_snaps
    with dg.DagsterInstance.get() as instance:  # the kept run still reads its snapshots
        run = instance.get_run_by_id(kept)
        assert instance.get_job_snapshot(run.job_snapshot_id) is not None
        assert instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id) is not None


def test_old_run_logs_and_sync_audit_rows_go_and_the_sync_state_stays(data):
    now = time.time()
    logs = data.data_dir / "logs"
    logs.mkdir(parents=True)
    old_log, new_log, other_file = logs / "run-20260101T020000.log", logs / "run-20261206T020000.log", logs / "notes.txt"
    for path in (old_log, new_log, other_file):
        path.write_text("x" * 100, encoding="utf-8")
    os.utime(old_log, (now - 10 * DAY, now - 10 * DAY))
    os.utime(other_file, (now - 10 * DAY, now - 10 * DAY))  # not a run log: left alone

    old, new = dt.datetime.fromtimestamp(now - 10 * DAY, dt.UTC), dt.datetime.fromtimestamp(now - 2 * DAY, dt.UTC)
    con = connect(data.warehouse_path)
    ensure_sync_tables(con)
    for at in (old, old, new):
        con.execute("insert into segments.sync_log values ('s', ?, 'hook', 'seg', 'C1', 'add', 'accepted', null, 1, null)", [at])
    con.execute("insert into segments.sync_runs (sync_run_id, destination, segment, started_at, finished_at) values "
                "('s1', 'hook', 'seg', ?, ?), ('s2', 'hook', 'seg', ?, null), ('s3', 'hook', 'seg', ?, ?)",
                [old, old, old, new, new])
    con.execute("insert into segments.sync_state (destination, segment, customer_key) values ('hook', 'seg', 'C1')")
    con.close()

    dry = prune(data, older_than_days=7, now=now, dry_run=True)
    assert (dry.logs, dry.sync_log_rows, dry.sync_runs_rows) == ([old_log], 2, 2)
    assert old_log.exists()

    report = prune(data, older_than_days=7, now=now)
    assert (report.logs, report.log_bytes, report.sync_log_rows, report.sync_runs_rows) == ([old_log], 100, 2, 2)
    assert not old_log.exists() and new_log.exists() and other_file.exists()
    con = connect(data.warehouse_path, read_only=True)
    assert con.execute("select logged_at from segments.sync_log").fetchall() == [(new,)]
    assert con.execute("select sync_run_id from segments.sync_runs").fetchall() == [("s3",)]
    assert con.execute("select count(*) from segments.sync_state").fetchone() == (1,)  # the state is not history
    con.close()


def test_the_command_line(tmp_path):
    def privdom(*args):
        return subprocess.run([str(PRIVDOM), *args], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "DAGSTER_HOME": str(tmp_path / "elsewhere")})

    refused = privdom("prune", "--older-than", "0", "--data-dir", str(tmp_path / "d"))
    assert refused.returncode == 2 and "must be 1 or more" in refused.stderr
    missing = privdom("prune", "--data-dir", str(tmp_path / "missing"))
    assert missing.returncode == 0 and "does not exist; nothing to prune" in missing.stdout
    assert not (tmp_path / "missing").exists()
    (tmp_path / "d").mkdir()
    dry = privdom("prune", "--dry-run", "--data-dir", str(tmp_path / "d"))
    assert dry.returncode == 0, dry.stderr
    assert "would remove what is older than" in dry.stdout and "Dagster runs      0" in dry.stdout
    assert not (tmp_path / "elsewhere").exists()  # the data directory's own Dagster instance, whatever DAGSTER_HOME says


def test_files_left_by_runs_deleted_elsewhere_go_too(data):
    """`dagster run delete` and the UI's *Delete run* remove a run's record and events but leave its event-log
    file, its captured output and its check executions; prune removes those once they are older than the cutoff."""
    with dg.DagsterInstance.get() as instance:
        CHECK_PASSES["value"] = True
        deleted = _run(instance, [gated], [gated_is_good])
        kept = _run(instance, [gated], [gated_is_good])  # the latest evaluation
        instance.delete_run(deleted)
    assert _run_files_exist(data, deleted) and (data.dagster_home / "storage" / deleted).exists()
    assert prune(data, older_than_days=1).leftovers == 0  # not old yet
    later = time.time() + 2 * DAY
    assert prune(data, older_than_days=1, now=later, dry_run=True).leftovers == 1 and _run_files_exist(data, deleted)
    report = prune(data, older_than_days=1, now=later)
    assert (report.leftovers, report.runs, report.runs_kept_for_checks) == (1, [], 1)
    assert not _run_files_exist(data, deleted) and not (data.dagster_home / "storage" / deleted).exists()
    assert _run_files_exist(data, kept)
    con = sqlite3.connect(data.dagster_home / "history" / "runs" / "index.db")
    assert con.execute("select distinct run_id from asset_check_executions").fetchall() == [(kept,)]
    con.close()
    assert "leftover files    1" in report.describe()


def test_a_warehouse_held_by_another_process_leaves_the_sync_rows_and_says_so(data, monkeypatch):
    from orchestration import warehouse

    con = connect(data.warehouse_path)
    ensure_sync_tables(con)
    con.close()

    def held(*args, **kwargs):
        raise warehouse.WarehouseLockedError("the warehouse is in use by another process (PID 4242: duckdb)")

    monkeypatch.setattr(warehouse, "connect", held)
    report = prune(data, older_than_days=1)
    assert report.sync_error and "PID 4242" in report.describe()
