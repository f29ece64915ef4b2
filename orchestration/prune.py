"""`privdom prune`: remove what every run adds and nothing reads again, older than a number of days.

A run adds, whatever the data's size (the soak review: 38 daily runs on one data directory):
- Dagster's run history in `$PRIVDOM_HOME/dagster`: a SQLite event log per run (`history/runs/<run id>.db`,
  ~1.7 MB), its events mirrored into `history/runs/index.db` (~1.6 MB) and the steps' captured output
  (`storage/<run id>/`, ~40 KB): ~3.6 MB a run, ~1.3 GB a year of daily runs. `dagster run delete` removes a
  run's rows but frees no disk: the run's file and compute logs stay and SQLite keeps the freed pages.
- `logs/run-*.log` (~40 KB a run), and `logs/dbt/` (`privdom dbt`'s log, with the rows `dbt show` showed).
- `segments.sync_log` and `segments.sync_runs`: a row per customer sent (add or remove) and per sync. They
  are an audit trail: nothing privdom does reads them (the state that decides the next sync is in
  `sync_state`, `sync_pending` and `sync_skipped`, which are never pruned).
Also the files and check rows of runs Dagster no longer knows (deleted by `dagster run delete`, the UI's
*Delete*, or a prune cut short).

Kept whatever their age: runs not finished, and every run that holds the latest evaluation of an asset check
(the blocking checks hold exports back by their latest evaluation, whichever run made it:
orchestration/defs/segments.py). Exports have their own limit (`[exports] keep`). The raw rows, the identity
state and the marts are the data, not history: prune never touches them.
"""

from __future__ import annotations

import contextlib
import re
import shutil
import sqlite3
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from orchestration.locking import RUN_LOCK_FILE_NAME, warehouse_lock
from orchestration.settings import Settings

SECONDS_PER_DAY = 86_400


@dataclass
class PruneReport:
    cutoff: datetime
    dry_run: bool
    runs: list[str] = field(default_factory=list)  # run ids removed (or that would be)
    runs_kept_for_checks: int = 0  # older finished runs kept: they hold a check's latest evaluation
    run_bytes: int = 0  # their event-log files and captured output
    logs: list[Path] = field(default_factory=list)
    log_bytes: int = 0
    sync_log_rows: int = 0
    sync_runs_rows: int = 0
    sync_error: str | None = None  # the warehouse could not be opened (another process holds it): not pruned
    leftovers: int = 0  # files of runs Dagster no longer knows (`dagster run delete`, the UI's Delete, a prune cut short)
    compacted: list[str] = field(default_factory=list)  # Dagster's shared SQLite files compacted
    not_compacted: list[str] = field(default_factory=list)  # "file: why" (another process had it open)

    def describe(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        lines = [
            f"privdom prune: {verb} what is older than {self.cutoff:%Y-%m-%d %H:%M} UTC",
            f"  Dagster runs      {len(self.runs):,} ({_mb(self.run_bytes)} of event logs and step output"
            + (f"; {self.runs_kept_for_checks} older kept: they hold a check's latest evaluation" if self.runs_kept_for_checks else "")
            + ")",
            f"  run logs          {len(self.logs):,} ({_mb(self.log_bytes)})",
            f"  sync_log rows     {self.sync_log_rows:,}",
            f"  sync_runs rows    {self.sync_runs_rows:,}",
        ]
        if self.leftovers:
            lines.insert(2, f"  leftover files    {self.leftovers:,} (of runs deleted before, by `dagster run delete` or the UI)")
        if self.sync_error:
            lines.append(f"  sync audit rows not pruned: {self.sync_error}")
        if self.compacted:
            lines.append(f"  compacted         {', '.join(self.compacted)}")
        for item in self.not_compacted:
            lines.append(f"  not compacted     {item}")
        return "\n".join(lines)


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def _size(path: Path) -> int:
    if path.is_dir():
        return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())
    return path.stat().st_size if path.is_file() else 0


def _run_files(dagster_home: Path, run_id: str) -> list[Path]:
    """A run's own files under DAGSTER_HOME: its event-log shard (with SQLite's side files) and the steps'
    captured stdout/stderr (Dagster's LocalComputeLogManager keeps them in storage/<run id>/)."""
    shard = dagster_home / "history" / "runs" / f"{run_id}.db"
    return [shard, shard.with_name(shard.name + "-wal"), shard.with_name(shard.name + "-shm"),
            dagster_home / "storage" / run_id]


