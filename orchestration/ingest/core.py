"""Load landing-zone files of one source into schema ``raw`` (SPEC §2), one transaction per file."""

from __future__ import annotations

import datetime as dt
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from orchestration.contract import CONTRACTS, LINEAGE_COLUMNS, SourceContract, contract as get_contract
from orchestration.settings import TIMEZONE, Settings

from . import files as fl
from . import rules as R

_SRC = "_privdom_src"
_JRAW = "_privdom_jraw"
_JUDGED = "_privdom_judged"


def _frame_table(source: str) -> str:
    return f"_privdom_gx_{source}"


@dataclass
class FileResult:
    path: str  # relative to the landing dir
    status: str  # loaded | rejected | duplicate
    file_id: int
    batch_date: dt.date | None
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "status": self.status,
            "file_id": self.file_id,
            "batch_date": self.batch_date.isoformat() if self.batch_date else None,
            "rows_read": self.rows_read,
            "rows_loaded": self.rows_loaded,
            "rows_quarantined": self.rows_quarantined,
            "error": self.error,
        }


@dataclass
class SourceIngestReport:
    source: str
    load_id: str
    files: list[FileResult] = field(default_factory=list)  # files recorded in the ledger by this run
    files_skipped: int = 0  # already in the ledger (same path and content)
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    quarantine_by_rule: dict[str, int] = field(default_factory=dict)  # every contract rule, 0 included
    # The run's new rows before the quarantine split, as orchestration.quality.validate_contract expects them.
    frame: pd.DataFrame | None = None

    @property
    def quarantined_share(self) -> float | None:
        return self.rows_quarantined / self.rows_read if self.rows_read else None

    @property
    def rejected(self) -> list[FileResult]:
        return [f for f in self.files if f.status == "rejected"]

    def to_metadata(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "load_id": self.load_id,
            "files_loaded": sum(f.status == "loaded" for f in self.files),
            "files_rejected": len(self.rejected),
            "files_duplicate": sum(f.status == "duplicate" for f in self.files),
            "files_skipped": self.files_skipped,
            "rows_read": self.rows_read,
            "rows_loaded": self.rows_loaded,
            "rows_quarantined": self.rows_quarantined,
            "quarantined_share": self.quarantined_share,
            "quarantine_by_rule": {k: v for k, v in self.quarantine_by_rule.items() if v},
            "files": [f.as_dict() for f in self.files],
        }


# ------------------------------------------------------------------------------------------------- schema
def _set_timezone(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"SET TimeZone = {R.lit(TIMEZONE)}")


def ensure_raw_schema(con: duckdb.DuckDBPyConnection) -> None:
    """Create schema ``raw`` with every source table, the quarantine and the ledger (idempotent)."""
    _set_timezone(con)
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    for c in CONTRACTS.values():
        con.execute(R.raw_table_ddl(c))
    con.execute(R.QUARANTINE_DDL)
    con.execute(R.LEDGER_DDL)


# ------------------------------------------------------------------------------------------------- reading
def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "…"


