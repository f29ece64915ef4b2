"""`privdom`: the command line. It launches the Dagster graph; it never re-implements a step of it."""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path

from orchestration.settings import MAX_DIRTY_RATE, REPO_ROOT, Settings, SettingsError, load_settings, misspelled_environment, referenced_environment, resolve_data_dir
from orchestration.warehouse import WarehouseLockedError


def _prepare_environment(settings: Settings) -> None:
    """Point Dagster and dbt at this data directory; write the instance config if it is missing."""
    from orchestration.dbt import apply_dbt_environment

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    settings.dagster_home.mkdir(parents=True, exist_ok=True)
    instance_config = settings.dagster_home / "dagster.yaml"
    text = instance_config_text(settings)
    if not instance_config.exists() or instance_config.read_text(encoding="utf-8") != text:
        instance_config.write_text(text, encoding="utf-8")
    os.environ["PRIVDOM_HOME"] = str(settings.data_dir)
    os.environ["DAGSTER_HOME"] = str(settings.dagster_home)
    os.environ.setdefault("DAGSTER_DISABLE_TELEMETRY", "1")
    apply_dbt_environment(settings)


def instance_config_text(settings: Settings) -> str:
    """The Dagster instance config of this data directory: orchestration/dagster.yaml with the absolute path
    of its event log (a JSON string is a YAML string, whatever the path holds)."""
    template = Path(__file__).with_name("dagster.yaml").read_text(encoding="utf-8")
    return template.replace("{event_log_dir}", json.dumps(str(settings.dagster_home / "history" / "runs")))


GENERATED_MARKER = ".privdom-generated"


def _refuse_foreign_landing(settings: Settings) -> str | None:
    """`generate` replaces landing/<source>/ wholesale; never do that to files it did not write."""
    landing = settings.landing_dir
    if not landing.exists() or (landing / GENERATED_MARKER).exists():
        return None
    if any(p.is_file() for p in landing.rglob("*")):
        return (
            f"{landing} holds landing files that privdom generate did not write; generating would replace "
            "them. Use an empty data directory (--data-dir DIR or PRIVDOM_HOME) for synthetic data."
        )
    return None


def cmd_generate(args: argparse.Namespace, settings: Settings) -> int:
    from orchestration.generate import generate

    refusal = _refuse_foreign_landing(settings)
    if refusal:
        print(f"privdom: {refusal}", file=sys.stderr)
        return 2
    started = time.perf_counter()
    summary = generate(
        settings.landing_dir,
        customers=args.customers if args.customers is not None else settings.demo_customers,
        days=args.days if args.days is not None else settings.demo_days,
        seed=args.seed if args.seed is not None else settings.demo_seed,
        dirty_rate=args.dirty_rate if args.dirty_rate is not None else settings.demo_dirty_rate,
    )
    (settings.landing_dir / GENERATED_MARKER).write_text(
        "Written by `privdom generate`; it may replace the files in this folder.\n", encoding="utf-8"
    )
    print(summary.describe())
    print(f"Landing files written to {settings.landing_dir} in {time.perf_counter() - started:.1f} s")
    for source in summary.rows_by_source:
        share = summary.dirty_share(source)
        if share > settings.max_quarantine_share:
            print(f"privdom: warning: {share:.1%} of the {summary.rows_by_source[source]:,} {source} rows are dirty "
                  "(at least one row per contract rule), above max_quarantine_share "
                  f"{settings.max_quarantine_share:.1%}: a run on these files fails that check and holds back exports "
                  "and syncs. Generate more customers or days, use --dirty-rate 0, or raise max_quarantine_share.",
                  file=sys.stderr)
    return 0


def cmd_run(args: argparse.Namespace, settings: Settings) -> int:
    from orchestration import dbt as dbt_runner
    from orchestration.runner import run_pipeline

    dbt_runner.require_pipeline_target()  # before anything is written in the data directory
    _prepare_environment(settings)
    with _signals_received() as received, _termination_as_interrupt():
        try:
            result = run_pipeline(settings, verbose=args.verbose, full_refresh=getattr(args, "full_refresh", False))
        except KeyboardInterrupt:
            stopped_by = _stopping_signal(received())
            if stopped_by in (None, signal.SIGINT):
                raise  # a Ctrl-C: main() says so
            return _interrupted(stopped_by, " before the run ended")
    print(result.describe())
    stopped_by = _stopping_signal(received())
    if not result.success and stopped_by is not None:
        # Dagster takes the Ctrl-C as a failure of the step it stopped ("Query interrupted",
        # DagsterExecutionInterruptedError): the summary read as any failed run, and the status was 1. While a run
        # executes Dagster handles SIGTERM (docker stop, systemd, Kubernetes, `timeout`) with the same handler: the
        # signal review saw such a stop end with 1 and no word of it, like a failed check
        return _interrupted(stopped_by, ": the run stopped there")
    return 0 if result.success else 1


def _interrupted(signum: int, where: str) -> int:
    """Say that `signum` stopped `privdom run` (`where`: when), and return the shell's status for it."""
    print(f"privdom: interrupted ({_STOPPING_SIGNALS[signum]}){where}; what its steps committed stays, and the next "
          "`privdom run` goes on from it", file=sys.stderr)
    return 128 + signum


# the signals that stop a run as an interrupt (Dagster maps SIGTERM to its SIGINT handler; _termination_as_interrupt
# SIGHUP), in the words told
_STOPPING_SIGNALS = {signal.SIGINT: "Ctrl-C", signal.SIGTERM: "SIGTERM", signal.SIGHUP: "SIGHUP: the terminal closed"}