def _runs_holding_latest_check_evaluations(index_db: Path) -> set[str]:
    """Run ids that hold the latest completed evaluation of some asset check, as
    orchestration/defs/segments.py reads them (the newest record per check)."""
    if not index_db.exists():
        return set()
    # as_uri quotes the path: a raw `#` in a data directory's path cut the URI there, and SQLite opened (and
    # created) another file, so no run was kept for its checks (the diff review)
    con = sqlite3.connect(f"{index_db.resolve().as_uri()}?mode=ro", uri=True, timeout=30)
    try:
        if not con.execute("select 1 from sqlite_master where name = 'asset_check_executions'").fetchone():
            return set()
        rows = con.execute(
            """select run_id from asset_check_executions as a
               where id = (select max(id) from asset_check_executions as b
                           where b.asset_key = a.asset_key and b.check_name = a.check_name
                             and b.execution_status in ('SUCCEEDED', 'FAILED'))"""
        ).fetchall()
    finally:
        con.close()
    return {r[0] for r in rows if r[0]}


def _forget_check_executions(index_db: Path, *, known: set[str], keep: set[str]) -> None:
    """Remove the `asset_check_executions` rows of runs Dagster no longer knows (not in `known`), but those
    in `keep`: delete_run leaves them (each with its evaluation event, most of what a run adds to index.db),
    and the history file kept growing."""
    if not index_db.exists():
        return
    con = sqlite3.connect(index_db, timeout=30)
    try:
        with con:
            if con.execute("select 1 from sqlite_master where name = 'asset_check_executions'").fetchone():
                run_ids = [r for (r,) in con.execute("select distinct run_id from asset_check_executions")
                           if r and r not in known and r not in keep]
                for start in range(0, len(run_ids), 500):
                    chunk = run_ids[start : start + 500]
                    con.execute(f"delete from asset_check_executions where run_id in ({', '.join('?' * len(chunk))})", chunk)
    finally:
        con.close()


def _forget_snapshots(runs_db: Path) -> int:
    """Remove the job and execution-plan snapshots (`runs.db`'s `snapshots`) that no remaining run uses, nor
    a remaining job snapshot names as its parent; returns how many. Dagster's delete_run leaves them. Runs of the
    same code share a pair (~21 KB); each change of the code or the settings that shapes the job, each subset
    launched from the UI, stores another, and until the dbt resource's config named the installed dbt instead of
    the warm server's client (a new temporary path each run), every `privdom run` stored one."""
    import json
    import zlib

    if not runs_db.exists():
        return 0
    con = sqlite3.connect(runs_db, timeout=30)
    try:
        tables = {r[0] for r in con.execute("select name from sqlite_master where type = 'table'")}
        if not {"runs", "snapshots"} <= tables:
            return 0
        used: set[str] = set()
        for snapshot_id, body in con.execute("select snapshot_id, run_body from runs"):
            used.add(snapshot_id)
            with contextlib.suppress(ValueError, TypeError):
                run = json.loads(body)
                used.update(v for v in (run.get("pipeline_snapshot_id"), run.get("execution_plan_snapshot_id")) if v)
        # a subset job's snapshot names its parent's (lineage_snapshot.parent_snapshot_id), which must stay too
        pending = list(used)
        while pending:
            row = con.execute("select snapshot_body from snapshots where snapshot_id = ?", [pending.pop()]).fetchone()
            if row is None:
                continue
            try:
                text = zlib.decompress(row[0]).decode()
            except (zlib.error, TypeError, UnicodeDecodeError):
                continue
            for parent in re.findall(r'"parent_snapshot_id": ?"([0-9a-f]+)"', text):
                if parent not in used:
                    used.add(parent)
                    pending.append(parent)
        orphans = [i for (i,) in con.execute("select snapshot_id from snapshots") if i not in used]
        with con:
            for start in range(0, len(orphans), 500):
                chunk = orphans[start : start + 500]
                con.execute(f"delete from snapshots where snapshot_id in ({', '.join('?' * len(chunk))})", chunk)
        return len(orphans)
    finally:
        con.close()


def _compact(path: Path) -> str | None:
    """VACUUM a SQLite file (it gives the pages of deleted rows back to the file system); the reason when
    another process holds it (a `privdom ui` reading the history): it is compacted by a later prune."""
    if not path.exists():
        return None
    try:
        con = sqlite3.connect(path, timeout=5)
        try:
            con.execute("vacuum")
        finally:
            con.close()
    except sqlite3.OperationalError as exc:
        return str(exc)
    return None


def prune(settings: Settings, *, older_than_days: int, dry_run: bool = False, now: float | None = None) -> PruneReport:
    """Remove finished Dagster runs, run logs and sync audit rows older than `older_than_days` (see the module
    docstring for what is kept). Holds the run lock: a `privdom run` in progress is waited for, and none starts
    until the prune is done. DAGSTER_HOME must point at this data directory's instance (cli._prepare_environment)."""
    if older_than_days < 1:
        raise ValueError("older_than_days must be 1 or more")
    now = time.time() if now is None else now
    cutoff_ts = now - older_than_days * SECONDS_PER_DAY
    cutoff = datetime.fromtimestamp(cutoff_ts, tz=timezone.utc)
    report = PruneReport(cutoff=cutoff, dry_run=dry_run)
    with warehouse_lock(settings.data_dir, name=RUN_LOCK_FILE_NAME, what="privdom prune"):
        _prune_runs(settings, cutoff, report)
        _prune_logs(settings, cutoff_ts, report)
        _prune_sync_audit(settings, cutoff, report)
    return report


