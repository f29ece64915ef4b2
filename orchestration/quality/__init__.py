"""The contract's expectations (SPEC §2) as Great Expectations 1.x suites, run by DuckDB on a run's rows as delivered.

Ingestion writes a run's new rows *before* the quarantine split to Parquet parts and hands them over as a
``SpilledFrame`` (see ``SourceIngestReport.frame``): per contract column ``c`` the typed value ``c`` and the
delivered text ``c__delivered`` (only the columns the rules read), helper columns ``h__*`` (net amount,
identifier counts, batch limit) and the row's ``_file_id`` / ``_row_number``. One ExpectationSuite per source
is built from the contract, one or more expectations per rule by kind, each tagged ``meta={"rule": name}``.

The suite runs on GX's SQL data source: GX compiles every expectation to SQL, and DuckDB (through the
SQLAlchemy driver duckdb-engine, on an in-memory connection of its own) runs it over the Parquet parts, with
a query asset ``SELECT <frame columns> FROM read_parquet([...parts...])``. Nothing is loaded into pandas. A
pandas frame (tests, small inputs) is first written to a Parquet file in a temporary directory, so there is
one validation path. Two things keep GX's SQL exact on DuckDB:

* ``_persist_duckdb_connections``: GX must keep one connection for DuckDB (see there), else every SQL
  metric comes back empty and every expectation fails without a count.
* Row conditions are GX ``Condition`` objects (``Column(x) == v``, ``is_in``, ...), written so that SQL's
  three-valued logic gives the quarantine's answer: where a NULL must count as "not in" (the
  ``any_identifier`` rule's ``unless``), the condition says ``x IS NULL OR x NOT IN (...)``.

Rows that fail any expectation of a rule are counted once for that rule (by ``_file_id``, ``_row_number``),
so ``unexpected_by_rule`` equals ingestion's quarantine counts by rule. The suite runs with GX's SUMMARY
result format (exact counts, the first rows found); only the rules where two or more expectations found rows
are validated again with COMPLETE, whose full lists are united (see validate_contract).
"""

from __future__ import annotations

import atexit
import bisect
import gc
import importlib.util
import logging
import os
import re
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestration import longlived
from orchestration.contract import Rule, SourceContract, mask_phone, mask_text
from orchestration.contract import contract as get_contract
from orchestration.warehouse import path_sql, release_free_memory

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

_EXAMPLES = 5
_INDEX_COLUMNS = ["_file_id", "_row_number"]  # a row's identity in the run: what GX reports per unexpected row
# GX's SQL metrics cut the unexpected index list at `partial_unexpected_count` (LIMIT in the query; 20 by
# default), silently: every unexpected row must come back, so the limit is above any run's row count.
_NO_LIMIT = 10**12


def _helper(rule: Rule, what: str) -> str:
    # must match orchestration.ingest.rules.helper_name
    return "h__" + re.sub(r"[^0-9a-zA-Z]+", "_", rule.name).strip("_") + "__" + what


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _all(*conditions):
    out = conditions[0]
    for c in conditions[1:]:
        out = out & c
    return out


