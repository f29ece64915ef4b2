"""The contract's expectations (SPEC §2) as Great Expectations 1.x suites, run on a run's rows as delivered.

Ingestion hands over a pandas frame of the run's new rows *before* the quarantine split (see
``SourceIngestReport.frame``): per contract column ``c`` the typed value ``c`` and the delivered text
``c__delivered`` (only the columns the rules read), helper columns ``h__*`` (net amount, identifier counts,
batch limit) and the row's ``_file_id`` / ``_row_number``. One ExpectationSuite per source is built from the
contract, one or more expectations per rule by kind, each tagged ``meta={"rule": name}``. Rows that fail any
expectation of a rule are counted once for that rule, so ``unexpected_by_rule`` equals ingestion's quarantine
counts by rule.
"""

from __future__ import annotations

import gc
import json
import logging
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from orchestration.contract import Rule, SourceContract, mask_phone
from orchestration.contract import contract as get_contract
from orchestration.warehouse import release_free_memory

os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")

_EXAMPLES = 5


def _helper(rule: Rule, what: str) -> str:
    # must match orchestration.ingest.rules.helper_name
    return "h__" + re.sub(r"[^0-9a-zA-Z]+", "_", rule.name).strip("_") + "__" + what


def _py(values) -> str:
    return "[" + ", ".join(json.dumps(v) for v in values) + "]"


def _qcol(name: str) -> str:
    return f"`{name}`"


def expectation_specs(c: SourceContract) -> list[tuple[str, str, dict[str, Any]]]:
    """(rule name, GX expectation class name, kwargs) for every rule of the contract, by kind."""
    out: list[tuple[str, str, dict[str, Any]]] = []
    pair_ignore = {"ignore_row_if": "either_value_is_missing"}
    for r in c.rules:
        cols = r.columns
        k = r.kind
        if k == "required":
            out.append((r.name, "ExpectColumnValuesToNotBeNull", {"column": f"{cols[0]}__delivered"}))
        elif k == "type":
            out.append((r.name, "ExpectColumnValuesToNotBeNull", {
                "column": cols[0], "row_condition": f"{_qcol(cols[0] + '__delivered')}.notnull()"}))
        elif k == "in_set":
            values = list(r.values or c.column(cols[0]).values)
            out.append((r.name, "ExpectColumnValuesToBeInSet", {"column": cols[0], "value_set": values}))
        elif k == "non_negative":
            out.append((r.name, "ExpectColumnValuesToBeBetween", {"column": cols[0], "min_value": 0}))
        elif k == "not_after":
            out.append((r.name, "ExpectColumnPairValuesAToBeGreaterThanB", {
                "column_A": cols[1], "column_B": cols[0], "or_equal": True, **pair_ignore}))
        elif k == "required_when":
            out.append((r.name, "ExpectColumnValuesToNotBeNull", {
                "column": f"{cols[0]}__delivered", "row_condition": f"{_qcol(cols[1])} in {_py(r.values)}"}))
        elif k == "refund_matches_status":
            refund, _gross, _discount, status = cols
            s, net = _qcol(status), "`h__net_amount`"
            judged = f"{s}.notnull() and {net}.notnull() and {_qcol(refund)}.notnull()"
            out.append((r.name, "ExpectColumnPairValuesToBeEqual", {
                "column_A": refund, "column_B": "h__net_amount", **pair_ignore,
                "row_condition": f'{s} == "refunded" and {judged}'}))
            out.append((r.name, "ExpectColumnValuesToBeBetween", {
                "column": refund, "min_value": 0, "strict_min": True,
                "row_condition": f'{s} == "partially_refunded" and {judged}'}))
            out.append((r.name, "ExpectColumnPairValuesAToBeGreaterThanB", {
                "column_A": "h__net_amount", "column_B": refund, "or_equal": False, **pair_ignore,
                "row_condition": f'{s} == "partially_refunded" and {judged}'}))
            out.append((r.name, "ExpectColumnValuesToBeInSet", {
                "column": refund, "value_set": [0],
                "row_condition": f'{s} not in ["refunded", "partially_refunded"] and {judged}'}))
        elif k == "any_identifier":
            kw: dict[str, Any] = {"column": _helper(r, "count"), "min_value": 1}
            if r.unless:
                kw["row_condition"] = f"{_qcol(r.unless[0])} not in {_py(r.unless[1])}"
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
    import great_expectations as gx
    import great_expectations.expectations as gxe

    c = get_contract(source)
    suite = gx.ExpectationSuite(name=f"privdom_contract_{source}" + (f"_{'_'.join(sorted(rules))}" if rules else ""))
    for rule, cls, kwargs in expectation_specs(c):
        if rules is not None and rule not in rules:
            continue
        kwargs = dict(kwargs)
        if "row_condition" in kwargs:
            kwargs["condition_parser"] = "pandas"
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


