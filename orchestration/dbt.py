"""Running dbt the same way everywhere: same executable, same profile env vars, same --vars.

dbt's partial parsing is lost when parse and build see different profile env vars or vars, so every dbt
call privdom makes goes through `dbt_args` / `dbt_environment`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import fcntl
import hashlib
import json
import os
import re
import secrets
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from orchestration import validation_worker, warehouse, warm
from orchestration.settings import DBT_PROJECT_DIR, Settings, SettingsError

DBT_TARGET = os.environ.get("PRIVDOM_DBT_TARGET", "duckdb")
# The target the pipeline's own steps work with: ingest, identity, segments, exports and the BI copy read and
# write the DuckDB warehouse, and so does each dbt step around its build (docs/scale-out.md, "What runs where").
PIPELINE_TARGET = "duckdb"
MANIFEST_PATH = DBT_PROJECT_DIR / "target" / "manifest.json"
PARTIAL_PARSE_FILE = "partial_parse.msgpack"
# Run tag that makes every dbt step of a run rebuild its incremental models from raw (`privdom run
# --full-refresh`; in the UI, launch with this tag set to "true").
FULL_REFRESH_TAG = "privdom/full_refresh"


def full_refresh_requested(tags: dict[str, str]) -> bool:
    """Whether a run's tags ask for a full refresh (FULL_REFRESH_TAG set to 1, true or yes)."""
    return tags.get(FULL_REFRESH_TAG, "").lower() in ("1", "true", "yes")
# What each dbt step's incremental models were last built with (see incremental_fingerprint) and, for staging,
# what its data tests have covered (read by macros/data_tests/privdom_rows_to_test.sql); pipeline bookkeeping,
# next to the ingestion ledger.
INCREMENTAL_STATE_TABLE = "raw.dbt_incremental_state"


def dbt_executable() -> Path:
    """The dbt next to this interpreter: dagster-dbt otherwise looks for `dbt` on PATH."""
    candidate = Path(sys.executable).parent / "dbt"
    return candidate if candidate.exists() else Path("dbt")


# The warm server's client while `warm_dbt()` is active (privdom run), else None.
_WARM_EXECUTABLE: Path | None = None


def command_executable() -> Path:
    """What privdom's dbt commands run: during `privdom run` the warm server's client (dbt already imported:
    orchestration/warm.py), otherwise `dbt_executable()`."""
    return _WARM_EXECUTABLE or dbt_executable()


@contextlib.contextmanager
def warm_dbt() -> Iterator[Path | None]:
    """Start the warm dbt server for the dbt commands of this block (`command_executable()` names its
    client), and stop it (by PID) at the end. Off with PRIVDOM_DBT_WARM=0; yields the client or None."""
    global _WARM_EXECUTABLE
    real = dbt_executable()
    # only for the dbt installed with this interpreter: that is the dbt the server imports
    if not warm.enabled() or not real.is_absolute() or _WARM_EXECUTABLE is not None:
        yield None
        return
    server = warm.WarmServer(fallback=real, preload=warm.DEFAULT_PRELOAD)
    try:
        server.start()
    except OSError:  # no usable temporary directory, a client that cannot be executed there: dbt starts cold
        server.stop()
        yield None
        return
    _WARM_EXECUTABLE = server.executable
    try:
        yield server.executable
    finally:
        _WARM_EXECUTABLE = None
        server.stop()


def require_pipeline_target() -> None:
    """Raise SettingsError unless dbt builds the target the pipeline's steps read (PRIVDOM_DBT_TARGET=duckdb).

    With another target (spark), dbt would build on that engine while the ingest, identity and publishing
    steps go on with DuckDB: the first dbt step would fail on missing sources, or the marts published would
    not be the ones just built."""
    if DBT_TARGET != PIPELINE_TARGET:
        raise SettingsError(
            f"PRIVDOM_DBT_TARGET={DBT_TARGET}: `privdom run` and the Dagster assets build on the "
            f"{PIPELINE_TARGET!r} target only (their ingest, identity and publishing steps read and write the "
            "DuckDB warehouse). Build the dbt models on Spark with dbt itself, on a cluster "
            "(PRIVDOM_SPARK_METHOD=thrift and `dbt build --target spark`; docs/scale-out.md), or unset "
            "PRIVDOM_DBT_TARGET."
        )