def expectation_specs(c: SourceContract) -> list[tuple[str, str, dict[str, Any]]]:
    """(rule name, GX expectation class name, kwargs) for every rule of the contract, by kind.

    Each rule's expectations flag exactly the rows that ingestion's predicate for that rule
    (orchestration.ingest.rules.broken_expr) flags, in SQL's NULL semantics: a map expectation skips NULL
    values of its column, `ignore_row_if="either_value_is_missing"` skips rows with a NULL in the pair, and a
    row whose row_condition is NULL is not in the domain. Conditions are GX Condition objects (the only
    conditions GX compiles to SQL); an OR may only be the outermost operator (GX rejects an OR inside an AND).
    """
    _import_gx()
    from great_expectations.expectations.row_conditions import Column

    out: list[tuple[str, str, dict[str, Any]]] = []
    pair_ignore = {"ignore_row_if": "either_value_is_missing"}
    for r in c.rules:
        cols = r.columns
        k = r.kind
        if k == "well_formed":
            out.append((r.name, "ExpectColumnValuesToBeBetween", {"column": _helper(r, "flag"), "max_value": 0}))
        elif k == "required":
            out.append((r.name, "ExpectColumnValuesToNotBeNull", {"column": f"{cols[0]}__delivered"}))
        elif k == "type":
            out.append((r.name, "ExpectColumnValuesToNotBeNull", {
                "column": cols[0], "row_condition": Column(f"{cols[0]}__delivered").is_not_null()}))
        elif k == "in_set":
            values = list(r.values or c.column(cols[0]).values)
            out.append((r.name, "ExpectColumnValuesToBeInSet", {"column": cols[0], "value_set": values}))
        elif k == "non_negative":
            out.append((r.name, "ExpectColumnValuesToBeBetween", {"column": cols[0], "min_value": 0}))
        elif k == "not_after":
            out.append((r.name, "ExpectColumnPairValuesAToBeGreaterThanB", {
                "column_A": cols[1], "column_B": cols[0], "or_equal": True, **pair_ignore}))
        elif k == "required_when":
            # ingestion: lower(delivered) IN values, NULL -> not broken; SQL IN is NULL for NULL: the same
            out.append((r.name, "ExpectColumnValuesToNotBeNull", {
                "column": f"{cols[0]}__delivered", "row_condition": Column(cols[1]).is_in(list(r.values))}))
        elif k == "refund_matches_status":
            refund, _gross, _discount, status = cols
            # ingestion judges a row only when refund, gross, discount and status are all present (the net
            # amount is NULL when gross or discount is), so no branch below meets a NULL status
            judged = (Column(status).is_not_null(), Column("h__net_amount").is_not_null(), Column(refund).is_not_null())
            out.append((r.name, "ExpectColumnPairValuesToBeEqual", {
                "column_A": refund, "column_B": "h__net_amount", **pair_ignore,
                "row_condition": _all(Column(status) == "refunded", *judged)}))
            out.append((r.name, "ExpectColumnValuesToBeBetween", {
                "column": refund, "min_value": 0, "strict_min": True,
                "row_condition": _all(Column(status) == "partially_refunded", *judged)}))
            out.append((r.name, "ExpectColumnPairValuesAToBeGreaterThanB", {
                "column_A": "h__net_amount", "column_B": refund, "or_equal": False, **pair_ignore,
                "row_condition": _all(Column(status) == "partially_refunded", *judged)}))
            out.append((r.name, "ExpectColumnValuesToBeInSet", {
                "column": refund, "value_set": [0],
                "row_condition": _all(Column(status).is_not_in(["refunded", "partially_refunded"]), *judged)}))
        elif k == "any_identifier":
            kw: dict[str, Any] = {"column": _helper(r, "count"), "min_value": 1}
            if r.unless:
                # ingestion: the rule does not apply when lower(delivered) IN values, and does when the value is
                # NULL; SQL's `x NOT IN (...)` is NULL (row skipped) for a NULL x, hence the IS NULL
                u, values = r.unless
                kw["row_condition"] = Column(u).is_null() | Column(u).is_not_in(list(values))
            out.append((r.name, "ExpectColumnValuesToBeBetween", kw))
        elif k == "before_batch_limit":
            for col in cols:
                out.append((r.name, "ExpectColumnPairValuesAToBeGreaterThanB", {
                    "column_A": "h__batch_limit", "column_B": col, "or_equal": False, **pair_ignore}))
        else:
            raise NotImplementedError(f"rule kind {k!r} (rule {r.name!r} of {c.name}) has no expectation")
    return out


def build_suite(source: str, rules: set[str] | None = None):
    """The source's ExpectationSuite, built from the contract (each expectation's meta names its rule);
    with `rules`, only those rules' expectations."""
    gx = _import_gx()
    import great_expectations.expectations as gxe

    c = get_contract(source)
    suite = gx.ExpectationSuite(name=f"privdom_contract_{source}" + (f"_{'_'.join(sorted(rules))}" if rules else ""))
    for rule, cls, kwargs in expectation_specs(c):
        if rules is not None and rule not in rules:
            continue
        suite.add_expectation(getattr(gxe, cls)(**kwargs, meta={"rule": rule}))
    return suite


def _jsonable(v: Any) -> Any:
    if v is None:
        return None
    try:
        if pd.isna(v):
            return None
    except (TypeError, ValueError):
        pass
    if isinstance(v, pd.Timestamp):
        return v.isoformat()
    if hasattr(v, "item"):
        return v.item()
    if isinstance(v, (str, int, float, bool)):
        return v
    return str(v)