def _read(con: duckdb.DuckDBPyConnection, f: fl.LandingFile, size: int, tmpdir: Path) -> str:
    """Read the file into temp table _SRC (one column per delivered column). Returns the encoding.

    Raises FileRejected for every whole-file failure.
    """
    if f.format is None:
        raise fl.FileRejected(fl.unsupported_message(f))
    if f.batch_date is None:
        raise fl.FileRejected(fl.no_batch_date_message(f))
    if size == 0:
        raise fl.FileRejected(f"{f.rel_path}: empty file (0 bytes)")
    if f.format == "parquet":
        try:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {_SRC} AS SELECT * FROM read_parquet({R.lit(str(f.path))})")
        except duckdb.Error as exc:
            raise fl.FileRejected(f"{f.rel_path}: unreadable: not a valid Parquet file ({_first_line(exc)})") from None
        return "binary"

    encoding, empty = fl.sniff_text(f)
    if empty:
        raise fl.FileRejected(f"{f.rel_path}: empty file (no content but white space)")
    path, compression = f.path, ("gzip" if f.compression == "gzip" else "none")
    if encoding == "gb18030" or (encoding == "utf-8-sig" and f.format == "jsonl"):
        path, compression = tmpdir / "transcoded.txt", "none"
        fl.transcode_to_utf8(f, encoding, path)
    if f.format == "csv":
        names = _csv_header(path, compression, f)
        columns = "{" + ", ".join(f"{R.lit(n)}: 'VARCHAR'" for n in names) + "}"
        try:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {_SRC} AS SELECT * FROM read_csv({R.lit(str(path))}, "
                f"columns = {columns}, auto_detect = false, header = true, delim = ',', quote = '\"', escape = '\"', "
                f"strict_mode = true, null_padding = false, ignore_errors = false, compression = {R.lit(compression)})"
            )
        except duckdb.Error as exc:
            raise fl.FileRejected(f"{f.rel_path}: unreadable: cannot be parsed as CSV ({_first_line(exc)})") from None
        return encoding
    # JSON Lines: one object per line; values as their JSON text (numbers in DuckDB's shortest decimal form)
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {_JRAW} AS SELECT json FROM read_ndjson_objects({R.lit(str(path))}, "
            f"compression = {R.lit(compression)})"
        )
        bad = con.execute(
            f"SELECT n FROM (SELECT rowid + 1 AS n, json_type(json) AS ty FROM {_JRAW}) WHERE ty IS DISTINCT FROM 'OBJECT' ORDER BY n LIMIT 1"
        ).fetchone()
        if bad:
            raise fl.FileRejected(f"{f.rel_path}: unreadable: record {bad[0]} is not a JSON object")
        keys = [
            r[0]
            for r in con.execute(
                f"SELECT k FROM (SELECT unnest(json_keys(json)) AS k, rowid AS n FROM {_JRAW}) GROUP BY k ORDER BY min(n), k"
            ).fetchall()
        ]
        if not keys:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {_SRC} AS SELECT NULL::VARCHAR AS {R.q('_')} FROM {_JRAW}")
        else:
            select = ", ".join(
                f"json_extract_string(json, {R.lit('$.' + R.q(k))}) AS {R.q(k)}" for k in keys
            )
            con.execute(f"CREATE OR REPLACE TEMP TABLE {_SRC} AS SELECT {select} FROM {_JRAW} ORDER BY rowid")
    except duckdb.Error as exc:
        raise fl.FileRejected(f"{f.rel_path}: unreadable: not valid JSON Lines ({_first_line(exc)})") from None
    finally:
        con.execute(f"DROP TABLE IF EXISTS {_JRAW}")
    return encoding


def _csv_header(path: Path, compression: str, f: fl.LandingFile) -> list[str]:
    """Column names from the header line (UTF-8 by now); duplicates and blanks get unique names."""
    import csv
    import gzip
    import io

    opener = gzip.open if compression == "gzip" else open
    with opener(path, "rb") as fh:
        line = fh.readline(1 << 20).decode("utf-8-sig")
    try:
        header = next(csv.reader(io.StringIO(line), delimiter=",", quotechar='"', strict=True), [])
    except csv.Error as exc:
        raise fl.FileRejected(f"{f.rel_path}: unreadable: cannot be parsed as CSV (bad header: {exc})") from None
    names: list[str] = []
    for i, n in enumerate(header):
        n = n.strip() or f"column{i + 1}"
        while n in names:
            n = f"{n}_{i + 1}"
        names.append(n)
    if not names:
        raise fl.FileRejected(f"{f.rel_path}: unreadable: cannot be parsed as CSV (no header line)")
    return names


def _source_columns(con: duckdb.DuckDBPyConnection) -> dict[str, tuple[str, str]]:
    """lower(trim(name)) → (name as delivered, DuckDB type); the first of equal names wins."""
    out: dict[str, tuple[str, str]] = {}
    for name, ty, *_ in con.execute(f"DESCRIBE {_SRC}").fetchall():
        out.setdefault(name.strip().lower(), (name, ty))
    return out


