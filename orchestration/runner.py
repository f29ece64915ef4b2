"""Run the whole asset graph through Dagster, in-process, and summarise what it did (`privdom run`)."""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from orchestration.contract import SOURCES
from orchestration.ingest.files import stray_files, unlisted
from orchestration.locking import RUN_LOCK_FILE_NAME, warehouse_lock
from orchestration.settings import Settings, settings_as_json
from orchestration.warehouse import LAYER_SCHEMAS, WarehouseLockedError, connect, ensure_not_locked

# Runs started by `privdom run` carry this tag. Such a run can only be in progress while its process holds
# the run lock, so a tagged run still "started" when the next `privdom run` gets the lock was killed.
LAUNCHER_TAG = "privdom/launcher"


@dataclass
class CheckOutcome:
    asset: str
    check: str
    passed: bool
    severity: str
    description: str | None = None


@dataclass
class PipelineResult:
    settings: Settings
    run_id: str
    success: bool
    seconds: float
    failed_steps: list[str] = field(default_factory=list)
    not_run: list[str] = field(default_factory=list)  # steps a failed one left unexecuted (_steps_not_run)
    recovered: list[str] = field(default_factory=list)  # what earlier runs left and this one put right
    checks: list[CheckOutcome] = field(default_factory=list)
    ledger: list[tuple] = field(default_factory=list)
    tables: list[tuple[str, str, int]] = field(default_factory=list)
    exports: list[tuple[str, str, int, int, int]] = field(default_factory=list)
    new_exports: set[str] = field(default_factory=set)  # segments whose LATEST this run wrote
    # (destination, rows accepted, failed, skipped) for each sync this run made: a successful sync says so too
    syncs: list[tuple[str, int, int, int]] = field(default_factory=list)
    log_path: Path | None = None
    summary_error: str | None = None
    stray_files: list[str] = field(default_factory=list)  # under landing/, outside every source's folder
    unlisted: list[str] = field(default_factory=list)  # under landing/<source>/, no regular file that can be read
    rebuilt: list[str] = field(default_factory=list)  # what this run built in full, and why (not on a first run)
    # what `privdom run` did before the Dagster run began, in seconds (not in `seconds`): the lock wait, workers,
    # dbt parse, the definitions; the summary names them when they took long (the soak review saw a run
    # reported as 20 s that had taken 331 s, with nothing saying where the rest went)
    before_run: list[tuple[str, float]] = field(default_factory=list)
    stopped: str | None = None  # why the run stopped early, when no step failed (_PoolWaitReporter)

    def describe(self) -> str:
        s = self.settings
        lines = [
            "",
            f"privdom run {self.run_id[:8]}: {'succeeded' if self.success else 'FAILED'} in {self.seconds:.1f} s",
        ]
        if sum(seconds for _, seconds in self.before_run) >= BEFORE_RUN_SHOWN_SECONDS:
            lines.append(f"  before the run: {describe_before_run(self.before_run)}")
        lines += [f"  before the run: {line}" for line in self.recovered]
        if self.stopped:
            lines.append(f"  {self.stopped}")
        for step in self.failed_steps:
            lines.append(f"  failed step: {step}")
        if self.not_run:
            lines.append(f"  not run, after the failure: {', '.join(self.not_run)}")
        if self.rebuilt:
            lines.append("")
            lines.append("  built in full this run, not only from the new files (a run like this takes longer):")
            lines += [f"    {line}" for line in self.rebuilt]
        if self.ledger:
            lines.append("")
            lines.append("  ingestion ledger (all runs)     files  loaded  rejected  duplicate     rows loaded  quarantined")
            for source, files, loaded, rejected, duplicate, rows_loaded, quarantined in self.ledger:
                lines.append(
                    f"    {source:<28} {files:>6} {loaded:>7} {rejected:>9} {duplicate:>10} {rows_loaded:>15,} {quarantined:>12,}"
                )
            unloaded = sum(files - loaded - rejected - duplicate for _, files, loaded, rejected, duplicate, *_ in self.ledger)
            if unloaded:
                lines.append(f"    {unloaded:,} file(s) unloaded (`privdom unload`): their rows are no longer in raw, nor counted here")
            if not any(files for _, files, *_ in self.ledger):
                lines.append(f"    no landing files yet: deliver batch files to {s.landing_dir}/<source>/ "
                             "(docs/data-contract.md), or write synthetic ones with `privdom generate`")
        if self.stray_files:
            shown = ", ".join(self.stray_files[:5]) + (" …" if len(self.stray_files) > 5 else "")
            if not self.ledger:
                lines.append("")
            lines.append(f"    NOT READ: {len(self.stray_files):,}{'+' if len(self.stray_files) >= 1000 else ''} file(s) under "
                         f"{s.landing_dir}/ outside the source folders ({', '.join(SOURCES)}; deliver to {s.landing_dir}/<source>/): {shown}")
        if self.unlisted:
            shown = ", ".join(self.unlisted[:5]) + (" …" if len(self.unlisted) > 5 else "")
            lines.append(f"    NOT READ: {len(self.unlisted):,} entr{'y' if len(self.unlisted) == 1 else 'ies'} under the source "
                         f"folders that are not regular files privdom can read: {shown}")
        if self.summary_error:
            lines.append("")
            lines.append(f"  (no table summary: {self.summary_error})")
        if self.tables:
            lines.append("")
            # the counts are the warehouse's, not this run's: a step that failed may have left an earlier run's
            # tables, and one held back by a blocking check (segment_membership) has built this run's
            lines.append("  warehouse tables" + ("" if self.success else
                                                  " (as the warehouse holds them: a failed step may have left an earlier run's)"))
            width = max(40, *(len(schema) + 1 + len(table) for schema, table, _ in self.tables))
            for schema, table, rows in self.tables:
                lines.append(f"    {schema + '.' + table:<{width}} {rows:>12,} rows")
        if self.exports:
            lines.append("")
            lines.append(f"  segment exports (LATEST in {s.exports_dir}/<segment>/)      rows    adds  removes  this run")
            named = max([28, *(len(e[0]) for e in self.exports)])
            for segment, export_id, rows, adds, removes in self.exports:
                # adds and removes are LATEST's, against the export before it: "kept" says this run wrote none
                mark = "new" if segment in self.new_exports else "kept"
                lines.append(f"    {segment:<{named}} {export_id:<24} {rows:>8,} {adds:>7,} {removes:>8,}  {mark}")
        if self.syncs:
            lines.append("")
            lines.append("  syncs this run (each row's outcome in segments.sync_log)   accepted   failed  skipped")
            named = max([40, *(len(name) for name, *_ in self.syncs)])
            for destination, accepted, failed_rows, skipped in self.syncs:
                lines.append(f"    {destination:<{named}} {accepted:>11,} {failed_rows:>8,} {skipped:>8,}")
        failed = [c for c in self.checks if not c.passed]
        lines.append("")
        lines.append(f"  checks: {len(self.checks) - len(failed)} passed, {len(failed)} did not pass")
        for c in failed:
            lines.append(f"    [{c.severity}] {c.asset} · {c.check}" + (f": {c.description}" if c.description else ""))
        bi_copy = s.bi_dir / "warehouse.duckdb"
        lines += [
            "",
            "  results",
            # a reader holding the warehouse open stops the next run: point readers at the BI copy
            f"    warehouse  {s.warehouse_path}   (the pipeline's; read the BI copy, it never blocks a run)",
            f"    BI copy    {bi_copy}   "
            + ("(read-only with any DuckDB client, e.g. below)" if bi_copy.exists()
               else "(not published yet: a run publishes it once its checks pass)"),
            f"    exports    {s.exports_dir}"
            + ("" if any(s.exports_dir.glob("*/LATEST")) else "   (none yet: a run exports once its checks pass)"),
            f"    landing    {s.landing_dir}",
            f"    UI         {ui_command(s.data_dir)}   → http://127.0.0.1:3000 (runs, asset checks, lineage)",
        ]
        if self.log_path:
            lines.append(f"    run log    {self.log_path}")
        if bi_copy.exists():
            lines.append(f"    query      {query_command(bi_copy)}")
        return "\n".join(lines)