@dataclass
class ContractValidation:
    source: str
    success: bool
    evaluated_rows: int
    unexpected_by_rule: dict[str, int] = field(default_factory=dict)  # every contract rule, 0 included
    examples_by_rule: dict[str, list[dict]] = field(default_factory=dict)
    expectation_results: list[dict] = field(default_factory=list)  # one summary per expectation
    seconds: float = 0.0  # wall time of the validation (bench/pipeline_scale.py counts it as "checks")

    def to_metadata(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "success": self.success,
            "evaluated_rows": self.evaluated_rows,
            "unexpected_rows": sum(self.unexpected_by_rule.values()),
            "unexpected_by_rule": {k: v for k, v in self.unexpected_by_rule.items() if v},
            "examples_by_rule": self.examples_by_rule,
            "expectations": len(self.expectation_results),
            "failed_expectations": [e for e in self.expectation_results if not e["success"]],
            "validation_seconds": round(self.seconds, 3),
        }


# ------------------------------------------------------------------------------------------------ GX on DuckDB
class _DuckDBDialect:
    """Stands for the dialect name "duckdb" in GX's tuple of GXSqlDialect members: GX tests membership with
    `dialect_name in _PERSISTED_CONNECTION_DIALECTS` (a str) and `connection_string.startswith(d.value)`."""

    value = "duckdb"

    def __eq__(self, other: object) -> bool:
        return str(getattr(other, "value", other)).lower() == "duckdb"

    def __hash__(self) -> int:
        return hash("duckdb")

    def __repr__(self) -> str:
        return "<privdom: GX dialect duckdb>"


def _persist_duckdb_connections() -> None:
    """Make GX keep one connection for DuckDB, as it does for sqlite. Idempotent.

    Why: GX 1.24's SqlAlchemyExecutionEngine.execute_query runs a metric's query inside `with
    get_connection()` and calls `fetchall()` after that block, i.e. after the connection went back to the pool.
    duckdb-engine runs every statement in a DuckDB transaction, which SQLAlchemy rolls back when the
    connection is returned, and the rollback discards the pending result: `fetchall()` gets no rows, every SQL
    metric fails with "list index out of range", and GX reports each expectation as failed with an empty
    result (the error only in `exception_info`, keyed by metric id). For the dialects named in
    `_PERSISTED_CONNECTION_DIALECTS`, GX creates the engine with a StaticPool and keeps the connection open for
    the engine's life, so results are fetched before anything is rolled back. `_check_persisted` verifies at
    validation time that this is in effect.
    """
    _import_gx()
    from great_expectations.execution_engine import sqlalchemy_execution_engine as see

    dialects = getattr(see, "_PERSISTED_CONNECTION_DIALECTS", None)
    if not isinstance(dialects, tuple):
        raise RuntimeError(
            "great_expectations.execution_engine.sqlalchemy_execution_engine._PERSISTED_CONNECTION_DIALECTS is "
            f"gone or no longer a tuple ({type(dialects).__name__}); privdom's fix for GX's SQL data source on "
            "DuckDB (orchestration.quality._persist_duckdb_connections) must be revisited for this GX version")
    if "duckdb" not in dialects:
        see._PERSISTED_CONNECTION_DIALECTS = (*dialects, _DuckDBDialect())


_EXIT_HOOK: list[bool] = []


def _forget_duckdb_engine_at_exit() -> None:
    """At interpreter exit, drop duckdb-engine's module globals (its classes and functions). Idempotent.

    Why: in a process that has also imported Great Expectations (importing duckdb-engine is enough; closing
    and disposing of the engines changes nothing), duckdb-engine's classes and functions are still alive at
    the end of interpreter shutdown, with DuckDB's Python types they refer to, and DuckDB's binding library
    (nanobind) then reports those as leaked: every `privdom run` ended with a block of "nanobind: leaked ..."
    lines on stderr. Why GX changes the shutdown order was not found. Dropping duckdb-engine's module globals
    at exit lets them be freed in time (checked: no such lines after `privdom run`, pytest, a script). Exit
    handlers run last registered first, so this runs before the ones registered earlier; nothing uses
    duckdb-engine by then (validation closed and disposed of its engines)."""
    if _EXIT_HOOK:
        return
    _EXIT_HOOK.append(True)

    def forget() -> None:
        for name, module in list(sys.modules.items()):
            if module is not None and (name == "duckdb_engine" or name.startswith("duckdb_engine.")):
                namespace = vars(module)
                for key in [k for k in namespace if not k.startswith("__")]:
                    del namespace[key]

    atexit.register(forget)