# ------------------------------------------------------------------------------------------------- judging
def _judge(con, c: SourceContract, src_cols: dict[str, tuple[str, str]], settings: Settings, batch_limit: str) -> None:
    """Build temp table _JUDGED: _rn, d__/t__ per contract column, b__ per rule, _broken, _rule, _rules."""
    ph = settings.placeholder_values
    inner = ["rowid + 1 AS _rn"]
    typed = []
    for col in c.columns:
        name, ty = src_cols.get(col.name, (None, None))
        inner.append(f"{R.delivered_expr(name, ty)} AS {R.d(col.name)}")
        s_name = None
        if name is not None and ty != "VARCHAR":
            s_name = f"s__{col.name}"
            inner.append(f"{R.q(name)} AS {R.q(s_name)}")
        typed.append(f"{R.typed_expr(col, s_name, ty if s_name else None, ph)} AS {R.t(col.name)}")
    flags = [f"{R.broken_expr(r, c, ph, batch_limit)} AS {R.flag(r)}" for r in c.rules]
    any_broken = " OR ".join(R.flag(r) for r in c.rules) or "FALSE"
    first_rule = "CASE " + " ".join(f"WHEN {R.flag(r)} THEN {R.lit(r.name)}" for r in c.rules) + " END"
    all_rules = "concat_ws(',', " + ", ".join(f"CASE WHEN {R.flag(r)} THEN {R.lit(r.name)} END" for r in c.rules) + ")"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_JUDGED} AS "
        f"SELECT *, {any_broken} AS _broken, {first_rule} AS _rule, {all_rules} AS _rules FROM ("
        f"SELECT *, {', '.join(flags)} FROM ("
        f"SELECT *, {', '.join(typed)} FROM ("
        f"SELECT {', '.join(inner)} FROM {_SRC} ORDER BY rowid)))"
    )


def _insert_ledger(con, file_id: int, source: str, f: fl.LandingFile, sha: str, size: int, encoding: str | None,
                   status: str, counts: tuple[int, int, int], error: str | None, load_id: str, started: dt.datetime) -> None:
    con.execute(
        "INSERT INTO raw.ingestion_ledger VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [file_id, source, f.rel_path, sha, size, f.format, encoding, f.compression if f.format else None,
         f.batch_date, status, *counts, error, load_id, started, dt.datetime.now(dt.timezone.utc)],
    )


def _next_file_id(con) -> int:
    return con.execute("SELECT coalesce(max(file_id), 0) + 1 FROM raw.ingestion_ledger").fetchone()[0]