def _context():
    import great_expectations as gx

    logging.getLogger("great_expectations").setLevel(logging.ERROR)
    # GX fingerprints every pandas batch under 1 GB (md5 of pd.util.hash_pandas_object, twice per validation):
    # metadata we do not use, and it cost more than the expectations themselves (docs/performance.md).
    from great_expectations.execution_engine import pandas_execution_engine

    pandas_execution_engine.HASH_THRESHOLD = 0
    ctx = gx.get_context(mode="ephemeral")
    try:
        from great_expectations.data_context.types.base import ProgressBarsConfig

        ctx.variables.progress_bars = ProgressBarsConfig(globally=False, metric_calculations=False)
    except Exception:  # pragma: no cover - older/newer GX without the setting
        pass
    return ctx


# Rows per GX validation: GX's pandas engine copies the frame (all its columns) for every expectation with a
# row condition or ignore_row_if, so validating in slices bounds that memory; counts add up over the slices
# because the slices are disjoint.
CHUNK_ROWS = 1_000_000


def compact_frame(source: str, frame: pd.DataFrame) -> pd.DataFrame:
    """Enum columns (typed and delivered) as pandas categoricals: GX's row filters then copy integer codes
    instead of strings. Values are unchanged (an out-of-set value is a category like any other)."""
    enums = {col.name for col in get_contract(source).columns if col.type == "enum"}
    for name in frame.columns:
        if name.split("__")[0] in enums and not isinstance(frame[name].dtype, pd.CategoricalDtype):
            frame[name] = frame[name].astype("category")
    return frame


