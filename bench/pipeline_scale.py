"""End-to-end scale benchmark of `privdom run` (not a test).

    python bench/pipeline_scale.py [--sizes 10k,100k,1M] [--days 365] [--work-dir bench/work]
                                   [--output bench/results/pipeline_scale.md] [--no-increment] [--keep]

For every size it
1. generates the demo landing data (`privdom generate --customers N --days D`) and times it, with the peak
   memory of the process;
2. withholds the files of the last batch day, then runs `privdom run` on a fresh data directory (the "full
   run": the whole history but that day) as a subprocess, sampling the resident memory of its whole process
   tree (the run and every dbt subprocess) with psutil;
3. reads the Dagster run's event log (STEP_START / STEP_SUCCESS of every step) and groups the steps into
   stages from their asset keys and names (ingest, identity, dbt build, checks, exports, other), so new
   steps fall into a stage by themselves. Inside a step, the Great Expectations validation (the seconds the
   contract check reports) and dbt's data tests (run_results.json of each dbt invocation) are counted as
   "checks";
4. runs the SQL that dbt compiled in that run (each invocation's manifest, in dbt's execution order) directly
   on DuckDB in one connection, on a copy of the warehouse, to measure the pipeline's dbt time over the bare
   engine's;
5. puts the withheld day back into the landing zone and runs `privdom run` again: one new day on top of the
   history;
6. times a fixed workload (`yardstick`) before and after each size, so that runs made at different times, of
   different code, can be compared by the machine's speed then (generation's time changes with its code).

It then writes a markdown table (and the raw figures as JSON next to it) with the machine, its load, the
growth exponent from 100k to 1M (log(t_1M / t_100k) / log 10) and the issue-7 targets. DuckDB runs with its
memory limit (the setting duckdb_memory_limit, default 2.5GB) and default threads, as the pipeline does. Data directories live under --work-dir (git-ignored)
and are deleted after each size unless --keep.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import platform
import shutil
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

STAGES = ("ingest", "identity", "dbt build", "checks", "exports", "other")
TARGETS = {
    "full_run_1m_s": 300.0,
    "peak_memory_1m_gib": 4.0,
    "ingest_rows_per_s": 300_000.0,
    "dbt_over_bare": 1.5,
    "exponent": 1.15,
    "increment_share": 0.10,
}


# ------------------------------------------------------------------------------------------------ measuring
class TreeMemory:
    """Peak resident memory of a process and all its descendants, sampled in a thread; at the peak, how much
    of it was the process itself (the `privdom run` Python process: Dagster, GX, its DuckDB connections) and
    how much its children (dbt subprocesses), and when it was reached."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        self.root = psutil.Process(pid)
        self.interval = interval
        self.peak = 0
        self.peak_root = 0  # the process itself, at the peak
        self.peak_at = 0.0  # epoch seconds of the peak
        self.root_max = 0  # the process itself, its own maximum
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _sample(self) -> tuple[int, int]:
        try:
            children = self.root.children(recursive=True)
        except psutil.Error:
            return 0, 0
        own = rest = 0
        try:
            own = self.root.memory_info().rss
        except psutil.Error:
            pass
        for p in children:
            try:
                rest += p.memory_info().rss
            except psutil.Error:
                pass
        return own, rest

    def _run(self) -> None:
        while not self._stop.is_set():
            own, rest = self._sample()
            self.root_max = max(self.root_max, own)
            if own + rest > self.peak:
                self.peak, self.peak_root, self.peak_at = own + rest, own, time.time()
            self._stop.wait(self.interval)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Timed:
    seconds: float
    peak_bytes: int
    returncode: int
    peak_root_bytes: int = 0  # the process itself at the peak (the rest: its subprocesses)
    peak_at: float = 0.0  # epoch seconds
    root_max_bytes: int = 0  # the process itself, its own maximum