def _check_persisted(execution_engine) -> None:
    """Fail loudly unless GX hands out one and the same connection for DuckDB (see _persist_duckdb_connections):
    without it every expectation would fail with no count instead of raising."""
    from sqlalchemy.pool import StaticPool

    with execution_engine.get_connection() as first:
        pass
    with execution_engine.get_connection() as second:
        pass
    if first is not second or first.closed or not isinstance(execution_engine.engine.pool, StaticPool):
        raise RuntimeError(
            "Great Expectations does not keep a persisted connection for DuckDB: its SQL metrics would come back "
            "empty (orchestration.quality._persist_duckdb_connections no longer takes effect with this GX version)")


def _defer_scipy_stats() -> None:
    """Register `scipy.stats` as a lazy module (importlib.util.LazyLoader) before GX's first import.

    GX imports it when it is imported, for expectations privdom never asks for (KL divergence, KS tests): ~0.35 s of
    every run that validates (docs/performance.md, "Nineteenth session"). A lazy module runs its code the first time
    one of its attributes is read, so those expectations still work, only later. No-op when scipy.stats is already
    imported or scipy is missing."""
    name = "scipy.stats"
    if name in sys.modules:
        return
    try:
        import scipy

        spec = importlib.util.find_spec(name)
    except ImportError:
        return
    if spec is None or spec.loader is None:
        return
    spec.loader = importlib.util.LazyLoader(spec.loader)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    # `from scipy import stats` reads the package's attribute; without it scipy's __getattr__ imports the
    # submodule, and the import machinery reads the lazy module's __spec__, which runs it at once
    scipy.stats = module


_GX_IMPORT_LOCK = threading.Lock()


def _import_gx():
    """great_expectations, imported the first time with scipy.stats kept lazy (_defer_scipy_stats) and PySpark
    kept from ending the process.

    GX imports PySpark when it is installed (it is: the `spark` dbt target's tests need it), and PySpark's
    `pyspark.sql.connect.utils.check_dependencies` calls `sys.exit(0)` when the main module has neither a
    file nor a spec and the process is not interactive: it takes that for a doctest run. Dagster's run
    workers are such processes (multiprocessing's spawn from `python -m dagster ...` leaves `__main__` the
    bare `-c` module), and so is `python -c`: every run launched from the UI, the sensor or the schedule that
    validated new rows ended in `SystemExit: 0` at GX's import. While GX is imported there, `sys.ps1` says the
    process is interactive, and PySpark's FutureWarning about pandas (in every run's log) is silenced."""
    with _GX_IMPORT_LOCK:  # one thread imports; another waits for the whole module (sys.modules has it early)
        if "great_expectations" in sys.modules:
            import great_expectations as gx

            return gx
        _defer_scipy_stats()
        main = sys.modules.get("__main__")
        doctest_like = (main is not None and getattr(main, "__spec__", None) is None
                        and not hasattr(main, "__file__") and not hasattr(sys, "ps1"))
        if doctest_like:
            sys.ps1 = ">>> "
        try:
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", category=FutureWarning, module=r"pyspark(\.|$)")
                import great_expectations as gx
        finally:
            if doctest_like:
                del sys.ps1
        longlived.freeze()  # GX's modules live to the end: out of the garbage collector's full passes
        return gx


def _context():
    gx = _import_gx()
    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    ctx = gx.get_context(mode="ephemeral")
    from great_expectations.data_context.types.base import ProgressBarsConfig

    ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    return ctx


def _metric_errors(info: Any) -> list[str]:
    """Exception messages in an ExpectationValidationResult's exception_info: GX puts an expectation's own error
    at the top level, and a SQL metric's error in a dict keyed by metric id."""
    if not info:
        return []

    def one(e: Any) -> str | None:
        get = e.get if isinstance(e, dict) else (lambda k: getattr(e, k, None))
        return str(get("exception_message")) if get("raised_exception") else None

    if isinstance(info, dict) and "raised_exception" in info:
        return [m for m in [one(info)] if m]
    items = info.items() if isinstance(info, dict) else []
    return [f"{key}: {m}" for key, e in items if (m := one(e))]


def _result_format(complete: bool) -> dict[str, Any]:
    """GX's result format. Both list unexpected rows by their identity only (`_file_id`, `_row_number`, as two
    lists, not one dict per row with the checked values: a delivery with millions of broken rows must not take
    GBs of Python objects). COMPLETE lists every unexpected row: two more scans of the rows per failing
    expectation (its values and its rows, each fetched whole). SUMMARY lists the first `_EXAMPLES` in the
    parts' order, which DuckDB finds with a LIMIT and stops early; its `unexpected_count` is exact."""
    return {
        "result_format": "COMPLETE" if complete else "SUMMARY",
        "unexpected_index_column_names": _INDEX_COLUMNS,
        "partial_unexpected_count": _NO_LIMIT if complete else _EXAMPLES,
        "exclude_unexpected_values": True,
        "return_unexpected_index_query": False,
    }