def dbt_vars_arg(settings: Settings) -> list[str]:
    return ["--vars", json.dumps(settings.dbt_vars(), sort_keys=True, separators=(",", ":"))]


# Incremental models outside staging (their SQL, and what they read that is not a table, is in the fingerprint;
# tests/test_dbt_parse.py finds every model that can be incremental listed here)
INCREMENTAL_INTERMEDIATE_MODELS = ("int_components__first_touch.sql", "int_touches__unioned.sql",
                                   "int_channel_events__customers.sql", "int_customers__identifiers.sql",
                                   "int_orders__customers.sql", "int_customers__purchases.sql",
                                   "int_customers__relationship_months.sql", "int_customers__relationships.sql")
# Tables (rebuilt every run) whose rows incremental models keep: int_customers__purchases and
# int_customers__relationships keep what they computed from int_customers__keyed for every customer they do not
# compute again
FINGERPRINTED_TABLE_MODELS = ("int_customers__keyed.sql",)
# Vars an incremental model's rows depend on: the placeholder list (which identifiers are NULL) and the windows
# of int_customers__purchases (activation, retention, repurchase)
INCREMENTAL_VARS = ("placeholder_values", "activation_window_days", "retention_start_days", "retention_end_days",
                    "repurchase_window_days")


def incremental_fingerprint(settings: Settings) -> str:
    """A digest of everything an incremental (staging) model's rows depend on besides raw data.

    The vars of INCREMENTAL_VARS (the placeholder list, which changes which identifiers are NULL, and the windows
    of the purchase flags), the incremental models (staging, and the intermediate ones that take in the identity
    graph's changes), the tables whose rows they keep (FINGERPRINTED_TABLE_MODELS) and the macros (new SQL after
    an upgrade). When it differs from the one recorded at the last successful build, the incremental models are
    rebuilt from raw (`--full-refresh`), so rows already built with the old rules are never mixed with new ones.
    Other vars (the referral window, the triangle's baseline month) only reach tables that are rebuilt on every
    run.
    """
    digest = hashlib.sha256()
    dbt_vars = settings.dbt_vars()
    digest.update(json.dumps({k: dbt_vars[k] for k in INCREMENTAL_VARS}, sort_keys=True).encode())
    files = [
        DBT_PROJECT_DIR / "dbt_project.yml",
        *(DBT_PROJECT_DIR / "models" / "staging").glob("*.sql"),
        *(DBT_PROJECT_DIR / "models" / "intermediate" / name
          for name in INCREMENTAL_INTERMEDIATE_MODELS + FINGERPRINTED_TABLE_MODELS),
        *(DBT_PROJECT_DIR / "macros").glob("*.sql"),
    ]
    for path in sorted(files):
        digest.update(path.relative_to(DBT_PROJECT_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


def graph_marks(con) -> list[tuple[str, int]] | None:
    """Every reader's place in the identity graph's change log (identity_state.graph_consumers), None without
    one."""
    from orchestration.identity.graph import CONSUMERS_TABLE

    if not warehouse.table_exists(con, CONSUMERS_TABLE):
        return None
    return con.execute(f"select consumer, build_seq from {CONSUMERS_TABLE} order by consumer").fetchall()


def restore_graph_marks(con, marks: list[tuple[str, int]] | None) -> None:
    """Put the dbt models' places in the change log back as `marks` had them (the customer keys' own place,
    which no dbt build moves, stays). A build of part of a dbt step computes its models from tables the same
    run may not have brought up to date; with its marks put back, the next whole build computes their
    customers again."""
    from orchestration.identity.graph import CONSUMERS_TABLE
    from orchestration.identity.keys import CONSUMER as KEYS_CONSUMER

    if marks is None or not warehouse.table_exists(con, CONSUMERS_TABLE):
        return
    with warehouse.transaction(con):
        con.execute(f"delete from {CONSUMERS_TABLE} where consumer <> ?", [KEYS_CONSUMER])
        rows = [(c, b) for c, b in marks if c != KEYS_CONSUMER]
        if rows:
            con.executemany(f"insert into {CONSUMERS_TABLE} values (?, ?)", rows)


def recorded_fingerprint(con, step: str) -> str | None:
    """The fingerprint recorded at `step`'s last successful build, None if never (or an older warehouse)."""
    if not warehouse.table_exists(con, INCREMENTAL_STATE_TABLE):
        return None
    row = con.execute(f"select fingerprint from {INCREMENTAL_STATE_TABLE} where step = ?", [step]).fetchone()
    return row[0] if row else None


# What raw.dbt_incremental_state holds for a step whose last build began to rebuild its incremental models from
# raw and did not succeed (or built only some of them): it matches no fingerprint, so the next build rebuilds
# them from raw again.
INCOMPLETE = "incomplete: a rebuild from raw did not finish"
# ... and for every step after `privdom unload` took files' rows out of raw (orchestration/unload.py)
UNLOADED = "unloaded: files were taken out of raw"


def rebuild_reason(recorded: str | None, fingerprint: str) -> str | None:
    """Why a step's incremental models must be rebuilt from raw, given what its last build recorded, or None:
    they can take in new rows only."""
    if recorded is None:
        return "no successful build of this step recorded yet"
    if recorded == UNLOADED:
        return "files were taken out of raw (privdom unload) since the last build"
    if recorded == INCOMPLETE:
        return "the last build that rebuilt them from raw did not finish, or built only some of them"
    if recorded != fingerprint:
        return "the SQL of the incremental models, or the vars their rows depend on, changed since the last build"
    return None


def invalidate_fingerprint(con, step: str | None = None, *, marker: str = INCOMPLETE) -> None:
    """Before a build with --full-refresh: from its first model on, the step's incremental models may hold rows
    computed under two fingerprints until it succeeds (a failed test, a crash, Ctrl-C, out of memory), so the
    record must match none. A review had a build under a changed window fail after rebuilding
    int_customers__purchases; the settings put back, the next run matched the old record, stayed incremental and
    kept 32 customers' activation from the failed build. A successful whole build records its fingerprint.
    Without `step`, every step's (`privdom dbt run --vars` building them under other vars than the settings);
    `marker` says why (INCOMPLETE, UNLOADED), and matches no fingerprint either."""
    if warehouse.table_exists(con, INCREMENTAL_STATE_TABLE):
        con.execute(f"update {INCREMENTAL_STATE_TABLE} set fingerprint = ?, recorded_at = ? where step = coalesce(?, step)",
                    [marker, dt.datetime.now(dt.UTC), step])


# Builds that replaced tables before Dagster recorded their data tests' evaluations. dagster-dbt hands a step's
# events (its check evaluations among them) to Dagster only once dbt has exited; a run killed inside a dbt step
# (kill -9, the OOM killer, Ctrl-C) left rebuilt marts whose tests never reported, and the exports materialized
# alone afterwards from the UI passed the gates on the run before's evaluations (the UI review published a bad
# mart's segment that way). Each dbt step writes its row before dbt starts and deletes it once its evaluations
# are Dagster's; a whole build of the step that succeeds deletes every row of the step. The members' gate, the exports,
# the syncs and the BI copy wait while a row of another run (or of `privdom dbt`) is there.
UNTESTED_TABLE = "raw.dbt_untested_builds"
# the run id `privdom dbt` records: its tests, if it ran any, reported to the terminal, not to Dagster
MANUAL_BUILD = "privdom dbt"


def mark_untested(con, steps: tuple[str, ...] | list[str], run_id: str, what: str) -> None:
    """Record that `steps` begin to replace tables whose tests Dagster has not seen yet."""
    con.execute("create schema if not exists raw")
    con.execute(f"create table if not exists {UNTESTED_TABLE} (step varchar not null, run_id varchar not null, "
                "what varchar not null, started_at timestamptz not null, primary key (step, run_id))")
    now = dt.datetime.now(dt.UTC)
    con.executemany(f"insert or replace into {UNTESTED_TABLE} values (?, ?, ?, ?)",
                    [(step, run_id, what, now) for step in steps])


def clear_untested(con, step: str, run_id: str, *, whole: bool) -> None:
    """Once a build's evaluations are Dagster's: its own row goes, and with `whole` (a whole build of the step
    that succeeded: it rebuilt and tested all of the step's tables), every row of the step."""
    if warehouse.table_exists(con, UNTESTED_TABLE):
        con.execute(f"delete from {UNTESTED_TABLE} where step = ? and (run_id = ? or ?)", [step, run_id, whole])


def untested_builds(con, run_id: str | None = None) -> list[str]:
    """The builds, other than `run_id`'s, that replaced tables whose tests Dagster has not recorded, in the
    words of the gates that wait for them."""
    if not warehouse.table_exists(con, UNTESTED_TABLE):
        return []
    rows = con.execute(f"select step, run_id, what, started_at from {UNTESTED_TABLE} where run_id <> ? "
                       "order by started_at, step", [run_id or ""]).fetchall()
    out = []
    for step, rid, what, started_at in rows:
        who = f"`{what}`" if rid == MANUAL_BUILD else f"Dagster run {rid[:8]}"
        out.append(f"{step} (rebuilt by {who} from {started_at:%Y-%m-%d %H:%M:%S %Z}, which ended before its "
                   "tests reported to Dagster: build the whole graph, `privdom run` or the job whole_graph)")
    return out


# The dbt steps in the order a run builds them: each reads the tables of the ones before it (through the identity
# graph and the customer keys, which follow staging's rows by themselves).
STEP_ORDER = ("dbt_staging", "dbt_identity_inputs", "dbt_models")


def stale_upstream(con, step: str, fingerprint: str) -> tuple[str, str | None] | None:
    """(the first step before `step` whose incremental models were not last rebuilt whole under `fingerprint`,
    what it records), or None. A build of `step` read that step's tables as they were: after `privdom unload`,
    rows its own next rebuild takes out. `step` must then record no fingerprint either, or its next build would
    stay incremental and keep them (a delete+insert model keeps a row whose key is gone)."""
    for upstream in STEP_ORDER[:STEP_ORDER.index(step)] if step in STEP_ORDER else ():
        recorded = recorded_fingerprint(con, upstream)
        if recorded != fingerprint:
            return upstream, recorded
    return None


def loaded_through(con) -> int:
    """The newest file_id of the ingestion ledger (0 without one): a dbt build that starts now takes in the
    rows of every file up to it (runs hold the warehouse lock, nothing is loaded during a build)."""
    if not warehouse.table_exists(con, "raw.ingestion_ledger"):
        return 0
    return int(con.execute("select coalesce(max(file_id), 0) from raw.ingestion_ledger").fetchone()[0])


# The model whose rows carry the build stamp the data tests of dbt_models are scoped by
# (macros/data_tests/privdom_rows_to_test.sql).
BUILD_STAMPED_MODEL = "intermediate.int_channel_events__customers"


def newest_build_stamp(con) -> dt.datetime | None:
    """The newest build stamp (`_built_at`) in BUILD_STAMPED_MODEL, None without one: after a successful whole
    dbt_models build, every row of it has passed that build's tests."""
    schema, table = BUILD_STAMPED_MODEL.split(".")
    columns = {r[0] for r in con.execute(  # none when the table does not exist
        "select column_name from information_schema.columns where table_catalog = current_database() "
        "and table_schema = ? and table_name = ?", [schema, table]
    ).fetchall()}
    if "_built_at" not in columns:
        return None
    return con.execute(f"select max(_built_at) from {BUILD_STAMPED_MODEL}").fetchone()[0]


def record_fingerprint(con, step: str, fingerprint: str, tested_through: int | None = None,
                       tested_built_at: dt.datetime | None = None) -> None:
    """Record `step`'s successful build: its fingerprint, and what its data tests have covered, for the next
    build's tests to look only at what came since (macros/data_tests/privdom_rows_to_test.sql): the newest
    ledger file_id staging took in (`tested_through_file_id`), the newest build stamp of dbt_models
    (`tested_built_at`). None keeps what was recorded before (a build that did not run all of its tests). Older
    warehouses gain the columns here."""
    con.execute("create schema if not exists raw")
    con.execute(
        f"create table if not exists {INCREMENTAL_STATE_TABLE} "
        "(step varchar primary key, fingerprint varchar not null, recorded_at timestamptz not null, "
        "tested_through_file_id bigint, tested_built_at timestamp)"
    )
    con.execute(f"alter table {INCREMENTAL_STATE_TABLE} add column if not exists tested_through_file_id bigint")
    con.execute(f"alter table {INCREMENTAL_STATE_TABLE} add column if not exists tested_built_at timestamp")
    con.execute(
        f"insert into {INCREMENTAL_STATE_TABLE} as s (step, fingerprint, recorded_at, tested_through_file_id, "
        "tested_built_at) values (?, ?, ?, ?, ?) on conflict (step) do update set fingerprint = excluded.fingerprint, "
        "recorded_at = excluded.recorded_at, "
        "tested_through_file_id = coalesce(excluded.tested_through_file_id, s.tested_through_file_id), "
        "tested_built_at = coalesce(excluded.tested_built_at, s.tested_built_at)",
        [step, fingerprint, dt.datetime.now(dt.UTC), tested_through, tested_built_at],
    )


def colour_wanted() -> bool:
    """Whether dbt may colour what it prints: only on a terminal, and not with NO_COLOR set (no-color.org). dbt
    colours its output whatever it is written to: escape codes in a pipe, `privdom run`'s logs/run-*.log, a CI log."""
    if os.environ.get("NO_COLOR"):
        return False
    try:
        return sys.stdout.isatty()
    except (AttributeError, ValueError):  # no stdout, or a closed one
        return False


def apply_dbt_environment(settings: Settings) -> None:
    """Export the env vars profiles.yml reads, for this process and the dbt processes it starts."""
    os.environ.update(settings.dbt_env())
    os.environ.setdefault("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
    # The graph is built in several dbt steps (see defs/dbt.py). "buildable" runs a test that spans two
    # steps (e.g. marts reconciled against staging) in the later step, once all its parents are built,
    # instead of in the first step where a parent does not exist yet.
    os.environ["DBT_INDIRECT_SELECTION"] = "buildable"


PARSE_STAMP_PATH = DBT_PROJECT_DIR / "target" / "privdom_parse_fingerprint.txt"
# not project files: dbt's outputs, installed packages, the per-user id file
_NOT_PROJECT = frozenset(("target", "logs", "dbt_packages", ".user.yml"))
# switches that say how privdom starts dbt and validation, not what dbt parses
_NOT_PARSE_ENV = frozenset((warm.ENV_SWITCH, validation_worker.ENV_SWITCH))
# what dbt parses with (its built-in macros live in dbt-adapters)
_DBT_DISTRIBUTIONS = ("dbt-core", "dbt-adapters", "dbt-common", "dbt-duckdb", "dbt-spark", "duckdb")


def parse_fingerprint(settings: Settings) -> str:
    """A digest of everything `dbt parse` reads: every file of the dbt project, the vars, the target, the
    PRIVDOM_* and DBT_* environment (profiles.yml reads PRIVDOM_* through env_var; call it after
    apply_dbt_environment, as parse does; not PRIVDOM_DBT_WARM or PRIVDOM_GX_WARM, which only say how dbt and
    validation are started) and the dbt versions."""
    from importlib.metadata import PackageNotFoundError, version

    def installed(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    digest = hashlib.sha256()
    context = {
        "vars": dbt_vars_arg(settings)[1],
        "target": DBT_TARGET,
        "env": sorted((k, v) for k, v in os.environ.items()
                      if k.startswith(("PRIVDOM_", "DBT_")) and k not in _NOT_PARSE_ENV),
        "versions": [installed(d) for d in _DBT_DISTRIBUTIONS],
    }
    digest.update(json.dumps(context, sort_keys=True).encode() + b"\0")
    files: list[Path] = []
    for root, dirs, names in os.walk(DBT_PROJECT_DIR):
        top = Path(root) == DBT_PROJECT_DIR
        if top:  # dbt's outputs are not walked (target/ grows with every run)
            dirs[:] = [d for d in dirs if d not in _NOT_PROJECT]
        files += [Path(root) / n for n in names if not (top and n in _NOT_PROJECT)]
    for path in sorted(files):
        digest.update(path.relative_to(DBT_PROJECT_DIR).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()


@contextlib.contextmanager
def _parse_lock() -> Iterator[None]:
    """One parse at a time per project (privdom runs of other data directories, `privdom ui`): the stamp must
    describe the manifest this process's parse wrote, not one another parse wrote in between."""
    path = DBT_PROJECT_DIR / "target" / ".privdom-parse.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def parse_if_changed(settings: Settings, *, quiet: bool = True) -> bool:
    """`dbt parse` unless target/manifest.json was written by a parse of exactly this project, vars, target,
    environment and dbt version (see parse_fingerprint). Returns whether it parsed.

    A parse costs 3-6 s even when dbt's partial parsing has nothing to redo; `privdom run` pays it on every
    run otherwise."""
    apply_dbt_environment(settings)
    fingerprint = parse_fingerprint(settings)
    with _parse_lock():
        expected = _parse_stamp(fingerprint)
        try:
            recorded = PARSE_STAMP_PATH.read_text(encoding="utf-8")
        except OSError:
            recorded = None
        if expected is not None and recorded == expected:
            return False
        _parse_locked(settings, fingerprint, quiet=quiet)
    return True


def _parse_stamp(fingerprint: str) -> str | None:
    """The fingerprint and digests of the manifest and dbt's partial-parse file: a manifest written since by
    another dbt command (a `dbt build` by hand, other vars) is not taken for ours. None without a manifest."""
    lines = [fingerprint]
    for path in (MANIFEST_PATH, MANIFEST_PATH.with_name("partial_parse.msgpack")):
        try:
            lines.append(f"{path.name} {hashlib.sha256(path.read_bytes()).hexdigest()}")
        except OSError:
            if path == MANIFEST_PATH:
                return None
            lines.append(f"{path.name} -")
    return "\n".join(lines) + "\n"


def parse(settings: Settings, *, quiet: bool = True) -> Path:
    """`dbt parse` with privdom's env and vars; writes target/manifest.json (read by @dbt_assets at import)
    and the stamp parse_if_changed compares."""
    apply_dbt_environment(settings)
    fingerprint = parse_fingerprint(settings)
    with _parse_lock():
        return _parse_locked(settings, fingerprint, quiet=quiet)


def _parse_locked(settings: Settings, fingerprint: str, *, quiet: bool) -> Path:
    PARSE_STAMP_PATH.unlink(missing_ok=True)  # a failed parse leaves no stamp: the next run parses again
    # dbt writes manifest.json in place, and the Dagster definitions of another data directory's run (or
    # `privdom ui`) read it without this lock: the install-and-paths review read a half-written manifest 172
    # times in 5,033 reads. The parse writes to a folder of its own (with the last parse's partial-parse file,
    # so partial parsing is kept), and its outputs are renamed into target/, each replaced whole.
    target = MANIFEST_PATH.parent
    staging = target / f".parse-{os.getpid()}"
    for stale in target.glob(".parse-*"):  # every parse holds the lock: another's folder is a killed parse's
        shutil.rmtree(stale, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        if (target / PARTIAL_PARSE_FILE).exists():
            shutil.copy2(target / PARTIAL_PARSE_FILE, staging / PARTIAL_PARSE_FILE)
        cmd = [
            str(command_executable()),
            "parse",
            *(["--quiet"] if quiet else []),
            "--project-dir",
            str(DBT_PROJECT_DIR),
            "--profiles-dir",
            str(DBT_PROJECT_DIR),
            "--target",
            DBT_TARGET,
            "--target-path",
            str(staging),
            *dbt_vars_arg(settings),
        ]
        result = subprocess.run(cmd, cwd=DBT_PROJECT_DIR, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"dbt parse failed:\n{result.stdout}\n{result.stderr}")
        # the manifest last: it is what readers look for
        for path in sorted((p for p in staging.iterdir() if p.is_file()), key=lambda p: p.name == MANIFEST_PATH.name):
            os.replace(path, target / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    stamp = _parse_stamp(fingerprint)
    if stamp is not None:
        PARSE_STAMP_PATH.write_text(stamp, encoding="utf-8")
    _keep_partial_parse(fingerprint)
    return MANIFEST_PATH


# dagster-dbt seeds every build's own target folder with target/partial_parse.msgpack, which is the LAST parse's,
# whichever data directory it was for: while another data directory's run (or privdom ui) has parsed since, each
# of this run's three dbt steps found other vars and profile env in it and parsed the whole project again (12-20 s
# a step on 2 cores, against 1-5 s). Each parse's partial-parse file is kept under its parse fingerprint, and a
# step seeds its folder with the one of its own fingerprint.
PARTIAL_PARSE_CACHE = ".privdom-partial-parse"
PARTIAL_PARSE_CACHE_KEPT = 8


def _keep_partial_parse(fingerprint: str) -> None:
    cache = DBT_PROJECT_DIR / "target" / PARTIAL_PARSE_CACHE
    source = DBT_PROJECT_DIR / "target" / PARTIAL_PARSE_FILE
    try:
        cache.mkdir(parents=True, exist_ok=True)
        part = cache / f".{fingerprint}.{os.getpid()}"
        shutil.copy2(source, part)
        os.replace(part, cache / f"{fingerprint}.msgpack")
        kept = sorted(cache.glob("*.msgpack"), key=lambda p: p.stat().st_mtime_ns, reverse=True)
        for old in kept[PARTIAL_PARSE_CACHE_KEPT:]:
            old.unlink(missing_ok=True)
    except OSError:  # only a cost: the step's dbt parses in full
        pass


def seed_partial_parse(settings: Settings, target_path: Path) -> bool:
    """Put the partial-parse file of this process's parse fingerprint into a dbt invocation's own target folder
    (before dagster-dbt copies the shared one, which it does only where none is); False if there is none."""
    cached = DBT_PROJECT_DIR / "target" / PARTIAL_PARSE_CACHE / f"{parse_fingerprint(settings)}.msgpack"
    try:
        target_path.mkdir(parents=True, exist_ok=True)
        shutil.copy2(cached, target_path / PARTIAL_PARSE_FILE)
    except OSError:
        return False
    return True


# dagster-dbt gives every dbt invocation a target directory of its own, target/<step>-<run id>-<random>/
# (compiled SQL, run_results.json, a manifest: ~4.5 MB for the ~155 nodes of a run), and never removes it.
INVOCATION_DIRS_KEPT = 10
# how long a folder without run_results.json (a build in progress, or a killed one) is left alone
IN_PROGRESS_GRACE_S = 24 * 3600


def invocation_dir(step: str, run_id: str) -> Path:
    """A new target folder for one dbt command of a step, named as dagster-dbt names its own
    (`<step>-<run id's first 7>-<7 random>`), which prune_invocation_dirs and the benchmark find."""
    return DBT_PROJECT_DIR / "target" / f"{step}-{run_id[:7]}-{secrets.token_hex(4)[:7]}"


def prune_invocation_dirs(step: str, keep: int = INVOCATION_DIRS_KEPT) -> int:
    """Remove all but the newest `keep` invocation directories of dbt step `step` (by mtime); returns how many
    were removed. Only directories named as dagster-dbt names them are touched."""
    pattern = re.compile(rf"{re.escape(step)}-[0-9a-f]{{7}}-[0-9a-f]{{7}}")
    target = DBT_PROJECT_DIR / "target"
    def mtime(d: Path) -> int | None:  # None: gone meanwhile (another data directory's step pruned it)
        try:
            return d.stat().st_mtime_ns
        except FileNotFoundError:
            return None

    try:
        found = [(d, mtime(d)) for d in target.iterdir() if pattern.fullmatch(d.name) and d.is_dir()]
    except FileNotFoundError:
        return 0
    dirs = sorted(((d, m) for d, m in found if m is not None), key=lambda dm: dm[1], reverse=True)
    # A build still going on (another data directory's step: the folder is shared by every brand) has no
    # run_results.json yet, and its folder's mtime stops moving once dbt has parsed (compiled SQL and results go
    # to subfolders): ten shorter builds of other data directories made it "old", and it was removed under dbt,
    # its dbt.log and the compiled tests _with_reason reads with it. Such a folder goes only once it is a day
    # old (a killed build's).
    recent = time.time() - IN_PROGRESS_GRACE_S
    old = [d for d, m in dirs[keep:] if (d / "run_results.json").exists() or m < recent * 1e9]
    for d in old:
        shutil.rmtree(d, ignore_errors=True)
    return len(old)