def timed_command(cmd: list[str], env: dict[str, str], log: Path) -> Timed:
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "ab") as out:
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
        with TreeMemory(proc.pid) as mem:
            rc = proc.wait()
        seconds = time.perf_counter() - started
    return Timed(seconds, mem.peak, rc, mem.peak_root, mem.peak_at, mem.root_max)


# ------------------------------------------------------------------------------------------------ one run
@dataclass
class StepTiming:
    step: str
    stage: str
    seconds: float
    assets: list[str] = field(default_factory=list)
    checks_seconds: float = 0.0  # GX validation / dbt data tests inside the step


@dataclass
class RunFigures:
    run_id: str
    success: bool
    wall_s: float  # the `privdom run` process, start to exit (imports and dbt parse included)
    dagster_s: float  # RUN_START → RUN_SUCCESS / RUN_FAILURE
    peak_bytes: int
    stages: dict[str, float]
    steps: list[StepTiming]
    rows_read: int
    dbt_invocations: list[str]  # target dirs of this run's dbt invocations, in step order
    dbt_s: float  # wall time of the dbt steps
    peak_root_bytes: int = 0  # the `privdom run` process at the peak; peak_bytes - this: dbt subprocesses
    peak_step: str = ""  # the step running when the peak was sampled
    root_max_bytes: int = 0  # the `privdom run` process, its own maximum


def classify(step: str, assets: list[str], has_checks: bool, is_dbt: bool) -> str:
    """The stage of a step, from what it materialized and its name."""
    roots = {a.split("/")[0] for a in assets}
    if is_dbt:
        return "dbt build"
    if assets and roots <= {"raw"}:
        return "ingest"
    if any("identity" in a or "customer_key" in a for a in assets) or "identity" in step:
        return "identity"
    if roots & {"exports", "segments", "bi"} or "export" in step:  # segment membership, exports, the BI copy
        return "exports"
    if not assets and has_checks:
        return "checks"
    return "other"


def read_run(dagster_home: Path, timed: Timed, warehouse: Path) -> RunFigures:
    import dagster as dg
    from dagster import DagsterEventType as T

    import duckdb

    os.environ["DAGSTER_HOME"] = str(dagster_home)
    with dg.DagsterInstance.get() as instance:
        run = instance.get_runs(limit=1)[0]
        records = instance.get_records_for_run(
            run.run_id,
            of_type={T.RUN_START, T.RUN_SUCCESS, T.RUN_FAILURE, T.STEP_START, T.STEP_SUCCESS, T.STEP_FAILURE,
                     T.ASSET_MATERIALIZATION, T.ASSET_CHECK_EVALUATION},
            limit=1_000_000,
        ).records
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    assets: dict[str, list[str]] = {}
    checks: dict[str, float] = {}
    has_checks: set[str] = set()
    run_start = run_end = None
    for r in records:
        e = r.event_log_entry
        ev = e.dagster_event
        kind = ev.event_type_value
        if kind == "PIPELINE_START":
            run_start = e.timestamp
        elif kind in ("PIPELINE_SUCCESS", "PIPELINE_FAILURE"):
            run_end = e.timestamp
        elif kind == "STEP_START":
            starts[ev.step_key] = e.timestamp
        elif kind in ("STEP_SUCCESS", "STEP_FAILURE"):
            ends[ev.step_key] = e.timestamp
        elif kind == "ASSET_MATERIALIZATION":
            assets.setdefault(ev.step_key, []).append(ev.asset_key.to_user_string())
        elif kind == "ASSET_CHECK_EVALUATION":
            has_checks.add(ev.step_key)
            md = ev.event_specific_data.metadata or {}
            if "validation_seconds" in md:
                checks[ev.step_key] = checks.get(ev.step_key, 0.0) + float(md["validation_seconds"].value)

    target = REPO / "dbt_project" / "target"
    order = sorted(starts, key=starts.get)
    invocations = []
    steps: list[StepTiming] = []
    for step in order:
        dirs = sorted(target.glob(f"{step}-{run.run_id[:7]}-*"), key=lambda p: p.stat().st_mtime)
        inv = [d for d in dirs if (d / "run_results.json").exists()]
        invocations += [str(d) for d in inv]
        tests_s = 0.0
        for d in inv:
            results = json.loads((d / "run_results.json").read_text())["results"]
            tests_s += sum(x["execution_time"] for x in results if x["unique_id"].startswith("test."))
        s = StepTiming(step, classify(step, assets.get(step, []), step in has_checks, bool(inv)),
                       ends.get(step, starts[step]) - starts[step], sorted(set(assets.get(step, []))),  # ingest: one event per partition
                       checks.get(step, 0.0) + tests_s)
        steps.append(s)
    stages = {k: 0.0 for k in STAGES}
    for s in steps:
        stages[s.stage] += s.seconds - s.checks_seconds
        stages["checks"] += s.checks_seconds
    dbt_s = sum(s.seconds for s in steps if s.stage == "dbt build")
    with duckdb.connect(str(warehouse), read_only=True) as con:
        rows_read = con.execute(
            "SELECT coalesce(sum(rows_read), 0) FROM raw.ingestion_ledger WHERE load_id = ?", [run.run_id]).fetchone()[0]
    at_peak = [st for st in order if starts[st] <= timed.peak_at <= ends.get(st, float("inf"))]
    return RunFigures(run.run_id, run.status.value == "SUCCESS", timed.seconds, (run_end or 0) - (run_start or 0),
                      timed.peak_bytes, stages, steps, int(rows_read), invocations, dbt_s,
                      timed.peak_root_bytes, ", ".join(at_peak) or "outside the steps", timed.root_max_bytes)