def _results(ctx, query: str, source: str, suite, memory_limit: str | None = None, *, complete: bool = True) -> list:
    """Validate `suite` with GX's SQL data source on DuckDB over `query`; the ExpectationValidationResults
    (`complete`: see _result_format)."""
    from orchestration.settings import TIMEZONE

    _persist_duckdb_connections()
    _forget_duckdb_engine_at_exit()
    # in-memory: the warehouse file may be open in this process with another configuration, which DuckDB
    # refuses; the parts are read by read_parquet. No temp tables: GX would copy the rows into one.
    ds = ctx.data_sources.add_sql(name=f"privdom_{source}" + ("_complete" if complete else ""), connection_string="duckdb:///:memory:", create_temp_table=False)
    ee = None
    try:
        asset = ds.add_query_asset(name=f"{source}_new_rows", query=query)
        batch = asset.add_batch_definition_whole_table("run").get_batch()
        ee = ds.get_execution_engine()
        _check_persisted(ee)
        with ee.get_connection() as con:  # the one connection every metric query runs on
            # its session time zone: timestamps GX fetches back are shown in it (comparisons of TIMESTAMPTZ
            # values do not depend on it); DuckDB's connect-time config cannot set it (ICU is not loaded yet)
            con.exec_driver_sql(f"SET TimeZone = '{TIMEZONE}'")
            # GX runs one query per metric (about 4 per expectation), each over every part: read each part's
            # footer once (the parts do not change while they are validated)
            con.exec_driver_sql("SET parquet_metadata_cache = true")
            if memory_limit:  # the setting duckdb_memory_limit, as for every other DuckDB privdom opens
                con.exec_driver_sql(f"SET memory_limit = '{memory_limit}'")
            tz = con.exec_driver_sql("SELECT current_setting('TimeZone')").scalar()
        if tz != TIMEZONE:  # pragma: no cover - a guard
            raise RuntimeError(f"GX's DuckDB connection has time zone {tz!r}, not {TIMEZONE!r}")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            result = batch.validate(suite, result_format=_result_format(complete))
        if ds.get_execution_engine() is not ee:  # pragma: no cover - a guard: the checks above were on it
            raise RuntimeError("GX validated on another execution engine than the one checked")
        return list(result.results)
    finally:
        # close and dispose of every connection and engine GX made for this validation: nothing of DuckDB
        # stays referenced (an in-memory database lives as long as a connection to it does)
        if getattr(ee, "_connection", None) is not None:  # GX's persisted connection
            ee._connection.close()
            ee._connection = None
        if ee is not None:
            ee.engine.dispose()
        if getattr(ds, "_engine", None) is not None:  # the engine GX tested the connection with
            ds._engine.dispose()
        ds = ee = None


def _unexpected(res: Any, source: str, rule: str | None, *, complete: bool) -> tuple[int, Any]:
    """(unexpected count, the listed rows' keys) of one ExpectationValidationResult of _results(complete=...);
    a row's key is one int64, its file id in the high 32 bits and its row number in the low 32. Raises on the
    expectation's own errors, and when it lists fewer rows than it should (every one, or the first
    `_EXAMPLES`): GX cuts its lists silently. The lists are dropped from the result (GX keeps copies of them)."""
    import numpy as np

    cfg = res.expectation_config
    errors = _metric_errors(res.exception_info)
    if errors:
        raise RuntimeError(f"GX expectation {cfg.type} for rule {rule} of {source} raised: " + "; ".join(errors))
    # exclude_unexpected_values: [] or [{"_file_id": [...], "_row_number": [...]}]
    idx = res.result.get("unexpected_index_list" if complete else "partial_unexpected_index_list")
    idx = idx or [{"_file_id": [], "_row_number": []}]
    fids = np.asarray(idx[0]["_file_id"], dtype=np.int64)
    rns = np.asarray(idx[0]["_row_number"], dtype=np.int64)
    res.result.pop("unexpected_index_list", None)
    res.result.pop("partial_unexpected_index_list", None)
    n = int(res.result.get("unexpected_count") or 0)
    if len(fids) != (n if complete else min(n, _EXAMPLES)):
        raise RuntimeError(f"GX expectation {cfg.type} for rule {rule} of {source}: {n} unexpected rows but "
                           f"{len(fids)} listed" + ("" if complete else f" of the first {_EXAMPLES}"))
    return n, (fids << 32) | rns