class SpilledFrame:
    """A run's new rows as delivered, in ingestion's Parquet parts, read back slice by slice.

    Ingestion writes the judged rows of every batch of files to parts (orchestration.ingest.core) instead of
    handing over one pandas frame: 10M channel events as pandas take several GiB, a slice of CHUNK_ROWS a
    fraction of it, so validation's memory does not grow with the run. `files` lists (file id, rows) of every
    file in the parts; `select` maps each frame column to its part column. Slices are runs of consecutive
    files (a larger file in row ranges), read through DuckDB and Arrow (session time zone Asia/Shanghai,
    decimals as doubles: the dtypes of a frame fetched from the warehouse with `.df()`), and indexed by the
    row's position in the run (files in file id order, rows in file order).
    """

    def __init__(self, directory: tempfile.TemporaryDirectory, parts: Sequence[Path],
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

    @staticmethod
    def _reader():
        import duckdb

        from orchestration.settings import TIMEZONE

        con = duckdb.connect()
        con.execute(f"SET TimeZone = '{TIMEZONE}'")
        return con

    def __len__(self) -> int:
        return self.rows

    def _read(self, where: str, columns: Sequence[str] | None = None, *, ordered: bool = True) -> pd.DataFrame:
        """Rows matching `where` (over the parts' _fid and _rn), indexed by position in the run (and in that
        order when `ordered`). Through Arrow, which converts text twice as fast as `.df()`; decimals as
        doubles, as `.df()` gives them."""
        wanted = set(columns or self.columns) | {"_file_id", "_row_number"}
        paths = ", ".join("'" + p.as_posix().replace("'", "''") + "'" for p in self._parts)
        con = self._reader()
        try:
            if self._decimal is None:
                self._decimal = {name for name, ty, *_ in con.execute(
                    f"DESCRIBE SELECT * FROM read_parquet([{paths}])").fetchall() if ty.startswith("DECIMAL")}
            cols = ", ".join(
                (f"CAST({_qcol(src)} AS DOUBLE)" if src in self._decimal else _qcol(src)) + f" AS {_qcol(name)}"
                for name, src in self._select if name in wanted)
            order = " ORDER BY _fid, _rn" if ordered else ""
            frame = con.sql(f"SELECT {cols} FROM read_parquet([{paths}]) WHERE {where}{order}").to_arrow_table().to_pandas()
        finally:
            con.close()
        frame.index = (frame["_file_id"].map(self._offset_of) + frame["_row_number"] - 1).astype("int64").to_numpy()
        return frame[list(columns or self.columns)]

    def slices(self, rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
        """Disjoint slices of at most `rows` rows (but a file of more rows: row ranges of `rows`)."""
        first = size = 0  # the slice being gathered: files first .. i-1, `size` rows
        for i, (fid, n) in enumerate(self._files):
            if size and size + n > rows:
                yield self._offsets[first], self._read(f"_fid BETWEEN {self._files[first][0]} AND {self._files[i - 1][0]}", ordered=False)
                size = 0
            if size == 0:
                first = i
            if n > rows:
                for lo in range(0, n, rows):
                    yield self._offsets[i] + lo, self._read(f"_fid = {fid} AND _rn > {lo} AND _rn <= {lo + rows}", ordered=False)
                first = i + 1
                continue
            size += n
        if size:
            yield self._offsets[first], self._read(f"_fid BETWEEN {self._files[first][0]} AND {self._files[-1][0]}", ordered=False)

    def take(self, positions: Sequence[int], columns: Sequence[str]) -> pd.DataFrame:
        import bisect

        by_file: dict[int, list[int]] = {}
        for pos in positions:
            i = bisect.bisect_right(self._offsets, pos) - 1
            by_file.setdefault(self._files[i][0], []).append(pos - self._offsets[i] + 1)
        if not by_file:
            return pd.DataFrame(columns=list(columns))
        # _fid first: Parquet statistics skip the other parts' row groups
        where = " OR ".join(f"(_fid = {fid} AND _rn IN ({', '.join(map(str, rns))}))" for fid, rns in sorted(by_file.items()))
        return self._read(where, columns)

    def to_pandas(self) -> pd.DataFrame:
        return self._read("true")

    def close(self) -> None:
        self._directory.cleanup()


class _FrameInMemory:
    """A pandas frame behind SpilledFrame's interface (tests, small inputs)."""

    def __init__(self, frame: pd.DataFrame) -> None:
        self._frame = frame.reset_index(drop=True)
        self.columns = list(self._frame.columns)

    def __len__(self) -> int:
        return len(self._frame)

    def slices(self, rows: int) -> Iterator[tuple[int, pd.DataFrame]]:
        for lo in range(0, len(self._frame), rows):
            yield lo, self._frame.iloc[lo : lo + rows]  # keeps the frame's index: positions in the run

    def take(self, positions: Sequence[int], columns: Sequence[str]) -> pd.DataFrame:
        return self._frame.loc[list(positions), list(columns)]


def validate_contract(source: str, frame: pd.DataFrame | SpilledFrame | None, *, chunk_rows: int = CHUNK_ROWS) -> ContractValidation:
    """Run the source's contract suite on `frame` (a run's new rows as delivered), in slices of chunk_rows."""
    started = time.perf_counter()
    c = get_contract(source)
    counts = {r.name: 0 for r in c.rules}
    if frame is None or len(frame) == 0:
        return ContractValidation(source, True, 0, counts, {})
    frame = frame if isinstance(frame, SpilledFrame) else _FrameInMemory(frame)
    ctx = _context()
    ds = ctx.data_sources.add_pandas(name=f"privdom_{source}")
    asset = ds.add_dataframe_asset(name=f"{source}_new_rows")
    bd = asset.add_batch_definition_whole_dataframe("run")
    # GX's pandas engine copies the whole batch for every expectation with a row condition or ignore_row_if.
    # So each rule that has such an expectation is validated on its own, on the columns it reads (small
    # copies); the other rules together on the whole frame (no copies), in one validation.
    specs = expectation_specs(c)
    plain, per_rule = set(), []
    for r in c.rules:
        mine = [kw for rule, _, kw in specs if rule == r.name]
        if not any("row_condition" in kw or "ignore_row_if" in kw for kw in mine):
            plain.add(r.name)
            continue
        needed: set[str] = set()
        for kw in mine:
            needed |= {kw[k] for k in ("column", "column_A", "column_B") if k in kw}
            needed |= set(re.findall(r"`([^`]+)`", kw.get("row_condition", "")))
        per_rule.append((build_suite(source, {r.name}), [col for col in frame.columns if col in needed]))
    if plain:
        per_rule.insert(0, (build_suite(source, plain), list(frame.columns)))
    rows_by_rule: dict[str, set[int]] = {r.name: set() for r in c.rules}
    summaries: list[dict] = []
    success = True
    for lo, part in frame.slices(chunk_rows):  # indexed by position in the run: unexpected indexes are rows
        part = compact_frame(source, part)
        results = []
        for suite, columns in per_rule:
            batch = bd.get_batch(batch_parameters={"dataframe": part[columns]})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = batch.validate(suite, result_format={"result_format": "COMPLETE", "return_unexpected_index_query": False})
            success = success and bool(result.success)
            results += result.results
        for i, res in enumerate(results):
            cfg = res.expectation_config
            rule = (cfg.meta or {}).get("rule")
            if res.exception_info and res.exception_info.get("raised_exception"):
                raise RuntimeError(f"GX expectation for rule {rule} raised: {res.exception_info.get('exception_message')}")
            idx = res.result.get("unexpected_index_list") or []
            idx = [i if isinstance(i, int) else int(next(iter(i.values())) if isinstance(i, dict) else i) for i in idx]
            rows_by_rule[rule].update(idx)
            n = int(res.result.get("unexpected_count") or 0)
            if lo == 0:
                summaries.append({
                    "rule": rule,
                    "expectation": cfg.type,
                    "column": cfg.kwargs.get("column") or f"{cfg.kwargs.get('column_A')} vs {cfg.kwargs.get('column_B')}",
                    "success": bool(res.success),
                    "unexpected_count": n,
                })
            else:
                summaries[i]["success"] = summaries[i]["success"] and bool(res.success)
                summaries[i]["unexpected_count"] += n
        part = results = batch = result = None  # drop the slice (the batch holds its frame) before trimming
        # GX's validation objects hold the slice's frames in reference cycles, which only Python's cyclic
        # collector frees, and it runs by object counts, not bytes: without this, in a Dagster run the slices
        # of 10M channel events piled up to 2.6 GB, held for the rest of the run (docs/performance.md).
        gc.collect()
        release_free_memory()  # the slice's pandas and Arrow memory, before the next slice is read
    phone_cols = {col.name for col in c.columns if col.type == "phone"}
    examples: dict[str, list[dict]] = {}
    rule_cols = {r.name: r for r in c.rules}
    for name, rows in rows_by_rule.items():
        counts[name] = len(rows)
        if not rows:
            continue
        r = rule_cols[name]
        show = ["_file_id", "_row_number", c.key] + [
            col for col in frame.columns if col.split("__")[0] in r.columns or col.startswith(_helper(r, ""))
            or (col == "h__net_amount" and r.kind == "refund_matches_status") or (col == "h__batch_limit" and r.kind == "before_batch_limit")
        ]
        show = [col for col in dict.fromkeys(show) if col in frame.columns]
        sample = frame.take(sorted(rows)[:_EXAMPLES], show)
        ex = []
        for rec in sample.to_dict(orient="records"):
            out = {}
            for k, v in rec.items():
                v = _jsonable(v)
                if k.split("__")[0] in phone_cols:
                    v = mask_phone(v)
                out[k] = v
            ex.append(out)
        examples[name] = ex
    return ContractValidation(source, success, len(frame), counts, examples, summaries,
                              time.perf_counter() - started)


__all__ = ["ContractValidation", "validate_contract", "build_suite", "expectation_specs", "mask_phone"]