def _privdom() -> str:
    """How to call privdom from a shell: `privdom` where that is this installation's on PATH, else the console
    script beside this interpreter (README's setup does not activate the virtual environment)."""
    script = Path(sys.executable).parent / "privdom"
    found = shutil.which("privdom")
    if not script.exists() or (found and Path(found).resolve() == script.resolve()):
        return "privdom"
    return shlex.quote(str(script))


def ui_command(data_dir: Path) -> str:
    """The command that opens the UI on `data_dir`, to paste in a shell. It always names the directory: the
    user's PRIVDOM_HOME and working directory are not known here (`privdom` sets PRIVDOM_HOME for its run)."""
    return f"{_privdom()} --data-dir {shlex.quote(str(data_dir))} ui"


def query_command(database: Path) -> str:
    """A shell command listing the tables of a DuckDB file, read-only, with this installation's Python (the
    duckdb package has no command-line tool of its own)."""
    code = f"import duckdb; print(duckdb.connect({str(database)!r}, read_only=True).sql('show all tables'))"
    return f"{shlex.quote(sys.executable)} -c {shlex.quote(code)}"


def _summarise_warehouse(path: Path, *, wait_seconds: float = 10.0) -> tuple[list[tuple], list[tuple[str, str, int]]]:
    """Ledger and table sizes, read-only. Waits a little if another process (not privdom: the lock is ours)
    has the file open for writing, then gives up with WarehouseLockedError."""
    if not path.exists():
        return [], []
    deadline = time.monotonic() + wait_seconds
    while True:
        try:
            con = connect(path, read_only=True)
            break
        except WarehouseLockedError:
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.5)
    try:
        return _summary_queries(con)
    finally:
        con.close()