# ------------------------------------------------------------------------------------------------ the rows
class SpilledFrame:
    """A run's new rows as delivered, in ingestion's Parquet parts (or one Parquet file of a pandas frame).

    Ingestion writes the judged rows of every batch of files to parts (orchestration.ingest.core) instead of
    handing over one pandas frame, and validation runs on them in DuckDB (`query`), so its memory does not grow
    with the run. `files` lists (file id, rows) of every file in the parts; `select` maps each frame column to
    its part column (the parts' own `_fid` and `_rn` are `_file_id` and `_row_number`). Rows read back with
    `take` / `to_pandas` come through DuckDB and Arrow (session time zone Asia/Shanghai, decimals as doubles:
    the dtypes of a frame fetched from the warehouse with `.df()`), indexed by the row's position in the run
    (files in file id order, rows in file order).
    """

    def __init__(self, directory: tempfile.TemporaryDirectory | None, parts: Sequence[Path],
                 files: Sequence[tuple[int, int]], select: Sequence[tuple[str, str]]) -> None:
        self._directory = directory
        self._parts = [Path(p) for p in parts]
        self._files = sorted((int(fid), int(rows)) for fid, rows in files)
        self._select = list(select)
        self.columns = [name for name, _ in self._select]
        self._decimal: set[str] | None = None  # part columns of a DECIMAL type, read on first use
        self._offsets: list[int] = []  # position of each file's first row
        n = 0
        for _, rows in self._files:
            self._offsets.append(n)
            n += rows
        self.rows = n
        self._offset_of = {fid: off for (fid, _), off in zip(self._files, self._offsets)}

    def state(self) -> tuple[list[str], list[tuple[int, int]], list[tuple[str, str]]]:
        """What another process needs to read the same rows (orchestration/validation_worker.py): the parts' paths,
        the files and the column map. The parts stay this frame's: `from_state` does not own them."""
        return [str(p) for p in self._parts], list(self._files), list(self._select)

    @classmethod
    def from_state(cls, state: tuple[list[str], list[tuple[int, int]], list[tuple[str, str]]]) -> SpilledFrame:
        """A frame over the parts of another frame's `state()`; its close() leaves them where they are."""
        parts, files, select = state
        return cls(None, [Path(p) for p in parts], [tuple(f) for f in files], [tuple(c) for c in select])

    @classmethod
    def from_pandas(cls, frame: pd.DataFrame) -> SpilledFrame:
        """The frame written to one Parquet file in a new temporary directory (close() removes it). A frame
        without `_file_id` / `_row_number` is one file (id 0), its rows numbered from 1 in frame order."""
        import pyarrow as pa
        import pyarrow.parquet as pq

        frame = frame.reset_index(drop=True)
        if "_file_id" not in frame.columns or "_row_number" not in frame.columns:
            frame = frame.assign(_file_id=0, _row_number=range(1, len(frame) + 1))
        directory = tempfile.TemporaryDirectory(prefix="privdom-gx-")
        path = Path(directory.name) / "frame.parquet"
        try:
            table = pa.Table.from_pandas(frame.rename(columns={"_file_id": "_fid", "_row_number": "_rn"}), preserve_index=False)
            # a column of only None has Arrow's null type (an INTEGER to DuckDB): text, as the parts have it
            table = table.cast(pa.schema([f.with_type(pa.string()) if pa.types.is_null(f.type) else f for f in table.schema]))
            pq.write_table(table, path)
        except BaseException:
            directory.cleanup()
            raise
        files = frame.groupby("_file_id").size()
        rename = {"_file_id": "_fid", "_row_number": "_rn"}
        out = cls(directory, [path], [(int(fid), int(n)) for fid, n in files.items()],
                  [(name, rename.get(name, name)) for name in frame.columns])
        del table, frame
        return out

    @staticmethod
    def _reader():
        import duckdb

        from orchestration.settings import TIMEZONE

        con = duckdb.connect()
        con.execute(f"SET TimeZone = '{TIMEZONE}'")
        return con

    def __len__(self) -> int:
        return self.rows

    def _paths_sql(self) -> str:
        return "[" + ", ".join(path_sql(p) for p in self._parts) + "]"

    def query(self, columns: Sequence[str] | None = None) -> str:
        """SQL over the parts: every frame column (or `columns`) under its frame name, values as stored (no
        casts: decimals stay exact)."""
        wanted = set(columns or self.columns)
        cols = ", ".join(f"{_q(src)} AS {_q(name)}" for name, src in self._select if name in wanted)
        # GX runs it as SQLAlchemy text(), nested in its metrics' queries, where `:name` is a bind parameter: a
        # data directory such as `/srv/brand :v2` became `/srv/brand NULL`. No colon in the SQL at all: DuckDB
        # folds the constant expression chr(58).
        return f"SELECT {cols} FROM read_parquet({self._paths_sql().replace(':', chr(39) + ' || chr(58) || ' + chr(39))})"

    def position(self, file_id: int, row_number: int) -> int:
        """A row's position in the run."""
        return self._offset_of[int(file_id)] + int(row_number) - 1

    def _read_arrow(self, where: str, columns: Sequence[str] | None = None):
        """Rows matching `where` (over the parts' _fid and _rn) as an Arrow table, in run order, with
        _file_id and _row_number; decimals as doubles, as `.df()` gives them."""
        wanted = set(columns or self.columns) | {"_file_id", "_row_number"}
        paths = self._paths_sql()
        con = self._reader()
        try:
            if self._decimal is None:
                self._decimal = {name for name, ty, *_ in con.execute(
                    f"DESCRIBE SELECT * FROM read_parquet({paths})").fetchall() if ty.startswith("DECIMAL")}
            cols = ", ".join(
                (f"CAST({_q(src)} AS DOUBLE)" if src in self._decimal else _q(src)) + f" AS {_q(name)}"
                for name, src in self._select if name in wanted)
            return con.sql(f"SELECT {cols} FROM read_parquet({paths}) WHERE {where} ORDER BY _fid, _rn").to_arrow_table()
        finally:
            con.close()

    def _frame(self, table, columns: Sequence[str] | None = None) -> pd.DataFrame:
        """An Arrow table of _read_arrow as pandas (through Arrow, which converts text twice as fast as
        `.df()`), indexed by position in the run."""
        frame = table.to_pandas()
        frame.index = (frame["_file_id"].map(self._offset_of) + frame["_row_number"] - 1).astype("int64").to_numpy()
        return frame[list(columns or self.columns)]

    def _where(self, positions: Sequence[int]) -> str:
        by_file: dict[int, list[int]] = {}
        for pos in positions:
            i = bisect.bisect_right(self._offsets, pos) - 1
            by_file.setdefault(self._files[i][0], []).append(pos - self._offsets[i] + 1)
        # _fid first: Parquet statistics skip the other parts' row groups
        return " OR ".join(f"(_fid = {fid} AND _rn IN ({', '.join(map(str, rns))}))" for fid, rns in sorted(by_file.items()))

    def take(self, positions: Sequence[int], columns: Sequence[str]) -> pd.DataFrame:
        """The rows at `positions` (in run order), `columns` of them, indexed by position."""
        if not positions:
            return pd.DataFrame(columns=list(columns))
        return self._frame(self._read_arrow(self._where(positions), columns), columns)

    def take_groups(self, groups: dict[Any, tuple[Sequence[int], Sequence[str]]]) -> dict[Any, pd.DataFrame]:
        """`take(positions, columns)` for every group {key: (positions, columns)}, with one read of the parts
        (each group converted on its own, so its dtypes are those `take` gives)."""
        import pyarrow as pa

        everything = sorted({p for positions, _ in groups.values() for p in positions})
        if not everything:
            return {key: pd.DataFrame(columns=list(columns)) for key, (_, columns) in groups.items()}
        table = self._read_arrow(self._where(everything), sorted({c for _, columns in groups.values() for c in columns}))
        row_of = {self.position(f, r): i for i, (f, r) in enumerate(zip(table["_file_id"].to_pylist(), table["_row_number"].to_pylist()))}
        out = {}
        for key, (positions, columns) in groups.items():
            rows = pa.array(sorted(row_of[p] for p in positions), type=pa.int64())
            out[key] = self._frame(table.take(rows).select(list(dict.fromkeys(["_file_id", "_row_number", *columns]))), columns)
        return out

    def to_pandas(self) -> pd.DataFrame:
        return self._frame(self._read_arrow("true"))

    def close(self) -> None:
        if self._directory is not None:  # a frame of from_state owns nothing
            self._directory.cleanup()