# ------------------------------------------------------------------------------------------------ bare engine
def bare_statements(invocations: list[str]) -> list[tuple[str, str, str]]:
    """(unique_id, kind, SQL) of every model and data test dbt ran, in its execution order."""
    out = []
    for inv in invocations:
        d = Path(inv)
        manifest = json.loads((d / "manifest.json").read_text())
        nodes = manifest["nodes"]
        for r in json.loads((d / "run_results.json").read_text())["results"]:
            uid = r["unique_id"]
            node = nodes.get(uid)
            if node is None or not node.get("compiled_code"):
                continue  # unit tests: dbt's own fixtures, nothing to run on the engine
            if node["resource_type"] == "model":
                kind = "VIEW" if node["config"].get("materialized") == "view" else "TABLE"
                out.append((uid, "model", f"CREATE OR REPLACE {kind} {node['relation_name']} AS (\n{node['compiled_code']}\n)"))
            elif node["resource_type"] == "test":
                out.append((uid, "test", f"SELECT count(*) FROM (\n{node['compiled_code']}\n)"))
    return out


def bare_main(args: argparse.Namespace) -> int:
    """Run the compiled SQL on one DuckDB connection (a child process, so its memory is its own)."""
    from orchestration.settings import load_settings
    from orchestration.warehouse import connect

    statements = json.loads(Path(args.bare_statements).read_text())
    # the same memory limit as the pipeline's connections and dbt profile (the setting duckdb_memory_limit)
    con = connect(args.bare_db, memory_limit=load_settings(Path(args.bare_db).parent).duckdb_memory_limit)
    times = []
    started = time.perf_counter()
    for uid, kind, sql in statements:
        t0 = time.perf_counter()
        con.execute(sql).fetchall()
        times.append((uid, kind, time.perf_counter() - t0))
    total = time.perf_counter() - started
    con.close()
    Path(args.bare_out).write_text(json.dumps({"seconds": total, "statements": times}))
    return 0