# ------------------------------------------------------------------------------------------------- public
def ingest_source(con: duckdb.DuckDBPyConnection, source: str, settings: Settings, load_id: str,
                  *, keep_frame: bool = True) -> SourceIngestReport:
    """Load every new file of `source` from settings.landing_dir/<source>/ into raw.<source>.

    Each file loads in its own transaction (raw rows, quarantine rows and its ledger row together). The
    report carries the run's new rows before the quarantine split (``frame``) for the GX validation.
    """
    c = get_contract(source)
    ensure_raw_schema(con)
    report = SourceIngestReport(source=source, load_id=load_id, quarantine_by_rule={r.name: 0 for r in c.rules})
    ph = settings.placeholder_values
    frame_table = _frame_table(source)
    con.execute(f"DROP TABLE IF EXISTS {frame_table}")
    frame_created = False

    seen = {(p, h): s for p, h, s in con.execute(
        "SELECT file_path, content_sha256, status FROM raw.ingestion_ledger WHERE source = ?", [source]).fetchall()}
    loaded_at = {h: p for (p, h), s in seen.items() if s == "loaded"}

    for f in fl.discover(settings.landing_dir, source):
        sha, size = fl.sha256_of(f.path)
        if (f.rel_path, sha) in seen:
            report.files_skipped += 1
            continue
        started = dt.datetime.now(dt.timezone.utc)
        if sha in loaded_at:
            file_id = _next_file_id(con)
            err = f"{f.rel_path}: duplicate: same content (sha256 {sha[:12]}…) as {loaded_at[sha]}, already loaded"
            _insert_ledger(con, file_id, source, f, sha, size, None, "duplicate", (0, 0, 0), err, load_id, started)
            report.files.append(FileResult(f.rel_path, "duplicate", file_id, f.batch_date, error=err))
            seen[(f.rel_path, sha)] = "duplicate"
            continue
        with tempfile.TemporaryDirectory(prefix="privdom-ingest-") as tmp:
            try:
                encoding = _read(con, f, size, Path(tmp))
                src_cols = _source_columns(con)
                missing = [n for n in c.required_columns if n not in src_cols]
                if missing:
                    raise fl.FileRejected(f"{f.rel_path}: missing required column(s): {', '.join(missing)}")
            except fl.FileRejected as exc:
                file_id = _next_file_id(con)
                _insert_ledger(con, file_id, source, f, sha, size, None, "rejected", (0, 0, 0), str(exc), load_id, started)
                report.files.append(FileResult(f.rel_path, "rejected", file_id, f.batch_date, error=str(exc)))
                seen[(f.rel_path, sha)] = "rejected"
                con.execute(f"DROP TABLE IF EXISTS {_SRC}")
                continue
        batch_limit = R.batch_limit_expr(R.lit(f.batch_date.isoformat()))
        _judge(con, c, src_cols, settings, batch_limit)
        counts_sql = ", ".join(["count(*)", "count(*) FILTER (WHERE _broken)"] + [f"count(*) FILTER (WHERE {R.flag(r)})" for r in c.rules])
        row = con.execute(f"SELECT {counts_sql} FROM {_JUDGED}").fetchone()
        n_read, n_quar, per_rule = row[0], row[1], row[2:]
        n_loaded = n_read - n_quar

        con.execute("BEGIN TRANSACTION")
        try:
            file_id = _next_file_id(con)
            cols = ", ".join(R.q(col.name) for col in c.columns) + ", " + ", ".join(R.q(n) for n, _ in LINEAGE_COLUMNS)
            typed = ", ".join(R.t(col.name) for col in c.columns)
            hash_expr = "md5(CAST(to_json(struct_pack(" + ", ".join(f"{R.q(col.name)} := {R.t(col.name)}" for col in c.columns) + ")) AS VARCHAR))"
            con.execute(
                f"INSERT INTO raw.{R.q(source)} ({cols}) SELECT {typed}, {file_id}, DATE {R.lit(f.batch_date.isoformat())}, "
                f"_rn, {hash_expr}, now() FROM {_JUDGED} WHERE NOT _broken ORDER BY _rn"
            )
            if n_quar:
                src_names = [n for n, _ in (r[:2] for r in con.execute(f"DESCRIBE {_SRC}").fetchall())]
                original = "CAST(json_object(" + ", ".join(f"{R.lit(n)}, CAST(s.{R.q(n)} AS VARCHAR)" for n in src_names) + ") AS VARCHAR)"
                con.execute(
                    f"INSERT INTO raw.quarantine SELECT ?, {file_id}, ?, DATE {R.lit(f.batch_date.isoformat())}, j._rn, j._rule, "
                    f"j._rules, {original}, ?, now() FROM {_JUDGED} j "
                    f"JOIN (SELECT rowid + 1 AS _rn, * FROM {_SRC}) s ON s._rn = j._rn WHERE j._broken ORDER BY j._rn",
                    [source, f.rel_path, load_id],
                )
            _insert_ledger(con, file_id, source, f, sha, size, encoding, "loaded", (n_read, n_loaded, n_quar), None, load_id, started)
            check = con.execute(
                "SELECT (SELECT count(*) FROM raw." + R.q(source) + " WHERE _file_id = ?) , (SELECT count(*) FROM raw.quarantine WHERE file_id = ?)",
                [file_id, file_id],
            ).fetchone()
            if check[0] + check[1] != n_read or check[0] != n_loaded:
                raise RuntimeError(f"{f.rel_path}: rows read {n_read} != loaded {check[0]} + quarantined {check[1]}")
            if keep_frame:
                fcols = R.frame_columns(c, ph, batch_limit, file_id)
                select = ", ".join(f"{expr} AS {R.q(name)}" for name, expr in fcols)
                if frame_created:
                    con.execute(f"INSERT INTO {frame_table} SELECT {select} FROM {_JUDGED} ORDER BY _rn")
                else:
                    con.execute(f"CREATE TEMP TABLE {frame_table} AS SELECT {select} FROM {_JUDGED} ORDER BY _rn")
                    frame_created = True
            con.execute("COMMIT")
        except BaseException:
            con.execute("ROLLBACK")
            raise
        finally:
            con.execute(f"DROP TABLE IF EXISTS {_JUDGED}")
            con.execute(f"DROP TABLE IF EXISTS {_SRC}")
        seen[(f.rel_path, sha)] = "loaded"
        loaded_at[sha] = f.rel_path
        report.files.append(FileResult(f.rel_path, "loaded", file_id, f.batch_date, n_read, n_loaded, n_quar))
        report.rows_read += n_read
        report.rows_loaded += n_loaded
        report.rows_quarantined += n_quar
        for r, n in zip(c.rules, per_rule):
            report.quarantine_by_rule[r.name] += n

    if keep_frame:
        if frame_created:
            report.frame = con.execute(f"SELECT * FROM {frame_table} ORDER BY _file_id, _row_number").df()
            con.execute(f"DROP TABLE IF EXISTS {frame_table}")
        else:
            names = [name for name, _ in R.frame_columns(c, ph, "NULL")]
            report.frame = pd.DataFrame({n: pd.Series(dtype=object) for n in names})
    return report