def validate_contract(source: str, frame: pd.DataFrame | SpilledFrame | None, *, memory_limit: str | None = None) -> ContractValidation:
    """Run the source's contract suite on `frame` (a run's new rows as delivered) in DuckDB, through GX's SQL
    data source. A pandas frame is written to Parquet first (the same path as ingestion's parts)."""
    started = time.perf_counter()
    c = get_contract(source)
    counts = {r.name: 0 for r in c.rules}
    if frame is None or len(frame) == 0:
        return ContractValidation(source, True, 0, counts, {})
    ctx = _context()  # GX builds suites in the current context
    suite = build_suite(source)
    own = None if isinstance(frame, SpilledFrame) else SpilledFrame.from_pandas(frame)
    rows = own or frame
    try:
        import numpy as np

        query = rows.query()
        results = _results(ctx, query, source, suite, memory_limit, complete=False)
        summaries: list[dict] = []
        success = True
        # per rule, (unexpected count, the first rows' keys) of each expectation that found rows
        found: dict[str, list[tuple[int, Any]]] = {r.name: [] for r in c.rules}
        for res in results:
            cfg = res.expectation_config
            rule = (cfg.meta or {}).get("rule")
            n, keys = _unexpected(res, source, rule, complete=False)
            if n:
                found[rule].append((n, keys))
            success = success and bool(res.success)
            summaries.append({
                "rule": rule,
                "expectation": cfg.type,
                "column": cfg.kwargs.get("column") or f"{cfg.kwargs.get('column_A')} vs {cfg.kwargs.get('column_B')}",
                "success": bool(res.success),
                "unexpected_count": n,
            })
        results = None
        # A row that fails several expectations of one rule counts once. Where at most one of a rule's
        # expectations found rows, its count is the rule's; where two or more did, their rows are listed whole
        # (one more validation, of those rules only) and united.
        example_keys: dict[str, Any] = {}
        united = {rule for rule, hits in found.items() if len(hits) > 1}
        for rule, hits in found.items():
            if len(hits) == 1:
                counts[rule], keys = hits[0]
                example_keys[rule] = np.sort(keys)
        if united:
            listed: dict[str, list] = {rule: [] for rule in united}
            for res in _results(ctx, query, source, build_suite(source, united), memory_limit, complete=True):
                rule = (res.expectation_config.meta or {}).get("rule")
                listed[rule].append(_unexpected(res, source, rule, complete=True)[1])
            for rule, arrays in listed.items():
                # the same rows as the first validation counted, expectation by expectation
                if sorted(len(a) for a in arrays if len(a)) != sorted(n for n, _ in found[rule]):
                    raise RuntimeError(f"GX's full lists for rule {rule} of {source} do not match its counts: "
                                       f"{sorted(len(a) for a in arrays)} against {sorted(n for n, _ in found[rule])}")
                keys = np.unique(np.concatenate(arrays))  # a row once per rule
                counts[rule] = len(keys)
                example_keys[rule] = keys[:_EXAMPLES]
        ctx = suite = None
        phone_cols = set(c.phone_columns)
        rule_of = {r.name: r for r in c.rules}
        wanted: dict[str, tuple[list[int], list[str]]] = {}
        for name, keys in example_keys.items():
            r = rule_of[name]
            show = ["_file_id", "_row_number", c.key] + [
                col for col in rows.columns if col.split("__")[0] in r.columns or col.startswith(_helper(r, ""))
                or (col == "h__net_amount" and r.kind == "refund_matches_status") or (col == "h__batch_limit" and r.kind == "before_batch_limit")
            ]
            show = [col for col in dict.fromkeys(show) if col in rows.columns]
            wanted[name] = ([rows.position(int(k) >> 32, int(k) & 0xFFFFFFFF) for k in keys], show)
        examples: dict[str, list[dict]] = {}
        for name, sample in rows.take_groups(wanted).items():  # one read of the parts for every rule's examples
            ex = []
            for rec in sample.to_dict(orient="records"):
                out = {}
                for k, v in rec.items():
                    v = _jsonable(v)
                    # a phone column masked whole; any other text masked where it holds a phone (a shifted
                    # column puts a phone in occurred_at or channel: the privacy review found them clear)
                    v = mask_phone(v) if k.split("__")[0] in phone_cols else mask_text(v)
                    out[k] = v
                ex.append(out)
            examples[name] = ex
        evaluated = len(rows)
    finally:
        if own is not None:
            own.close()
        # GX's validation objects hold results in reference cycles, which only Python's cyclic collector
        # frees (it runs by object counts, not bytes); then DuckDB's and Arrow's freed memory goes back to the OS
        gc.collect()
        release_free_memory()
    return ContractValidation(source, success, evaluated, counts, examples, summaries,
                              time.perf_counter() - started)


__all__ = ["ContractValidation", "SpilledFrame", "validate_contract", "build_suite", "expectation_specs", "mask_phone"]