def _stopping_signal(received: set[int]) -> int | None:
    """The signal that stopped the run, of those received: Ctrl-C first (the user's own); None when none came."""
    return next((int(s) for s in _STOPPING_SIGNALS if s in received), None)


@contextlib.contextmanager
def _termination_as_interrupt():
    """SIGTERM and SIGHUP stop `privdom run` as a Ctrl-C does, from its start. Dagster maps SIGTERM to its SIGINT
    handler only while the run executes; before that (the wait for the run lock, dbt parse, loading the
    definitions) SIGTERM ended the process at once: no word of it, and the warm dbt server's folder under /tmp and
    the parse folder under dbt_project/target/ left behind (signal review). (A process that is PID 1 in a container, as under
    `docker run` without --init, would not be stopped by SIGTERM at all without a handler.)"""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def as_sigint(signum, frame):  # noqa: ANN001 - a signal handler
        # SIGHUP (the terminal closed, an ssh session dropped): whatever handles SIGINT now, Dagster's during the
        # run. Killed by it, the run was left "started" holding the pool `warehouse`: the UI's and the schedule's
        # runs stayed queued behind it until the next `privdom run` (signal review)
        handler = signal.getsignal(signal.SIGINT)
        if not callable(handler):
            raise KeyboardInterrupt
        handler(signum, frame)

    previous = {signal.SIGTERM: signal.signal(signal.SIGTERM, signal.default_int_handler)}
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:  # under nohup the run goes on, as it did
        previous[signal.SIGHUP] = signal.signal(signal.SIGHUP, as_sigint)
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


@contextlib.contextmanager
def _signals_received():
    """Yields a function that returns the signals this process received meanwhile. Dagster puts its own SIGINT
    handler in place while a run executes (and drops any other), so they are read from the wakeup fd, to
    which Python writes every signal it handles, whoever's handler takes it."""
    import socket

    if threading.current_thread() is not threading.main_thread():
        yield lambda: set()
        return
    reader, writer = socket.socketpair()
    reader.setblocking(False)
    writer.setblocking(False)
    seen: set[int] = set()

    def received() -> set[int]:
        with contextlib.suppress(BlockingIOError, OSError):
            while data := reader.recv(512):
                seen.update(data)
        return seen

    previous = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    try:
        yield received
    finally:
        received()
        signal.set_wakeup_fd(previous)
        reader.close()
        writer.close()


def cmd_demo(args: argparse.Namespace, settings: Settings) -> int:
    from orchestration import dbt as dbt_runner

    dbt_runner.require_pipeline_target()  # before generating: the run after it would refuse
    print(f"privdom demo: synthetic data in {settings.data_dir}")
    status = cmd_generate(args, settings)
    return status if status else cmd_run(args, settings)


def ui_exposure_warning(host: str) -> str | None:
    """A warning when the UI would listen beyond this machine: Dagster's UI has no login."""
    if host in ("127.0.0.1", "localhost", "::1") or host.startswith("127."):
        return None
    return (f"the Dagster UI on {host} has no login: whoever reaches it can launch runs, wipe assets and read the "
            "previews and check examples (masked, but customers' data); put it behind an authenticating proxy or "
            "keep the default 127.0.0.1 and tunnel (ssh -L 3000:127.0.0.1:3000)")


def cmd_ui(args: argparse.Namespace, settings: Settings) -> int:
    from orchestration import dbt as dbt_runner

    warning = ui_exposure_warning(args.host)
    if warning:
        print(f"privdom: warning: {warning}", file=sys.stderr, flush=True)
    _prepare_environment(settings)
    dbt_runner.parse(settings)
    # `dg dev` with a workspace file goes straight to Dagster's dev server (`dagster dev` prints that it is
    # superseded by `dg dev`); without one it would look for the project's virtual environment itself.
    dg = Path(sys.executable).with_name("dg")
    cmd = [
        str(dg if dg.exists() else "dg"),
        "dev",
        "-w",
        str(REPO_ROOT / "workspace.yaml"),
        "--host",
        args.host,
        "--port",
        str(args.port),
    ]
    # flushed: exec replaces the process, and a buffered line (stdout a pipe or a file) would be lost
    print(f"Dagster UI on http://{args.host}:{args.port} (DAGSTER_HOME={settings.dagster_home}); Ctrl-C stops it", flush=True)
    os.chdir(REPO_ROOT)
    # Dagster's dev server handles SIGTERM with whatever handles SIGINT (setup_interrupt_handlers). Started as a
    # script's `privdom ui &` (a non-interactive shell's background job), SIGINT comes ignored, so `kill PID`
    # was ignored too and only SIGKILL stopped the UI (signal review): the UI gets Python's own SIGINT handling
    for signum in (signal.SIGINT, signal.SIGTERM):
        if signal.getsignal(signum) is signal.SIG_IGN:
            signal.signal(signum, signal.SIG_DFL)
    os.execv(cmd[0], cmd) if os.path.isabs(cmd[0]) else os.execvp(cmd[0], cmd)
    return 0  # not reached


# Where `privdom dbt` writes dbt's outputs (manifest, compiled SQL, docs), relative to dbt_project/.
MANUAL_DBT_TARGET_PATH = "target/manual"