def _prune_runs(settings: Settings, cutoff: datetime, report: PruneReport) -> None:
    home = settings.dagster_home
    if not (home / "history").exists():
        return
    import dagster as dg

    finished = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED]
    index_db = home / "history" / "runs" / "index.db"
    with dg.DagsterInstance.get() as instance:
        old = [r.dagster_run.run_id for r in instance.get_run_records(
            filters=dg.RunsFilter(statuses=finished, created_before=cutoff))]
        holding = _runs_holding_latest_check_evaluations(index_db)
        report.runs = [run_id for run_id in old if run_id not in holding]
        report.runs_kept_for_checks = len(old) - len(report.runs)
        report.run_bytes = sum(_size(p) for run_id in report.runs for p in _run_files(home, run_id))
        if not report.dry_run:
            for run_id in report.runs:
                instance.delete_run(run_id)  # its run record, its events and their mirror in index.db
        known = set(instance.get_run_ids())
    leftovers = _leftover_run_ids(home, known | set(report.runs), cutoff.timestamp())
    report.leftovers = len(leftovers)
    report.run_bytes += sum(_size(p) for run_id in leftovers for p in _run_files(home, run_id))
    if report.dry_run:
        return
    # after the instance is closed: its event log keeps each run file's connection open
    for run_id in [*report.runs, *leftovers]:
        for path in _run_files(home, run_id):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
    if report.runs or leftovers:
        _forget_check_executions(index_db, known=known, keep=holding)
        _forget_snapshots(home / "history" / "runs.db")
        for path in (index_db, home / "history" / "runs.db"):
            why = _compact(path)
            if why is None and path.exists():
                report.compacted.append(str(path.relative_to(settings.data_dir)))
            elif why is not None:
                report.not_compacted.append(f"{path.relative_to(settings.data_dir)}: {why}")


_RUN_ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")


def _leftover_run_ids(home: Path, known: set[str], cutoff_ts: float) -> list[str]:
    """Run ids with files under DAGSTER_HOME (an event-log shard, captured output) but no run record, older
    than the cutoff: what `dagster run delete` and the UI's *Delete* leave, or a prune cut short."""
    found = set()
    for folder, suffix in ((home / "history" / "runs", ".db"), (home / "storage", "")):
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            name = path.name[: -len(suffix)] if suffix and path.name.endswith(suffix) else path.name
            if _RUN_ID.fullmatch(name) and name not in known and path.stat().st_mtime < cutoff_ts:
                found.add(name)
    return sorted(found)


def _prune_logs(settings: Settings, cutoff_ts: float, report: PruneReport) -> None:
    logs = settings.data_dir / "logs"
    if not logs.is_dir():
        return
    # each run's log, and `privdom dbt`'s (dbt rotates it as dbt.log.1, …), which holds rows `dbt show` showed
    for path in sorted([*logs.glob("run-*.log"), *logs.glob("dbt/dbt.log*")]):
        stat = path.stat()
        if stat.st_mtime < cutoff_ts:
            report.logs.append(path)
            report.log_bytes += stat.st_size
            if not report.dry_run:
                path.unlink()


def _prune_sync_audit(settings: Settings, cutoff: datetime, report: PruneReport) -> None:
    if not settings.warehouse_path.exists():
        return
    from orchestration.segments.sync import LOG_TABLE, RUNS_TABLE
    from orchestration.warehouse import WarehouseLockedError, connect

    with warehouse_lock(settings.data_dir, what="privdom prune"):
        try:
            con = connect(settings.warehouse_path, read_only=report.dry_run)
        except WarehouseLockedError as exc:  # a DuckDB shell or notebook on the warehouse: the rest still counts
            report.sync_error = str(exc)
            return
        try:
            tables = {r[0] for r in con.execute(
                "select schema_name || '.' || table_name from duckdb_tables() where schema_name = 'segments'").fetchall()}
            # sync_runs by when the sync ended (its start when it never ended)
            wheres = {LOG_TABLE: "logged_at < ?", RUNS_TABLE: "coalesce(finished_at, started_at) < ?"}
            counts = {}
            for table, where in wheres.items():
                if table not in tables:
                    counts[table] = 0
                    continue
                counts[table] = con.execute(f"select count(*) from {table} where {where}", [cutoff]).fetchone()[0]
                if counts[table] and not report.dry_run:
                    con.execute(f"delete from {table} where {where}", [cutoff])
            if not report.dry_run and any(counts.values()):
                con.execute("checkpoint")
        finally:
            con.close()
    report.sync_log_rows, report.sync_runs_rows = counts[LOG_TABLE], counts[RUNS_TABLE]