def _summary_queries(con) -> tuple[list[tuple], list[tuple[str, str, int]]]:
    ledger = con.execute(
        """
        select s.source,
               count(l.file_id),
               count(*) filter (where l.status = 'loaded'),
               count(*) filter (where l.status = 'rejected'),
               count(*) filter (where l.status = 'duplicate'),
               -- what raw holds: an unloaded file's ledger row keeps its counts as the record of its delivery
               coalesce(sum(l.rows_loaded) filter (where l.status = 'loaded'), 0),
               coalesce(sum(l.rows_quarantined) filter (where l.status = 'loaded'), 0)
        from (select unnest(?::varchar[]) as source) s
        left join raw.ingestion_ledger l using (source)
        group by s.source order by s.source
        """,
        [list(SOURCES)],
    ).fetchall()
    names = con.execute(
        # tables only: a view's rows are computed when read (int_touches__unioned: the 11M touches at 1M)
        "select table_schema, table_name from information_schema.tables "
        "where table_catalog = current_database() and table_schema in (select unnest(?::varchar[])) "
        "and table_type = 'BASE TABLE' order by 1, 2",
        [list(LAYER_SCHEMAS)],
    ).fetchall()
    order = {name: i for i, name in enumerate(LAYER_SCHEMAS)}
    tables = sorted(
        ((schema, table, con.execute(f'select count(*) from "{schema}"."{table}"').fetchone()[0]) for schema, table in names),
        key=lambda t: (order[t[0]], t[1]),
    )
    return ledger, tables


@contextlib.contextmanager
def _output_to(path: Path | None) -> Iterator[Callable[[str], None]]:
    """Send this process's stdout/stderr (Dagster's and dbt's logs included) to a file, then restore them. Yields
    a function that writes a line to the terminal's stderr all the same (and to the file), for what the user must
    see while the run goes on: a wait for another run (_PoolWaitReporter)."""
    if path is None:
        yield lambda message: print(message, file=sys.stderr, flush=True)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stdout.flush()
    sys.stderr.flush()
    saved = os.dup(1), os.dup(2)

    def console(message: str) -> None:
        data = (message + "\n").encode()
        with contextlib.suppress(OSError):  # a closed terminal: the run goes on
            os.write(saved[1], data)
        with contextlib.suppress(OSError):
            os.write(1, data)

    with open(path, "ab") as log:
        os.dup2(log.fileno(), 1)
        os.dup2(log.fileno(), 2)
        try:
            yield console
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os.dup2(saved[0], 1)
            os.dup2(saved[1], 2)
            os.close(saved[0])
            os.close(saved[1])