def run_bare(data: Path, invocations: list[str], env: dict[str, str], log: Path) -> dict:
    bare = data / "bare"
    bare.mkdir(exist_ok=True)
    db = bare / "warehouse.duckdb"  # same file name: the catalog is "warehouse", as in dbt's relation names
    shutil.copyfile(data / "warehouse.duckdb", db)
    stmts = bare / "statements.json"
    stmts.write_text(json.dumps(bare_statements(invocations)))
    out = bare / "result.json"
    t = timed_command([sys.executable, str(Path(__file__).resolve()), "--bare-db", str(db), "--bare-statements", str(stmts),
                       "--bare-out", str(out)], env, log)
    if t.returncode != 0:
        raise SystemExit(f"bare-engine run failed; see {log}")
    result = json.loads(out.read_text())
    shutil.rmtree(bare)
    models = sum(s for _, k, s in result["statements"] if k == "model")
    tests = sum(s for _, k, s in result["statements"] if k == "test")
    return {"seconds": result["seconds"], "models_s": models, "tests_s": tests, "statements": len(result["statements"]),
            "peak_bytes": t.peak_bytes}


# ------------------------------------------------------------------------------------------------ landing
def withhold_last_day(landing: Path, side: Path) -> str:
    from orchestration.contract import SOURCES
    from orchestration.ingest.files import discover

    files = [f for s in SOURCES for f in discover(landing, s) if f.batch_date]
    last = max(f.batch_date for f in files)
    for f in files:
        if f.batch_date == last:
            dest = side / f.rel_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(f.path, dest)
    return last.isoformat()


def restore(side: Path, landing: Path) -> None:
    for p in sorted(side.rglob("*")):
        if p.is_file():
            dest = landing / p.relative_to(side)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(p, dest)


# ------------------------------------------------------------------------------------------------ one size
def parse_size(text: str) -> int:
    t = text.strip().lower()
    mult = {"k": 1_000, "m": 1_000_000}.get(t[-1], 1)
    return int(float(t[:-1] if t[-1] in "km" else t) * mult)


def label(n: int) -> str:
    return f"{n // 1_000_000}M" if n % 1_000_000 == 0 else f"{n // 1_000}k" if n % 1_000 == 0 else str(n)


# A fixed workload: one DuckDB statement (a string-keyed window over 6M rows, as in the pipeline's models) and
# a pure-Python loop (Dagster, GX and dbt run Python too). The same for every run of this script, whatever the
# pipeline's code, so runs made on different days can be compared by it.
_YARDSTICK = """
import json, time, duckdb
c = duckdb.connect()
c.execute("SET memory_limit = '2.5GB'")
t = time.perf_counter()
c.execute(
    "SELECT count(*), sum(r) FROM ("
    "  SELECT k, row_number() OVER (PARTITION BY k ORDER BY v DESC, i) AS r"
    "  FROM (SELECT i, 'key-' || (i * 7919 % 700001)::VARCHAR AS k, (i * 104729) % 1000 AS v FROM range(6000000) t(i))"
    ") WHERE r = 1"
).fetchall()
sql = time.perf_counter() - t
t = time.perf_counter()
d = {}
for i in range(3_000_000):
    k = str(i % 5003)
    d[k] = d.get(k, 0) + i
py = time.perf_counter() - t
print(json.dumps({"sql_s": sql, "python_s": py, "seconds": sql + py}))
"""