def cmd_segments(args: argparse.Namespace, settings: Settings) -> int:
    """Check the segment definitions and destinations of this data directory, and count each enabled segment's
    customers on the warehouse as it is, without writing anything: a draft is tried before a run publishes it
    (the marketer review had only `privdom run`, which exports and syncs at once). Invalid definitions are
    reported as by `privdom run` (one line each, exit 2)."""
    from orchestration.locking import reading_lock
    from orchestration.segments.definitions import export_options, load_segment_definitions
    from orchestration.segments.destinations import parse_destinations
    from orchestration.segments.membership import count_members
    from orchestration.warehouse import connect

    definitions = load_segment_definitions(settings.data_dir, settings.sources)
    export_options(settings.sources)
    enabled = [d for d in definitions if d.enabled]
    destinations = parse_destinations(settings.sources.get("destinations", {}), [d.name for d in enabled],
                                      str(settings.settings_file), switched_off=[d.name for d in definitions if not d.enabled])
    counts, data_end = {}, None
    if settings.warehouse_path.exists():
        with reading_lock(settings.data_dir, what="privdom segments", log=lambda m: print(m, file=sys.stderr)):
            con = connect(settings.warehouse_path, read_only=True)
            try:
                counts, data_end = count_members(con, enabled)
            finally:
                con.close()
    rows = [("segment", "version", "state", "defined in", "matched", "suppressed", "members")]
    for d in definitions:
        c = counts.get(d.name)
        rows.append((d.name, str(d.version), "enabled" if d.enabled else "switched off", d.source,
                     *((f"{c[0]:,}", f"{c[1]:,}", f"{c[2]:,}") if c else ("-", "-", "-"))))
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for r in rows:
        print("  ".join(v.ljust(w) if i < 4 else v.rjust(w) for i, (v, w) in enumerate(zip(r, widths))).rstrip())
    print(f"{len(definitions)} definitions valid ({len(enabled)} enabled); {len(destinations)} destinations valid")
    if data_end is not None:
        print(f"counted on marts.dim_customers as of its data end {data_end}; nothing was written or sent")
    else:
        print(f"no customers to count yet ({settings.warehouse_path} has no marts.dim_customers: `privdom run` builds it)")
    return 0


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    """Remove Dagster run history, run logs and sync audit rows older than --older-than days (orchestration/prune.py)."""
    from orchestration.prune import prune

    if not settings.data_dir.exists():
        print(f"privdom prune: {settings.data_dir} does not exist; nothing to prune")
        return 0
    _prepare_environment(settings)
    report = prune(settings, older_than_days=args.older_than, dry_run=args.dry_run)
    print(report.describe())
    return 0


def cmd_unload(args: argparse.Namespace, settings: Settings) -> int:
    """Take loaded landing files' rows back out of the warehouse (orchestration/unload.py), holding the run lock
    and the warehouse's (it waits for a run in progress)."""
    from orchestration.locking import RUN_LOCK_FILE_NAME, reading_lock, warehouse_lock
    from orchestration.unload import unload
    from orchestration.warehouse import connect, ensure_not_locked

    if not settings.warehouse_path.exists():
        print(f"privdom unload: {settings.warehouse_path} does not exist; nothing to unload", file=sys.stderr)
        return 2
    log = lambda m: print(m, file=sys.stderr)  # noqa: E731
    with contextlib.ExitStack() as locks:
        if args.dry_run:  # reads only: no run to wait for, and a data directory it cannot write will do
            locks.enter_context(reading_lock(settings.data_dir, what="privdom unload --dry-run", log=log))
        else:
            locks.enter_context(warehouse_lock(settings.data_dir, name=RUN_LOCK_FILE_NAME, what="privdom unload", log=log))
            locks.enter_context(warehouse_lock(settings.data_dir, what="privdom unload", log=log))
            ensure_not_locked(settings.warehouse_path)
        con = connect(settings.warehouse_path, read_only=args.dry_run)
        try:
            report = unload(con, settings, args.files, dry_run=args.dry_run)
        finally:
            con.close()
    print(report.describe())
    return 0