@contextlib.contextmanager
def _sigterm_kept() -> Iterator[None]:
    """SIGTERM's handler as it was before the run, after it. Dagster's interrupt handling leaves SIGTERM set to
    SIGINT's handler when the run ends (dagster._utils.interrupts.setup_interrupt_handlers): for `privdom run &`
    in a script, whose SIGINT comes ignored, a SIGTERM during the summary (its wait for the warehouse lock
    included) was then ignored (diff review); `privdom run` handles it as a Ctrl-C from its start."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    before = signal.getsignal(signal.SIGTERM)
    try:
        yield
    finally:
        if before is not None and signal.getsignal(signal.SIGTERM) is not before:
            signal.signal(signal.SIGTERM, before)


def _fail_abandoned_runs(instance, by: str = "the next `privdom run`") -> list[str]:
    """Mark earlier `privdom run` runs that were killed (still "started") as failed and free their pool slots,
    and free the slots finished runs of any launcher still hold; returns what it did, a line each.

    Called with the run lock held: a live `privdom run` holds that lock for its whole run, so any
    tagged run not finished now belongs to a dead process. Without this, a killed run's claimed slot of the
    pool `warehouse` would keep every later run waiting.
    """
    import dagster as dg

    from orchestration.defs.resources import WAREHOUSE_POOL

    abandoned = instance.get_runs(
        filters=dg.RunsFilter(
            tags={LAUNCHER_TAG: "cli"},
            statuses=[dg.DagsterRunStatus.STARTED, dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.NOT_STARTED],
        )
    )
    done = []
    storage = instance.event_log_storage
    for run in abandoned:
        instance.report_run_failed(run, message=f"Marked failed by {by}: its process ended without finishing it.")
        storage.free_concurrency_slots_for_run(run.run_id)
        done.append(f"run {run.run_id} was left unfinished by a killed process; marked failed")
    # A slot kept by a run that has finished, whoever launched it: a UI or `dg launch` run whose worker was killed
    # inside a step is marked failed by Dagster and keeps its slot (the daemon of `privdom ui` frees it after a
    # minute, run_monitoring in dagster.yaml, but only while it runs), and this run's first step would wait for it
    # for ever, silently (concurrency review). A slot of an unfinished run of another launcher stays: that run
    # may be alive in the UI.
    try:
        claimed = {slot.run_id for slot in storage.get_concurrency_info(WAREHOUSE_POOL).claimed_slots}
    except Exception:  # noqa: BLE001 - a storage without pools has nothing to free
        claimed = set()
    for run_id in sorted(claimed - {run.run_id for run in abandoned}):
        run = instance.get_run_by_id(run_id)
        if run is None or run.is_finished:
            storage.free_concurrency_slots_for_run(run_id)
            done.append(f"freed the `{WAREHOUSE_POOL}` pool slot kept by run {run_id}, which has "
                        f"{'ended' if run else 'been deleted'}")
    return done


# the summary names the time spent before the Dagster run from this much on (definitions alone take ~3 s)
BEFORE_RUN_SHOWN_SECONDS = 10.0


def describe_before_run(phases: list[tuple[str, float]]) -> str:
    return ", ".join(f"{what} {seconds:.1f} s" for what, seconds in phases)


# how often the terminal is told again that a run still waits for the pool `warehouse`, and how long a wait lasts
# before it is told at all (a UI run's steps and this run's interleave: a wait of a second or two between them is
# no news)
POOL_WAIT_REPEAT_SECONDS = 300.0
POOL_WAIT_TOLD_AFTER_SECONDS = 5.0


def _launched_by(tags) -> str:
    """Who launched a Dagster run, from its tags, in the words of the README."""
    if tags.get(LAUNCHER_TAG) == "cli":
        return "`privdom run`"
    if tags.get("dagster/schedule_name"):
        return f"the schedule {tags['dagster/schedule_name']}"
    if tags.get("dagster/sensor_name"):
        return f"the sensor {tags['dagster/sensor_name']}"
    if tags.get("dagster/backfill"):
        return f"the backfill {tags['dagster/backfill']}"
    return "the UI or `dg launch`"


def describe_pool_holders(instance, run_id: str) -> str | None:
    """What holds the pool `warehouse` while a step of run `run_id` waits for it, in a line; None when no step of
    that run waits (it holds the slot, runs a step outside the pool, or has not asked yet)."""
    from orchestration.defs.resources import WAREHOUSE_POOL

    info = instance.event_log_storage.get_concurrency_info(WAREHOUSE_POOL)
    claimed = {slot.run_id for slot in info.claimed_slots}
    waiting = [step.step_key for step in info.pending_steps if step.run_id == run_id and step.assigned_timestamp is None]
    if not waiting or run_id in claimed:
        return None
    # the slot's holders; between two steps of theirs, the runs it is being handed to
    slots = list(info.claimed_slots) or [step for step in info.pending_steps
                                          if step.run_id != run_id and step.assigned_timestamp is not None]
    holders = []
    for slot in slots:
        record = instance.get_run_record_by_id(slot.run_id)
        if record is None:
            holders.append(f"run {slot.run_id} (deleted), step {slot.step_key}")
            continue
        run = record.dagster_run
        started = (f", started {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(record.start_time))}"
                   if record.start_time else "")
        holders.append(f"run {run.run_id} (step {slot.step_key}; launched by {_launched_by(run.tags)}{started}, "
                       f"status {run.status.value})")
    held = "; ".join(holders) if holders else "another run"
    return (f"waiting for the warehouse: {held} has the Dagster pool `{WAREHOUSE_POOL}`; this run's step "
            f"{waiting[0]} starts when it is free. Ctrl-C stops this run (nothing written yet by this step). A run "
            "whose process was killed keeps its slot until it is terminated or deleted in the UI")


class _PoolWaitReporter:
    """While run `run_id` executes in this process, a thread that tells `console` when a step of it waits for the
    pool `warehouse` (who holds it, since when), again every POOL_WAIT_REPEAT_SECONDS, and when the wait ends.
    A Ctrl-C during such a wait stops the run: Dagster's in-process executor records the interrupt and goes on
    waiting (the review had `privdom run` ignore Ctrl-C and SIGTERM for ten minutes behind a killed `dg launch`
    run's slot), so the thread raises KeyboardInterrupt in the main thread, which Dagster reports as the run
    failing."""

    def __init__(self, instance, run_id: str, console: Callable[[str], None], *, poll_seconds: float = 1.0,
                 repeat_seconds: float | None = None, told_after_seconds: float | None = None,
                 steps: bool = False) -> None:
        import threading

        self.instance, self.run_id, self.console = instance, run_id, console
        self.poll_seconds = poll_seconds
        self.repeat_seconds = POOL_WAIT_REPEAT_SECONDS if repeat_seconds is None else repeat_seconds
        self.told_after_seconds = POOL_WAIT_TOLD_AFTER_SECONDS if told_after_seconds is None else told_after_seconds
        self.interrupted = False
        # with `steps`, each step's start and failure is told too (Dagster's log goes to the run log: a whole run,
        # minutes on a benchmark's data, showed nothing on the terminal until its summary)
        self.steps = steps
        self._steps_cursor: str | None = None
        self._step_count: int | None = None
        self._steps_started = 0
        self._main = threading.main_thread().ident
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="privdom-pool-wait", daemon=True)

    def __enter__(self) -> _PoolWaitReporter:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        if self.steps:  # what began since the last poll
            with contextlib.suppress(Exception):
                self._tell_steps()

    def _watch(self) -> None:
        from dagster._utils.interrupts import check_captured_interrupt

        since = last_told = None  # when the wait began; when it was last told (None: not yet)
        while not self._stop.wait(self.poll_seconds):
            if self.steps:
                with contextlib.suppress(Exception):  # progress is news, not the run's business
                    self._tell_steps()
            try:
                waiting = describe_pool_holders(self.instance, self.run_id)
            except Exception:  # noqa: BLE001 - a storage without pools, or one busy: no news is told
                continue
            now = time.monotonic()
            if waiting is None:
                if last_told is not None:
                    self.console(f"privdom: the warehouse is free after {now - since:.0f} s of waiting; the run goes on")
                since = last_told = None
                continue
            if since is None:
                since = now
            if last_told is None:
                if now - since >= self.told_after_seconds:
                    last_told = now
                    self.console(f"privdom: {waiting}")
            elif now - last_told >= self.repeat_seconds:
                last_told = now
                self.console(f"privdom: still {waiting} ({now - since:.0f} s so far)")
            if check_captured_interrupt() and not self.interrupted:
                self.interrupted = True
                self.console("privdom: interrupted while waiting for the warehouse (Ctrl-C or SIGTERM): stopping this run")
                self._raise_in_main(KeyboardInterrupt)

    def _tell_steps(self) -> None:
        import dagster as dg

        kinds = {dg.DagsterEventType.STEP_START, dg.DagsterEventType.STEP_FAILURE}
        page = self.instance.get_records_for_run(self.run_id, cursor=self._steps_cursor, of_type=kinds)
        self._steps_cursor = page.cursor
        if self._step_count is None and page.records:
            run = self.instance.get_run_by_id(self.run_id)
            plan = self.instance.get_execution_plan_snapshot(run.execution_plan_snapshot_id)
            self._step_count = len(plan.steps)
        for record in page.records:
            event = record.event_log_entry
            if event.dagster_event_type == dg.DagsterEventType.STEP_START:
                self._steps_started += 1
                self.console(f"privdom: step {self._steps_started} of {self._step_count}: {event.step_key} "
                             f"({time.strftime('%H:%M:%S', time.localtime(event.timestamp))})")
            else:
                self.console(f"privdom: step {event.step_key} failed (the summary says why)")

    def _raise_in_main(self, error: type[BaseException]) -> None:
        import ctypes

        ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._main), ctypes.py_object(error))


def run_pipeline(settings: Settings, *, verbose: bool = False, full_refresh: bool = False) -> PipelineResult:
    """Materialize every asset (ingest → dbt build → checks → exports) as one Dagster run.

    The run holds the data directory's run lock from start to end: a second `privdom run` waits for it,
    saying so on stderr, instead of failing on DuckDB's file lock. Its steps (and a UI run's) take the
    warehouse lock one at a time (orchestration/locking.py). `full_refresh` rebuilds the incremental dbt
    models from raw (they otherwise take in only the files loaded since their last build).
    """
    from orchestration import dbt as dbt_runner

    dbt_runner.require_pipeline_target()  # before anything is loaded: the steps work on DuckDB only
    entered = time.perf_counter()
    with warehouse_lock(settings.data_dir, name=RUN_LOCK_FILE_NAME, what="privdom run"):
        # Another kind of process (a notebook, a DuckDB shell) holding DuckDB's lock is not waited for.
        with warehouse_lock(settings.data_dir, what="privdom run (checking the warehouse)"):
            ensure_not_locked(settings.warehouse_path)
        locked = time.perf_counter()
        from orchestration import validation_worker as gx_worker

        # GX's validations of this run go to a process that imports GX while the run begins
        # (orchestration/validation_worker.py), and dbt's commands start with dbt already imported
        # (orchestration/warm.py); both are stopped by PID when the run is over
        with gx_worker.warm_validation(), dbt_runner.warm_dbt():
            before_run = [("waiting for the locks", locked - entered), ("starting workers", time.perf_counter() - locked)]
            return _run_pipeline_locked(settings, verbose=verbose, full_refresh=full_refresh, before_run=before_run)


# The steps' log lines that say a step did all its work again, not only the new files' (defs/ingest.py,
# defs/identity.py, defs/dbt.py): after an upgrade or a changed setting, the summary lists them.
REBUILD_MESSAGES = (
    "raw rows' _row_hash computed again",
    "identity graph built in full:",
    "customer keys assigned to every component:",
    "incremental models of ",
)


def _rebuilt(instance, run_id: str) -> list[str]:
    out = []
    for record in instance.all_logs(run_id):
        message = (record.user_message or "").strip()
        if message.startswith(REBUILD_MESSAGES):
            out.append(_first_line(message))
    return out


def _run_pipeline_locked(settings: Settings, *, verbose: bool, full_refresh: bool,
                         before_run: list[tuple[str, float]] | None = None) -> PipelineResult:
    import dagster as dg

    from orchestration import dbt as dbt_runner
    from orchestration import longlived

    before_run = list(before_run or [])
    phase = time.perf_counter()
    dbt_runner.parse_if_changed(settings)
    before_run.append(("dbt parse", time.perf_counter() - phase))
    phase = time.perf_counter()
    from orchestration.definitions import build_definitions

    defs = build_definitions()
    job = defs.resolve_implicit_global_asset_job_def()
    before_run.append(("loading the definitions", time.perf_counter() - phase))
    # the definitions live to the end: out of the garbage collector's full passes (in `privdom`'s own process)
    longlived.freeze()
    started = time.perf_counter()
    log_path = None if verbose else settings.data_dir / "logs" / f"run-{time.strftime('%Y%m%dT%H%M%S')}.log"
    had_warehouse = settings.warehouse_path.exists()
    with dg.DagsterInstance.get() as instance, _output_to(log_path) as console:
        # the settings this run uses, after privdom.toml and PRIVDOM_* (a misspelled variable is not one of them:
        # `privdom` warns of one close to a name it reads, settings.misspelled_environment)
        print(f"privdom settings: {settings_as_json(settings)}", flush=True)
        print(f"privdom: before the run: {describe_before_run(before_run)}", flush=True)
        recovered = _fail_abandoned_runs(instance)
        for line in recovered:
            print(f"privdom: {line}", flush=True)
        from dagster._core.utils import make_new_run_id

        run_id = make_new_run_id()
        # a step waiting for the pool `warehouse` (a UI, schedule or `dg launch` run holds it) says so on the
        # terminal, and Ctrl-C stops the wait (Dagster's in-process executor neither logs it at INFO nor heeds it)
        if log_path is not None:
            console(f"privdom run {run_id[:8]}: started; Dagster's and dbt's log: {log_path} (the summary comes at the end)")
        with _PoolWaitReporter(instance, run_id, console, steps=log_path is not None) as pool_wait, _sigterm_kept():
            result = job.execute_in_process(
                instance=instance,
                run_id=run_id,
                raise_on_error=False,
                tags={LAUNCHER_TAG: "cli", **({dbt_runner.FULL_REFRESH_TAG: "true"} if full_refresh else {})},
                run_config={"loggers": {"console": {"config": {"log_level": "DEBUG" if verbose else "INFO"}}}},
            )
        checks = []
        for event in result.all_events:
            if event.event_type_value == "ASSET_CHECK_EVALUATION":
                data = event.event_specific_data
                checks.append(
                    CheckOutcome(
                        asset=data.asset_key.to_user_string(),
                        check=data.check_name,
                        passed=data.passed,
                        severity=data.severity.value,
                        description=data.description or _failed_rows(data),
                    )
                )
        new_exports = {
            e.event_specific_data.materialization.asset_key.path[-1]
            for e in result.all_events
            if e.event_type_value == "ASSET_MATERIALIZATION"
            and e.event_specific_data.materialization.asset_key.path[0] == "exports"
            and _metadata_value(e.event_specific_data.materialization.metadata.get("unchanged")) is False
        }
        syncs = synced(result.all_events)
        # a first run builds everything, as it should: only a later run's full builds are news
        rebuilt = _rebuilt(instance, result.run_id) if had_warehouse else []
        failed_steps = [
            f"{e.step_key}: {_out_of_memory_hint(e.event_specific_data.error, settings)}"
            f"{_first_line(_step_error_message(e.event_specific_data.error))}"
            for e in result.all_events
            if e.event_type_value == "STEP_FAILURE"
        ]
        not_run = [] if result.success else _steps_not_run(instance, result)
        stopped = ("stopped by Ctrl-C or SIGTERM while a step waited for the warehouse (another run held the pool "
                   "`warehouse`): the steps not run are left for the next run") if pool_wait.interrupted else None
    summary_error = None
    try:
        with warehouse_lock(settings.data_dir, what="privdom run (summary)"):
            ledger, tables = _summarise_warehouse(settings.warehouse_path)
    except WarehouseLockedError as exc:
        ledger, tables, summary_error = [], [], str(exc)
    except duckdb.Error as exc:  # e.g. a step's connection an interruption left open in this process
        ledger, tables, summary_error = [], [], " ".join(str(exc).split())
    from orchestration.segments import summarise_exports
    return PipelineResult(
        summary_error=summary_error,
        settings=settings,
        run_id=result.run_id,
        success=result.success,
        seconds=time.perf_counter() - started,
        failed_steps=failed_steps,
        not_run=not_run,
        recovered=recovered,
        stopped=stopped,
        checks=checks,
        ledger=ledger,
        tables=tables,
        exports=summarise_exports(settings.exports_dir, *_defined_segments(settings)),
        new_exports=new_exports,
        syncs=syncs,
        rebuilt=rebuilt,
        before_run=before_run,
        log_path=log_path,
        stray_files=stray_files(settings.landing_dir),
        unlisted=[u for source in SOURCES for u in unlisted(settings.landing_dir, source)],
    )


def synced(events) -> list[tuple[str, int, int, int]]:
    """Each sync a run materialized, from its events: (destination, rows accepted, failed, skipped). A sync that
    stopped is a failed step instead (the summary names it there), with no materialization."""
    out = []
    for e in events:
        if e.event_type_value != "ASSET_MATERIALIZATION":
            continue
        materialization = e.event_specific_data.materialization
        if materialization.asset_key.path[0] != "syncs":
            continue
        metadata = materialization.metadata
        out.append((materialization.asset_key.path[-1],
                    *(int(_metadata_value(metadata.get(name)) or 0) for name in ("accepted", "failed", "skipped"))))
    return sorted(out)


def _failed_rows(evaluation) -> str | None:
    """What a dbt test's check says without a description: the rows it returned (a conflict, a reconciliation
    gap per row), e.g. "3 rows" for event_id_conflicts. A test dbt could not run (its SQL failed: an amount sum
    out of DECIMAL range, say) returned no rows and is no result: "0 rows returned" read as a pass gone wrong."""
    if evaluation.passed:
        return None
    if _metadata_value((evaluation.metadata or {}).get("status")) == "error":
        return "dbt could not run this test (an error, not a result): the failed step's message and its dbt log say why"
    entry = (evaluation.metadata or {}).get("dagster_dbt/failed_row_count")
    value = getattr(entry, "value", entry)
    return f"{value:,} row{'s' if value != 1 else ''} returned" if isinstance(value, int) else None


def _defined_segments(settings: Settings) -> tuple[list[str] | None, list[str]]:
    """The names of the segments enabled now, and of those switched off (None, [] when the definitions cannot be
    read: the run said why)."""
    from orchestration.segments.definitions import load_segment_definitions

    try:
        definitions = load_segment_definitions(settings.data_dir, settings.sources)
    except Exception:  # noqa: BLE001 - a summary names what it can
        return None, []
    return [d.name for d in definitions if d.enabled], [d.name for d in definitions if not d.enabled]


def _metadata_value(entry):
    return getattr(entry, "value", entry)


def _out_of_memory_hint(error, settings: Settings) -> str:
    """What to do when a step failed because DuckDB reached its memory limit, to put before the step's message
    (which is cut at 300 characters, and DuckDB's words came after GX's: the resource review saw only
    "RuntimeError: GX expectation … raised: MetricConfigurationID(…" with the limit at 256MB); '' otherwise."""
    texts = []
    while error is not None:
        texts.append(f"{error.cls_name}: {error.message}")
        error = error.cause
    if not any("Out of Memory Error" in t or "OutOfMemoryException" in t for t in texts):
        return ""
    limit = settings.duckdb_memory_limit or "80% of the memory"
    return (f"DuckDB ran out of memory (duckdb_memory_limit = {limit}; the validation of a source gets a quarter "
            "of it): raise it in privdom.toml or PRIVDOM_DUCKDB_MEMORY_LIMIT. ")


def _steps_not_run(instance, result) -> list[str]:
    """The run's steps that never started, in the plan's order. After a failed step (one held back by a blocking
    check included) Dagster leaves the steps that depend on it unexecuted and says so only in its log: the
    summary showed the exports as "kept" with nothing saying that the exports, syncs and BI copy did not run."""
    try:
        plan = instance.get_execution_plan_snapshot(result.dagster_run.execution_plan_snapshot_id)
    except Exception:  # noqa: BLE001 - a summary names what it can
        return []
    started = {e.step_key for e in result.all_events if e.event_type_value == "STEP_START"}
    return [step.key for step in plan.steps if step.key not in started]


def _step_error_message(error) -> str:
    """What a failed step's error says: for an exception raised in privdom's code, Dagster's message is only
    "DagsterExecutionStepExecutionError: Error occurred while executing op …:" and the exception itself is its
    cause, whose message is the one to show (e.g. "PermissionError: [Errno 13] Permission denied: '…'")."""
    if error is None:
        return ""
    while error.cls_name == "DagsterExecutionStepExecutionError" and error.cause is not None:
        error = error.cause
    if error.cls_name == "DagsterDbtCliRuntimeError":
        return _dbt_failure(error.message) or error.message
    if error.cls_name == "DagsterAssetCheckFailedError":
        # "dagster._core.errors.DagsterAssetCheckFailedError: 1 blocking asset check failed with ERROR severity:"
        # and a line per asset naming its checks: the summary shows a step's first line, so they go on it
        checks = error.message.splitlines()[1:]
        return "blocking check failed: " + "; ".join(line.strip() for line in checks if line.strip())
    # a Failure's message is its description, after the class's dotted name: the description is what to show
    return error.message.removeprefix("dagster._core.definitions.events.Failure: ")


_ANSI = re.compile(r"\x1b?\[[0-9;]*m")
_DBT_PROGRESS = re.compile(r"^\d+ of \d+ ((?:ERROR|FAIL)\b.*?)\s*(?:\.{3,}.*)?$")
_DBT_DETAIL_HEAD = re.compile(r"^(?:Runtime|Database|Compilation) Error in |^Failure in test "
                              r"|^Unhandled error while executing |^Encountered an error:$")
# DuckDB's fatal errors ("database has been invalidated because of a previous fatal error") name the cause on a
# line of their own: a full disk or a file-size limit ("Could not write file …: File too large") is only there
_DBT_ORIGINAL_ERROR = re.compile(r'^Original error: "?(.*?)"?$')


def _dbt_failure(message: str) -> str | None:
    """dagster-dbt's error says "The dbt CLI process with command" on its first line; what failed is in the
    dbt log lines it quotes below: the first failed node, the first line of its error, how many more, and
    the dbt log. None when it quotes none."""
    lines = [_ANSI.sub("", line).strip() for line in message.splitlines()]
    failed = [m.group(1) for m in (_DBT_PROGRESS.match(line) for line in lines) if m]
    if not failed:
        return None
    # the detail block of the first failed node: the one whose heading names it ("Runtime Error in model
    # fct_orders (…)"), else the first (the diff review saw one node's error shown under another's name)
    name = failed[0].split()[-1].split(".")[-1]
    blocks = []
    for i, line in enumerate(lines):
        if _DBT_DETAIL_HEAD.match(line):
            following = [nxt for nxt in lines[i + 1:i + 4] if nxt]
            detail = following[0] if following else None
            original = next((m.group(1) for m in map(_DBT_ORIGINAL_ERROR.match, following[1:]) if m), None)
            blocks.append((line, original or detail))
    named = [d for head, d in blocks if re.search(rf"\b{re.escape(name)}\b", head)]
    detail = named[0] if named else (blocks[0][1] if blocks else None)
    log = re.search(r"view the dbt debug log: (\S+?)\.?$", message, re.MULTILINE)
    text = f"dbt: {failed[0]}" + (f": {detail}" if detail else "")
    if len(failed) > 1:
        text += f" (and {len(failed) - 1} more)"
    return text + (f"; dbt log {log.group(1)}" if log else "")


def _first_line(message: str) -> str:
    """A step failure's message in one line: its first, and when that ends in a colon, the lines it announces
    (Dagster's "1 blocking asset check failed with ERROR severity:" names the checks on the lines below)."""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if not lines:
        return ""
    text = lines[0]
    if text.endswith(":") and len(lines) > 1:
        text += " " + "; ".join(lines[1:])
    return text if len(text) <= 300 else text[:299] + "…"