def yardstick() -> dict:
    """Seconds for the fixed workload, in a child process (the pipeline runs in its own)."""
    out = subprocess.run([sys.executable, "-c", _YARDSTICK], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_size(n: int, args: argparse.Namespace) -> dict:
    data = (Path(args.work_dir).resolve() / f"pipeline-{label(n)}")
    if data.exists():
        shutil.rmtree(data)
    data.mkdir(parents=True)
    logs = data.parent / f"pipeline-{label(n)}-logs"
    shutil.rmtree(logs, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIVDOM_", "DAGSTER_"))}
    env["PRIVDOM_HOME"] = str(data)
    privdom = [sys.executable, "-m", "orchestration.cli", "--data-dir", str(data)]
    load_start = os.getloadavg()
    yard_start = yardstick()
    free = shutil.disk_usage(data).free
    print(f"[{label(n)}] free disk {free / 2**30:.0f} GiB; generating …", flush=True)

    gen = timed_command([*privdom, "generate", "--customers", str(n), "--days", str(args.days)], env, logs / "generate.log")
    if gen.returncode:
        raise SystemExit(f"generate failed; see {logs / 'generate.log'}")
    side = data / "withheld"
    last_day = withhold_last_day(data / "landing", side)
    print(f"[{label(n)}] generated in {gen.seconds:.1f} s; full run (without {last_day}) …", flush=True)

    def pipeline(log_name: str) -> RunFigures:
        t = timed_command([*privdom, "run"], env, logs / log_name)
        fig = read_run(data / "dagster", t, data / "warehouse.duckdb")
        if t.returncode and fig.success:
            raise SystemExit(f"privdom run exited {t.returncode}; see {logs / log_name}")
        return fig

    full = pipeline("run-full.log")
    print(f"[{label(n)}] full run {full.wall_s:.1f} s, peak {full.peak_bytes / 2**30:.2f} GiB; bare engine …", flush=True)
    bare = run_bare(data, full.dbt_invocations, env, logs / "bare.log")
    print(f"[{label(n)}] bare engine {bare['seconds']:.1f} s (pipeline dbt {full.dbt_s:.1f} s)", flush=True)
    increment = None
    wanted = None if args.increment_sizes is None else {parse_size(x) for x in args.increment_sizes.split(",") if x.strip()}
    if not args.no_increment and (wanted is None or n in wanted):
        restore(side, data / "landing")
        increment = pipeline("run-increment.log")
        print(f"[{label(n)}] one new day: {increment.wall_s:.1f} s", flush=True)
    with __import__("duckdb").connect(str(data / "warehouse.duckdb"), read_only=True) as con:
        rows = dict(con.execute(
            "SELECT source, sum(rows_read) FROM raw.ingestion_ledger GROUP BY 1 ORDER BY 1").fetchall())
    out = {
        "customers": n,
        "days": args.days,
        "rows_by_source": {k: int(v) for k, v in rows.items()},
        "generate": asdict(gen),
        "full": asdict(full),
        "bare": bare,
        "increment": asdict(increment) if increment else None,
        "last_day": last_day,
        "load_start": load_start,
        "load_end": os.getloadavg(),
        "yardstick": {"start": yard_start, "end": yardstick()},
    }
    if not args.keep:
        shutil.rmtree(data)
    return out


# ------------------------------------------------------------------------------------------------ report
def code_version() -> str:
    """The commit the benchmark runs (short hash), "+ uncommitted changes" when tracked files differ from it."""
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True, text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return head + (" + uncommitted changes" if dirty else "")


def machine() -> dict:
    model = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for pkg in ("duckdb", "dbt-core", "dbt-duckdb", "dagster", "dagster-dbt", "great-expectations", "pandas"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "-"
    return {
        "code": code_version(),
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(psutil.virtual_memory().total / 2**30, 1),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions,
    }


def gib(b: int) -> str:
    return f"{b / 2**30:.2f}"


def _yardstick_cell(r: dict) -> str:
    y = r.get("yardstick")  # absent in results from before it was measured
    return f"{y['start']['seconds']:.2f} / {y['end']['seconds']:.2f}" if y else "—"


def render(results: list[dict], mach: dict, load_before, load_after, started: str, args: argparse.Namespace) -> str:
    from orchestration.settings import load_settings

    by = {r["customers"]: r for r in results}
    lines = [
        "# `privdom run` at scale",
        "",
        f"Command: `.venv/bin/python bench/pipeline_scale.py --days {args.days}` (sizes "
        + ", ".join(label(n) for n in sorted(by)) + f"; runs started {started}; see the increment table for where the "
        "one-new-day run was measured).",
        "",
        f"Code: {mach.get('code', 'not recorded')}.",
        "",
        f"Machine: {mach['cpus']} CPUs ({mach['cpu_model']}), {mach['memory_gib']} GiB memory, Python {mach['python']}, "
        + ", ".join(f"{k} {v}" for k, v in mach["versions"].items()) + f"; {mach['platform']}.",
        f"Load average (1/5/15 min) before: {' / '.join(f'{x:.2f}' for x in load_before)}; after: "
        f"{' / '.join(f'{x:.2f}' for x in load_after)}"
        # the benchmark itself keeps up to all CPUs busy, so a load up to the CPU count afterwards is its own
        + (" — other work shared the CPUs, so the figures were taken under contention."
           if load_before[0] > 0.5 or load_after[0] > mach["cpus"] + 0.5
           else f" (a load up to {mach['cpus']} afterwards is the benchmark's own work: the machine was otherwise quiet)."),
        f"DuckDB with memory_limit {load_settings(None).duckdb_memory_limit or 'default (80 % of RAM)'} and default threads, as the pipeline runs it. Peak memory: the largest sum of",
        "resident memory over the process tree (the run and its dbt subprocesses), sampled every 0.2 s.",
        "",
        "## Full run (whole history but the last day, fresh warehouse)",
        "",
        "| customers | raw rows | generate s | generate peak GiB | "
        + " | ".join(f"{s} s" for s in STAGES) + " | Dagster run s | whole s | peak GiB | ingest rows/s | load (1 min) at start / end | yardstick s at start / end |",
        "|---|---:|---:|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|---:|---|---|",
    ]
    for n, r in sorted(by.items()):
        f = r["full"]
        st = f["stages"]
        ingest_s = st["ingest"] + sum(s["checks_seconds"] for s in f["steps"] if s["stage"] == "ingest")
        lines.append(
            f"| {label(n)} | {f['rows_read']:,} | {r['generate']['seconds']:.1f} | {gib(r['generate']['peak_bytes'])} | "
            + " | ".join(f"{st[s]:.1f}" for s in STAGES)
            + f" | {f['dagster_s']:.1f} | {f['wall_s']:.1f} | {gib(f['peak_bytes'])} | {f['rows_read'] / ingest_s:,.0f} | "
            f"{r['load_start'][0]:.1f} / {r['load_end'][0]:.1f} | {_yardstick_cell(r)} |"
        )
    lines += [
        "",
        "\"checks\" holds the Great Expectations validation inside the ingest steps and dbt's data tests inside the",
        "dbt steps; \"ingest rows/s\" is raw rows read ÷ the ingest steps' time, validation and quarantine included;",
        "\"whole\" is the `privdom run` process (imports and `dbt parse` included). \"yardstick\" is a fixed workload",
        "(`_YARDSTICK` in bench/pipeline_scale.py: a DuckDB window over 6M rows and a Python loop) timed before and",
        "after each size: compare runs made at different times by it, since the machine's speed varies.",
        "",
        "Rows read by source (all files): "
        + "; ".join(f"{label(n)}: " + ", ".join(f"{k} {v:,}" for k, v in r["rows_by_source"].items()) for n, r in sorted(by.items())),
        "",
        "## dbt in the pipeline vs the bare engine",
        "",
        "The SQL dbt compiled in that run (every model and data test, in dbt's execution order) run directly on",
        "DuckDB in one connection, on a copy of the warehouse.",
        "",
        "| customers | pipeline dbt steps s | bare engine s (models + tests) | ratio | bare peak GiB |",
        "|---|---:|---:|---:|---:|",
    ]
    for n, r in sorted(by.items()):
        b = r["bare"]
        lines.append(f"| {label(n)} | {r['full']['dbt_s']:.1f} | {b['seconds']:.1f} ({b['models_s']:.1f} + {b['tests_s']:.1f}) | "
                     f"{r['full']['dbt_s'] / b['seconds']:.2f} | {gib(b['peak_bytes'])} |")
    exps = {}
    if 100_000 in by and 1_000_000 in by:
        a, b = by[100_000]["full"], by[1_000_000]["full"]
        exps["whole"] = math.log(b["wall_s"] / a["wall_s"]) / math.log(10)
        exps["Dagster run"] = math.log(b["dagster_s"] / a["dagster_s"]) / math.log(10)
        for s in STAGES:
            if a["stages"][s] > 0.5 and b["stages"][s] > 0:
                exps[s] = math.log(b["stages"][s] / a["stages"][s]) / math.log(10)
        lines += ["", "## Growth from 100k to 1M customers", "", "exponent = log(t_1M / t_100k) / log(10)", "",
                  "| | " + " | ".join(exps) + " |", "|---|" + "---:|" * len(exps) + "",
                  "| exponent | " + " | ".join(f"{v:.2f}" for v in exps.values()) + " |"]
    if any(r["increment"] for r in results):
        lines += ["", "## One new day on top of the history", "",
                  "| customers | day | new raw rows | " + " | ".join(f"{s} s" for s in STAGES) + " | whole s | share of full run | peak GiB |",
                  "|---|---|---:|" + "---:|" * len(STAGES) + "---:|---:|---:|"]
        for n, r in sorted(by.items()):
            i = r["increment"]
            if not i:
                continue
            lines.append(f"| {label(n)} | {r['last_day']} | {i['rows_read']:,} | " + " | ".join(f"{i['stages'][s]:.1f}" for s in STAGES)
                         + f" | {i['wall_s']:.1f} | {i['wall_s'] / r['full']['wall_s']:.0%} | {gib(i['peak_bytes'])} |")
    split = [(n, kind, r[kind]) for n, r in sorted(by.items()) for kind in ("full", "increment")
             if r.get(kind) and r[kind].get("peak_root_bytes")]
    if split:
        lines += ["", "## Where the peak memory is", "",
                  "Sampled every 0.2 s: the `privdom run` process (Dagster, GX, its DuckDB connections) and its dbt "
                  "subprocesses at the moment of the peak, the step running then, and the process's own maximum.", "",
                  "| customers | run | peak GiB | privdom process GiB | dbt subprocesses GiB | step at the peak | privdom process max GiB |",
                  "|---|---|---:|---:|---:|---|---:|"]
        for n, kind, f_ in split:
            lines.append(f"| {label(n)} | {'full' if kind == 'full' else 'one new day'} | {gib(f_['peak_bytes'])} | "
                         f"{gib(f_['peak_root_bytes'])} | {gib(f_['peak_bytes'] - f_['peak_root_bytes'])} | "
                         f"{f_['peak_step']} | {gib(f_['root_max_bytes'])} |")
    lines += ["", "## Steps of the full run", "", "| customers | step | stage | s | of which checks s |", "|---|---|---|---:|---:|"]
    for n, r in sorted(by.items()):
        for s in r["full"]["steps"]:
            lines.append(f"| {label(n)} | {s['step']} | {s['stage']} | {s['seconds']:.1f} | {s['checks_seconds']:.1f} |")
    # targets: the 1M ones need the 1M run; the others are judged at the largest size run
    big = max(by)
    r = by[big]
    f = r["full"]
    at = "" if big == 1_000_000 else f" (at {label(big)})"
    ingest_s = f["stages"]["ingest"] + sum(s["checks_seconds"] for s in f["steps"] if s["stage"] == "ingest")
    got: dict[str, tuple[str, str]] = {}
    if big == 1_000_000:
        got["full run at 1M < 5 min"] = (f"{f['wall_s']:.0f} s", "yes" if f["wall_s"] < TARGETS["full_run_1m_s"] else "no")
        got["peak memory at 1M < 4 GiB"] = (f"{gib(f['peak_bytes'])} GiB", "yes" if f["peak_bytes"] / 2**30 < TARGETS["peak_memory_1m_gib"] else "no")
    else:
        got["full run at 1M < 5 min"] = ("no 1M run", "not measured")
        got["peak memory at 1M < 4 GiB"] = ("no 1M run", "not measured")
    rate = f["rows_read"] / ingest_s
    got["ingestion ≥ 300k rows/s (validation, quarantine included)"] = (f"{rate:,.0f} rows/s{at}", "yes" if rate >= TARGETS["ingest_rows_per_s"] else "no")
    ratio = f["dbt_s"] / r["bare"]["seconds"]
    got["dbt pipeline ÷ bare engine < 1.5"] = (f"{ratio:.2f}{at}", "yes" if ratio < TARGETS["dbt_over_bare"] else "no")
    if exps:
        got["growth exponent 100k → 1M < 1.15 (whole run)"] = (f"{exps['whole']:.2f}", "yes" if exps["whole"] < TARGETS["exponent"] else "no")
    else:
        got["growth exponent 100k → 1M < 1.15 (whole run)"] = ("needs 100k and 1M", "not measured")
    inc = next((by[n] for n in sorted(by, reverse=True) if by[n]["increment"]), None)
    if inc:
        share = inc["increment"]["wall_s"] / inc["full"]["wall_s"]
        where = "" if inc["customers"] == 1_000_000 else f" (at {label(inc['customers'])})"
        got["one new day on 1M history < 10% of a full run"] = (f"{share:.0%}{where}", "yes" if share < TARGETS["increment_share"] else "no")
    lines += ["", "## Targets (issue 7)", "", "| target | measured | met |", "|---|---:|---|"]
    lines += [f"| {k} | {v} | {ok} |" for k, (v, ok) in got.items()]
    lines += ["", "Causes of the gaps and the next steps: docs/performance.md, \"Where the targets stand\"."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="10k,100k,1M", help="customer counts, comma-separated (10k, 100k, 1M, or plain numbers)")
    p.add_argument("--days", type=int, default=365, help="days of history (default 365, the generator's 1M shape)")
    p.add_argument("--work-dir", default=str(REPO / "bench" / "work"), help="where the data directories go (git-ignored)")
    p.add_argument("--output", default=str(REPO / "bench" / "results" / "pipeline_scale.md"))
    p.add_argument("--no-increment", action="store_true", help="skip the one-new-day run")
    p.add_argument("--increment-sizes", help="run the one-new-day run only at these sizes (default: every size)")
    p.add_argument("--merge", action="store_true",
                   help="add to (or replace sizes in) the results already in --output's .json, instead of starting afresh")
    p.add_argument("--keep", action="store_true", help="keep the data directories")
    p.add_argument("--combine", nargs="+", metavar="JSON",
                   help="only render --output from the .json files of earlier runs (sizes run separately)")
    p.add_argument("--bare-db", help=argparse.SUPPRESS)
    p.add_argument("--bare-statements", help=argparse.SUPPRESS)
    p.add_argument("--bare-out", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.bare_db:
        return bare_main(args)
    if args.combine:
        parts = [json.loads(Path(f).read_text()) for f in args.combine]
        results = sorted({r["customers"]: r for part in parts for r in part["results"]}.values(), key=lambda r: r["customers"])
        out = Path(args.output)
        out.with_suffix(".json").write_text(json.dumps({**parts[0], "results": results}, indent=1))
        out.write_text(render(results, parts[0]["machine"], tuple(parts[0]["load_before"]), os.getloadavg(),
                              " and ".join(dict.fromkeys(p.get("started", "?") for p in parts)), args))
        print(out.read_text())
        return 0
    sizes = [parse_size(s) for s in args.sizes.split(",") if s.strip()]
    started = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    load_before = os.getloadavg()
    results = []
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    mach = machine()
    if args.merge and out.with_suffix(".json").exists():
        previous = json.loads(out.with_suffix(".json").read_text())
        load_before = tuple(previous["load_before"])
        started = previous.get("started", started)
        results = [r for r in previous["results"] if r["customers"] not in sizes]
    for n in sizes:
        results.append(bench_size(n, args))
        results.sort(key=lambda r: r["customers"])
        # write after every size, so a long run leaves its figures behind
        out.with_suffix(".json").write_text(json.dumps({"machine": mach, "started": started, "load_before": load_before,
                                                       "results": results}, indent=1))
        out.write_text(render(results, mach, load_before, os.getloadavg(), started, args))
    print(out.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