def cmd_quarantine(args: argparse.Namespace, settings: Settings) -> int:
    """List the quarantined rows, which of them a later delivery corrected, and write them as a CSV to correct
    and deliver again (orchestration/quarantine.py). Reads only, under the warehouse's lock."""
    from orchestration.locking import reading_lock
    from orchestration.quarantine import quarantined_rows, write_csv
    from orchestration.warehouse import connect

    from orchestration.unload import ledger_path

    # named as `privdom unload` takes them: by the path under landing/, or by a path to the file (an absolute
    # one, or relative to the working directory, as a shell completes it); a path under landing/ was compared
    # as it was given, and its rows were silently 0
    files = list(dict.fromkeys(ledger_path(settings, f) for f in args.files)) if args.files else None
    if not settings.warehouse_path.exists():
        # nothing loaded yet: no row is quarantined (exit 0, as on a warehouse without any), and a file named
        # is one the ledger does not know (exit 2, as there); it exited 2 either way
        unknown, every = list(files or []), []
    else:
        with reading_lock(settings.data_dir, what="privdom quarantine", log=lambda m: print(m, file=sys.stderr)):
            con = connect(settings.warehouse_path, read_only=True)
            try:
                unknown = _not_in_ledger(con, files or [])
                every = quarantined_rows(con, source=args.source, files=files) if not unknown else []
            finally:
                con.close()
    if unknown:
        print(f"privdom quarantine: no file {', '.join(unknown)} in raw.ingestion_ledger (name a file by its path "
              "under landing/, as `privdom run` lists it, e.g. orders/orders_20240530.csv)", file=sys.stderr)
        return 2
    rows = [r for r in every if r.corrected_in is None] if args.open else every
    if args.csv:
        try:
            n = write_csv(rows, Path(args.csv))
        except ValueError as exc:
            print(f"privdom quarantine: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:  # "[Errno 2] No such file or directory: …", which named no option
            print(f"privdom quarantine: --csv {args.csv}: cannot be written ({exc.strerror or exc})", file=sys.stderr)
            return 1
        print(f"{n} quarantined row(s) written to {args.csv}: correct them, and deliver the file under a new name "
              "in landing/<source>/ with a batch date (its _file, _row_number and _rules columns are ignored)")
        return 0
    for r in rows:
        state = f"corrected in {r.corrected_in}" if r.corrected_in else "open"
        if r.copies > 1:  # a feed that sends the last days again: one line per row, at its latest copy
            state += f" (sent {r.copies} times, first in {r.first_file})"
        print(f"{r.file_path}\trow {r.row_number}\t{r.rules}\t{state}")
    opened = sum(1 for r in every if r.corrected_in is None)
    copies = sum(r.copies for r in every)
    more = f" ({copies:,} copies: rows sent again unchanged are listed once)" if copies != len(every) else ""
    print(f"{len(every)} quarantined row(s){more}, {opened} open, {len(every) - opened} corrected by a later delivery",
          file=sys.stderr)
    return 0


def _not_in_ledger(con, files: list[str]) -> list[str]:
    """Those of `files` (paths under landing/) that raw.ingestion_ledger does not know, in their order."""
    from orchestration import warehouse

    if not files:
        return []
    if not warehouse.table_exists(con, "raw.ingestion_ledger"):
        return list(files)
    known = {p for (p,) in con.execute("select distinct file_path from raw.ingestion_ledger "
                                       "where file_path in (select unnest(?::varchar[]))", [files]).fetchall()}
    return [f for f in files if f not in known]


def cmd_dbt(args: argparse.Namespace, settings: Settings) -> int:
    """dbt on this data directory, as privdom's own dbt steps run it: the same dbt, project, profile env vars
    and settings (`--vars`: the settings dbt reads, overlaid by the caller's own `--vars`), holding the
    warehouse's lock (it waits while a run writes). Returns dbt's exit status."""
    import subprocess

    import yaml

    from orchestration import dbt as dbt_runner
    from orchestration.locking import warehouse_lock

    dbt_args = list(args.dbt_args)
    if dbt_args[:1] == ["--"]:
        dbt_args = dbt_args[1:]
    if not dbt_args:
        raise SettingsError("privdom dbt needs a dbt command, e.g. `privdom dbt test --select marts`")
    if _option_value(dbt_args, "--data-dir") is not None or "--data-dir" in dbt_args:
        # after `dbt` it is dbt's (which has no such option), and the command ran on $PRIVDOM_HOME or ./data:
        # its lock taken there, its incremental models' fingerprint reset there by a --vars override
        raise SettingsError(f"privdom dbt: give --data-dir before `dbt` (privdom --data-dir DIR dbt {dbt_args[0]} ...): "
                            f"what follows `dbt` goes to dbt, and this would have run on {settings.data_dir}")
    variables = settings.dbt_vars()
    rest: list[str] = []
    i = 0
    while i < len(dbt_args):
        arg = dbt_args[i]
        if arg == "--vars" or arg.startswith("--vars="):
            if arg == "--vars":
                if i + 1 >= len(dbt_args):
                    raise SettingsError("privdom dbt: --vars needs a value, e.g. --vars '{privdom_test_all_rows: true}'")
                text, i = dbt_args[i + 1], i + 2
            else:
                text, i = arg.split("=", 1)[1], i + 1
            try:
                given = yaml.safe_load(text)
            except yaml.YAMLError as exc:
                raise SettingsError(f"privdom dbt: --vars is not a YAML mapping: {exc}") from None
            if not isinstance(given, dict):
                raise SettingsError(f"privdom dbt: --vars must be a YAML mapping, got {text!r}")
            variables.update({str(k): v for k, v in given.items()})
            continue
        rest.append(arg)
        i += 1
    named = _option_value(rest, "--target", "-t")
    target = named or dbt_runner.DBT_TARGET
    on_duckdb = target == dbt_runner.PIPELINE_TARGET
    words = [a for a in rest if not a.startswith("-")][:2]  # the command (and `docs`'s subcommand)
    command = " ".join(words[:2]) if words[:1] == ["docs"] else (words[0] if words else "")
    if command == "clean":
        raise SettingsError("privdom dbt clean would delete dbt_project/target, the pipeline's manifest with it; "
                            f"remove dbt_project/{MANUAL_DBT_TARGET_PATH} (privdom dbt's outputs) by hand instead")
    # commands that read no warehouse: no lock (`docs serve` runs until stopped), no warehouse needed
    reads_warehouse = command not in ("", "parse", "deps", "ls", "list", "docs serve", "init")  # "": --version, --help
    if on_duckdb and reads_warehouse and not settings.warehouse_path.exists():
        # dbt-duckdb would create an empty warehouse file
        raise SettingsError(f"no warehouse at {settings.warehouse_path} yet: `privdom run` builds it")
    if target == "spark" and reads_warehouse and (os.environ.get("PRIVDOM_SPARK_METHOD") or "session") == "session":
        # dbt's subprocess would start a new local Spark with an empty metastore (and leave metastore_db/ and
        # derby.log in dbt_project/): no source there, and a long stack trace about `raw`.`orders`
        raise SettingsError(
            f"privdom dbt --target {target}: the Spark target's session method (PRIVDOM_SPARK_METHOD unset or "
            "`session`) runs dbt on the SparkSession of the Python process that calls it, and privdom dbt starts "
            "dbt as a process of its own, where that would be a new, empty local Spark. Point it at a cluster "
            "(PRIVDOM_SPARK_METHOD=thrift with PRIVDOM_SPARK_HOST) or call dbt from the process that owns the "
            "session (docs/scale-out.md)."
        )
    dbt_runner.apply_dbt_environment(settings)
    cmd = [str(dbt_runner.dbt_executable()), *rest]
    if not command:  # `privdom dbt --version`, `--help`: dbt's own answer
        return subprocess.run(cmd, cwd=dbt_runner.DBT_PROJECT_DIR).returncode
    if "--project-dir" not in rest and command not in ("init",):
        cmd += ["--project-dir", str(dbt_runner.DBT_PROJECT_DIR)]
    if "--profiles-dir" not in rest:
        cmd += ["--profiles-dir", str(dbt_runner.DBT_PROJECT_DIR)]
    if named is None:
        cmd += ["--target", target]
    if _option_value(rest, "--log-path") is None and settings.data_dir.is_dir():
        # dbt's log (dbt show logs the rows it shows) stays in this data directory, not in the checkout's
        # dbt_project/logs/ shared by every data directory (docs/privacy.md)
        cmd += ["--log-path", str(settings.data_dir / "logs" / "dbt")]
    if _option_value(rest, "--target-path") is None and command not in ("debug", "deps", "init"):
        # its own: the pipeline's target/manifest.json (read by the Dagster definitions) stays the pipeline's
        cmd += ["--target-path", MANUAL_DBT_TARGET_PATH]
    cmd += ["--vars", json.dumps(variables, sort_keys=True, separators=(",", ":"), default=str)]
    if not any(a in ("--use-colors", "--no-use-colors") for a in rest) and not dbt_runner.colour_wanted():
        # dbt colours its output whatever it is written to: escape codes in a file or a pipe (`| less`, CI logs)
        cmd.append("--no-use-colors")
    if not (on_duckdb and reads_warehouse):
        return subprocess.run(cmd, cwd=dbt_runner.DBT_PROJECT_DIR).returncode
    pipeline_vars = settings.dbt_vars()
    overridden = sorted(k for k in dbt_runner.INCREMENTAL_VARS if variables.get(k) != pipeline_vars.get(k))
    with warehouse_lock(settings.data_dir, what="privdom dbt", log=lambda m: print(m, file=sys.stderr)):
        if command in BUILDS_MODELS and not overridden and "--full-refresh" not in rest:
            _warn_of_stale_incremental_models(settings)
        if command in BUILDS_MODELS and not {"-h", "--help"} & set(rest):  # dbt's help builds nothing
            from orchestration.warehouse import connection

            with connection(settings.warehouse_path) as con:
                # its tests, if it runs any, report here, not to Dagster, whose gates would pass exports, syncs and
                # the BI copy materialized alone on the last run's evaluations (dbt_runner.UNTESTED_TABLE)
                dbt_runner.mark_untested(con, dbt_runner.STEP_ORDER, dbt_runner.MANUAL_BUILD, f"privdom dbt {command}")
                if overridden:
                    # incremental models built under other vars than the settings' would be kept by the pipeline's
                    # next run, whose record of what they were built with still matches the settings
                    dbt_runner.invalidate_fingerprint(con)
            print(f"privdom dbt: exports, syncs and the BI copy wait until the pipeline's next whole build (`privdom "
                  f"run`, or the job whole_graph) has tested what dbt {command} builds", file=sys.stderr)
            if overridden:
                print(f"privdom dbt: --vars sets {', '.join(overridden)} otherwise than the settings: the pipeline's "
                      "next run rebuilds its incremental models from raw", file=sys.stderr)
        return subprocess.run(cmd, cwd=dbt_runner.DBT_PROJECT_DIR).returncode


def _warn_of_stale_incremental_models(settings: Settings) -> None:
    """Before a dbt command that builds models: say so when the pipeline's next run would rebuild a step's
    incremental models from raw (an upgrade changed their SQL, `privdom unload`, a changed setting, a rebuild
    that did not finish). Built incrementally now, they fail on a new column ("The source and target schemas on
    this incremental model are out of sync", with advice about on_schema_change that does not apply here) or
    take in new rows under the new SQL beside old ones (the upgrade review)."""
    from orchestration import dbt as dbt_runner
    from orchestration.warehouse import connection

    fingerprint = dbt_runner.incremental_fingerprint(settings)
    with connection(settings.warehouse_path, read_only=True) as con:
        for step in dbt_runner.STEP_ORDER:
            recorded = dbt_runner.recorded_fingerprint(con, step)
            reason = dbt_runner.rebuild_reason(recorded, fingerprint) if recorded is not None else None
            if reason:
                print(f"privdom dbt: warning: the pipeline's next run rebuilds the incremental models of {step} "
                      f"and the steps after it from raw ({reason}); `privdom run` first, or add --full-refresh "
                      "to rebuild the ones selected here. Built incrementally now, they may fail on a changed "
                      "column or keep rows built before", file=sys.stderr)
                return


# dbt commands that write models (incremental ones among them)
BUILDS_MODELS = ("run", "build", "retry", "snapshot", "seed", "clone")


def _option_value(args: list[str], *names: str) -> str | None:
    """The value of an option given as `--name value` or `--name=value`, else None."""
    for i, arg in enumerate(args):
        for name in names:
            if arg == name and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(name + "="):
                return arg.split("=", 1)[1]
    return None


def _data_dir_text(text: str) -> str:
    """A --data-dir value: an empty one fell back to $PRIVDOM_HOME or ./data, silently another directory."""
    if not text.strip():
        raise argparse.ArgumentTypeError("is empty (leave the option out for $PRIVDOM_HOME, else ./data)")
    return text


def _at_least_one(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def _dirty_rate(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0 <= value < MAX_DIRTY_RATE:
        raise argparse.ArgumentTypeError(f"must be from 0 to below {MAX_DIRTY_RATE}, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="privdom",
        description="Private-domain data pipeline: landing files → DuckDB warehouse → metrics → segments.",
    )
    parser.add_argument(
        "--data-dir", type=_data_dir_text,
        help="data directory (default: $PRIVDOM_HOME, else ./data); holds landing/, warehouse.duckdb, exports/",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def add_generate_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--customers", type=_at_least_one, help="number of customers, 1 or more (default: setting "
                       "demo_customers, 3000)")
        p.add_argument("--days", type=_at_least_one, help="days of history, 1 or more (default: setting demo_days, 240)")
        p.add_argument("--seed", type=int, help="random seed (default: setting demo_seed, 42); same seed, same files")
        p.add_argument("--dirty-rate", type=_dirty_rate, help="share of rows that break a contract rule, from 0 to "
                       "below 0.5 (default: setting demo_dirty_rate, 0.01; at least one row per rule when above 0, so small data get a higher "
                       "share)")

    def add_data_dir(p: argparse.ArgumentParser) -> None:  # also after the command: `privdom run --data-dir D`
        p.add_argument("--data-dir", dest="sub_data_dir", metavar="DATA_DIR", type=_data_dir_text,
                       help="data directory (default: $PRIVDOM_HOME, else ./data); may also come before the command")

    p = sub.add_parser(
        "generate", help="write deterministic synthetic landing files",
        description="Write synthetic channel events, orders and referrals for --customers customers over --days "
        "days to landing/<source>/, a batch per source and day, in every format and encoding the contract "
        "takes, with a share of rows that break a rule (--dirty-rate) and re-delivered rows and files. The same "
        "options and seed write the same files. The three source folders are emptied first; a landing/ holding "
        "files that privdom generate did not write is refused. Loads nothing: `privdom run` does.")
    add_generate_options(p)
    add_data_dir(p)
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser(
        "run", help="materialize the whole asset graph in-process and print a summary",
        description="Load every landing file not loaded before (validated, bad rows quarantined), update the "
        "identity graph and customer keys, build and test the dbt models, and write the segments, exports, "
        "syncs and the BI copy, in one Dagster run in this process; then print a summary of what it loaded, "
        "how long each phase took and where the results are. Exit 0 when every step succeeded, 1 when one failed "
        "(the summary names it and the log), 130 on Ctrl-C, 143 on SIGTERM, 129 on SIGHUP. Waits for another run "
        "holding the warehouse.")
    p.add_argument("--verbose", action="store_true", help="show Dagster's event log")
    p.add_argument(
        "--full-refresh",
        action="store_true",
        help="rebuild the incremental dbt models from raw and the identity graph and customer keys in full, "
        "instead of taking in only newly loaded files",
    )
    add_data_dir(p)
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "demo", help="generate synthetic data, then run the pipeline on it",
        description="`privdom generate`, then `privdom run`, on this data directory (the defaults come from the "
        "settings demo_customers, demo_days, demo_seed and demo_dirty_rate). Running it again adds nothing: "
        "the files it writes are the same and are loaded once.")
    add_generate_options(p)
    p.add_argument("--verbose", action="store_true", help="show Dagster's event log")
    add_data_dir(p)
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("ui", help="start the Dagster UI on this workspace",
                       description="Start the Dagster UI and daemon (dg dev -w workspace.yaml) on this workspace and data directory.")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=3000, help="port (default 3000)")
    add_data_dir(p)
    p.set_defaults(func=cmd_ui)

    p = sub.add_parser("segments", help="check the segment definitions and count their customers, writing nothing",
                       description="Validate the segment definitions and destinations of this data directory and count "
                       "each enabled segment's customers (matched by its rule, suppressed, members) on the warehouse "
                       "as it is. Nothing is written, exported or sent.")
    add_data_dir(p)
    p.set_defaults(func=cmd_segments)

    p = sub.add_parser(
        "prune", help="remove run history, run logs and sync audit rows older than some days",
        description="Remove what every run adds and nothing reads again, older than --older-than days: finished "
        "Dagster runs with their event logs and captured output (the runs that hold a check's latest "
        "evaluation are kept), the files that `dagster run delete` leaves, logs/run-*.log and logs/dbt/, and "
        "the rows of segments.sync_log and segments.sync_runs; Dagster's shared SQLite files are compacted. Waits for a privdom run in progress. Data (raw rows, "
        "identity, marts, segments' state) and exports ([exports] keep) are not touched.")
    p.add_argument("--older-than", type=_at_least_one, default=90, metavar="DAYS",
                   help="remove what is older than this many days, 1 or more (default 90)")
    p.add_argument("--dry-run", action="store_true", help="say what would be removed, remove nothing")
    add_data_dir(p)
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "unload", help="take a file loaded by mistake back out of the warehouse",
        description="Take the rows of loaded landing files out of raw.<source> and raw.quarantine, in one "
        "transaction, and mark their ledger rows `unloaded`; the next `privdom run` rebuilds the models from raw "
        "without them (customers they merged are split again, the split-off ones under new keys). Name a file "
        "by its path under landing/ as the run summary and raw.ingestion_ledger print it "
        "(orders/orders_20240530.csv), or by a path to it. The file itself is not touched: left in landing/, it "
        "is not read again; delivered again under another name, it loads. Waits for a privdom run in progress.")
    p.add_argument("files", nargs="+", metavar="FILE", help="a loaded file's path under landing/")
    p.add_argument("--dry-run", action="store_true", help="say what would be taken out, change nothing")
    add_data_dir(p)
    p.set_defaults(func=cmd_unload)

    p = sub.add_parser(
        "quarantine", help="list quarantined rows, which were corrected since, and write them as a CSV to correct",
        description="List the rows in raw.quarantine (file, row number, the rules broken) and whether a file loaded "
        "after theirs holds a row of the same event_id, or order_id/referral_id and updated_at (corrected). "
        "With --csv, write them (one source) with the contract's columns as delivered, to correct and deliver "
        "again under a new name. Reads only.")
    p.add_argument("files", nargs="*", metavar="FILE", help="only these files: their path under landing/ (orders/orders_20240530.csv), or a path to them; "
                   "a file the ledger does not know exits 2")
    p.add_argument("--source", choices=("channel_events", "orders", "referrals"), help="only this source")
    p.add_argument("--open", action="store_true", help="only the rows no later delivery corrected")
    p.add_argument("--csv", metavar="OUT", help="write the rows to this CSV file instead of listing them")
    add_data_dir(p)
    p.set_defaults(func=cmd_quarantine)

    p = sub.add_parser(
        "dbt", help="run a dbt command on this data directory's warehouse, with the pipeline's settings",
        description="Run dbt as privdom's own steps run it: the project in dbt_project/, this data directory's "
        "warehouse, the settings dbt reads passed as --vars (a --vars of yours is laid over them), and the "
        "warehouse's lock held while it runs. Give privdom's --data-dir before `dbt`; everything after `dbt` "
        "goes to dbt. Example: privdom dbt test --vars '{privdom_test_all_rows: true}'",
    )
    p.add_argument("dbt_args", nargs=argparse.REMAINDER, metavar="DBT_ARGS", help="the dbt command and its options")
    p.set_defaults(func=cmd_dbt)
    return parser


UMASK_VARIABLE = "PRIVDOM_UMASK"


def _no_access_for_others() -> None:
    """Files and folders privdom creates are not readable by other users of the machine: the warehouse, the
    landing files, exports, the BI copy, logs and Dagster's storage hold personal data (PIPL; the privacy review
    found them all world-readable, 0644). The user's own umask stays for the owner and the group (share the
    BI copy or the exports with a BI or marketing tool's user through a group), and a stricter one is kept.
    $PRIVDOM_UMASK (octal, e.g. 022) is taken as it is instead, for a tool outside the group that reads them."""
    wanted = os.environ.get(UMASK_VARIABLE, "").strip()
    if wanted:
        try:
            value = int(wanted, 8)
        except ValueError:
            value = -1
        if not 0 <= value <= 0o777:
            raise SettingsError(f"${UMASK_VARIABLE} = {wanted!r} is not an octal umask such as 022 or 027")
        os.umask(value)
        return
    os.umask(os.umask(0) | 0o007)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # everything after `dbt` is dbt's, options included (argparse would take `--version` for privdom's)
    at = next((i for i, a in enumerate(argv) if a == "dbt" and (i == 0 or argv[i - 1] != "--data-dir")), None)
    if at is not None and "-h" not in argv[at + 1 : at + 2] and "--help" not in argv[at + 1 : at + 2]:
        args = build_parser().parse_args(argv[: at + 1])
        args.dbt_args = argv[at + 1 :]
    else:
        args = build_parser().parse_args(argv)
    settings = None
    try:
        _no_access_for_others()
        sub_data_dir = getattr(args, "sub_data_dir", None)
        if sub_data_dir and args.data_dir and resolve_data_dir(sub_data_dir) != resolve_data_dir(args.data_dir):
            # one of them was silently left out (the one after the command won)
            raise SettingsError(f"--data-dir is given twice, before and after the command, naming two directories "
                                f"({args.data_dir} and {sub_data_dir}): give it once")
        settings = load_settings(sub_data_dir or args.data_dir)
        _warn_of_misspelled_environment(settings)
        if args.func in (cmd_run, cmd_demo, cmd_ui, cmd_dbt):
            _require_source_checkout()
        if args.func in (cmd_generate, cmd_run, cmd_demo, cmd_ui):
            _require_writable_data_dir(settings)
        return args.func(args, settings)
    except SettingsError as exc:
        if settings is None:
            _warn_of_misspelled_environment(None)
        print(f"privdom: {exc}", file=sys.stderr)
        return 2
    except WarehouseLockedError as exc:
        print(f"privdom: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("privdom: interrupted (Ctrl-C)", file=sys.stderr)
        return 130
    except BrokenPipeError:
        if not _output_pipe_closed():
            raise
        # the reader of the output stopped reading (`privdom quarantine | head`): end quietly, as `cat` would,
        # not with "privdom: [Errno 32] Broken pipe" and the status of a failed command
        return BROKEN_PIPE_STATUS
    except Exception as exc:
        # a bad segment or destination definition is found when the definitions load, inside the run, wrapped
        # by Dagster: its own message names the file and the segment, and what is allowed
        found = _definition_error(exc)
        if found is None:
            unreadable = _file_error(exc)
            if unreadable is None:
                raise
            print(f"privdom: {unreadable}", file=sys.stderr)
            return 1
        print(f"privdom: {found}", file=sys.stderr)
        return 2


# 128 + SIGPIPE: what a shell reports for a command a closed pipe ended (`cat big | head`)
BROKEN_PIPE_STATUS = 141


def _output_pipe_closed() -> bool:
    """Whether stdout or stderr is a pipe nobody reads any more; if so, stdout is pointed at /dev/null so that
    nothing written later (the exit's flush) fails again."""
    import select

    closed = False
    for stream in (sys.stdout, sys.stderr):
        try:
            fd = stream.fileno()
            poll = select.poll()
            poll.register(fd, select.POLLOUT)
            if any(event & select.POLLERR for _, event in poll.poll(0)):  # a pipe's write end with no reader
                closed = True
                os.dup2(os.open(os.devnull, os.O_WRONLY), fd)
        except (AttributeError, OSError, ValueError):  # no such stream, or not a file
            continue
    return closed


def _file_error(exc: BaseException) -> str | None:
    """One line for a file of the data directory that cannot be opened, read or written (a damaged warehouse, a
    read-only mount, a full disk), or None for any other error (which keeps its traceback)."""
    import sqlite3

    import duckdb

    # Dagster's run storage (SQLite under $PRIVDOM_HOME/dagster) on a full disk or read-only files: its error,
    # through SQLAlchemy's, was a 127-line traceback that never said where (runbook review)
    cause: BaseException | None = exc
    for _ in range(10):  # SQLAlchemy keeps the driver's error as .orig; Dagster may wrap it again
        if cause is None or isinstance(cause, sqlite3.OperationalError):
            break
        orig = getattr(cause, "orig", None)
        cause = orig if isinstance(orig, BaseException) else (cause.__cause__ or cause.__context__)
    if isinstance(cause, sqlite3.OperationalError):
        text = str(cause)
        if any(s in text for s in ("disk I/O error", "database or disk is full", "readonly database", "unable to open")):
            return (f"Dagster's run storage (the SQLite files under the data directory's dagster/) could not be "
                    f"written: {text}; check the free space and permissions there")
        return None
    if not isinstance(exc, (OSError, duckdb.IOException)):
        return None
    text = " ".join(str(exc).split()) or type(exc).__name__
    if "not a valid DuckDB database file" in text:
        text += (" It is damaged: restore warehouse.duckdb from a backup. Deleting it makes the next run rebuild"
                 " from landing/, with customer keys issued anew (segment exports are withheld until exports/ is"
                 " moved aside) and no record of what destinations hold.")
    return text


def _require_source_checkout() -> None:
    """privdom runs the dbt project and the workspace of its source checkout (`pip install -e .`): a wheel or
    `pip install .` carries the Python package only, and its first dbt parse failed deep in a run (the
    install-and-paths review)."""
    from orchestration.settings import DBT_PROJECT_DIR

    if not (DBT_PROJECT_DIR / "dbt_project.yml").is_file():
        raise SettingsError(
            f"no dbt project at {DBT_PROJECT_DIR}: privdom runs from its source checkout, installed with "
            "`pip install -e .` there (README, 'Two commands'); a wheel or `pip install .` holds the Python package only")


def _require_writable_data_dir(settings: Settings) -> None:
    """A data directory that cannot be created or written is refused with one line, not a traceback. Nothing is
    created here: a command refused later (another dbt target) must leave no data directory behind."""
    import tempfile

    path = settings.data_dir
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    why = None
    if not existing.is_dir():
        why = f"{existing} is not a directory"
    elif existing == path:
        try:
            with tempfile.TemporaryFile(dir=path):
                pass
        except OSError as exc:
            why = exc.strerror
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"{existing} is not writable"
    if why:
        raise SettingsError(f"data directory {path} cannot be created or written ({why}); choose another with "
                            "--data-dir or PRIVDOM_HOME")


def _warn_of_misspelled_environment(settings: Settings | None) -> None:
    referenced = referenced_environment(settings) if settings is not None else []
    for warning in misspelled_environment(referenced=referenced):
        print(f"privdom: warning: {warning}", file=sys.stderr)


def _definition_error(exc: BaseException) -> BaseException | None:
    """The SegmentDefinitionError or DestinationConfigError that `exc` is or was raised from, if any."""
    from orchestration.segments.definitions import SegmentDefinitionError
    from orchestration.segments.destinations import DestinationConfigError

    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, (SegmentDefinitionError, DestinationConfigError)):
            return current
        seen.add(id(current))
        # what it was raised from, or raised while handling unless `from None` said that does not matter
        current = current.__cause__ or (None if current.__suppress_context__ else current.__context__)
    return None


def _other_threads() -> list[threading.Thread]:
    """Threads Python's exit would wait for (daemon threads it abandons, as os._exit does)."""
    main_thread = threading.main_thread()
    return [t for t in threading.enumerate() if t is not main_thread and not t.daemon and t.is_alive()]


def run(argv: list[str] | None = None) -> None:
    """The `privdom` console script (and `python -m orchestration.cli`): main(), then exit without Python's
    teardown.

    After `privdom run` the interpreter holds Dagster, dbt, Great Expectations and their objects; freeing
    them one by one at exit took ~1.4 s after a new day on a 1M history (docs/performance.md), time in which
    nothing is written. The exit does what that teardown would do that matters (the atexit handlers:
    logging's flush, temporary directories, GX's DuckDB engines; every warehouse connection is closed by
    then), flushes stdout and stderr (Python's and C's), and ends the process. Only when no thread Python would
    wait for is left (daemon threads, such as tqdm's monitor, Python abandons too): such a thread would be cut
    off, so then the exit is Python's. PRIVDOM_PYTHON_EXIT=1 always takes Python's.
    An exception out of main() is not caught here: Python prints it and exits as usual.

    The process runs this one command, so its long-lived objects may leave the garbage collector's full
    passes (orchestration/longlived.py).
    """
    from orchestration import longlived

    longlived.enable()
    code = main(argv)
    if os.environ.get("PRIVDOM_PYTHON_EXIT") == "1" or _other_threads():
        sys.exit(code)
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        if stream is None:  # no stream (started with it closed)
            continue
        try:
            stream.flush()
        except Exception:  # a closed pipe (`privdom run | head`), as main() ends on one
            code = BROKEN_PIPE_STATUS
    try:  # C's stdio buffers (a library printing through printf), which os._exit does not flush
        import ctypes

        ctypes.CDLL(None).fflush(None)
    except Exception:  # pragma: no cover - no C library to ask (not on Linux or macOS)
        pass
    os._exit(code or 0)


if __name__ == "__main__":
    run()
