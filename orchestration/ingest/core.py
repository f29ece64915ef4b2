"""Load landing-zone files of one source into schema ``raw`` (SPEC §2).

One run of a source works in two phases, so that the per-file cost is a file read and a streaming judge:

1. **Stage and judge** (no transaction, in parallel): new files form batches of consecutive files of about
   ``BATCH_BYTES``. ``ingest_workers()`` threads, each with its own DuckDB cursor, take a batch at a time:
   every file is read on its own into a temp table of the worker's connection (whole-file rejections are
   isolated per file, with their own messages) and gathered per schema signature; then one statement per
   signature types every value and evaluates every contract rule (the batch limit is a constant of each
   file, from its batch date), writing the rows with their file id, batch date, row number, rule flags, row
   hash and, for a broken row, its original values to one Parquet part in the run's spill directory (under
   `<data dir>/tmp/`, orchestration/scratch.py). Only a batch at a time is held in memory per worker, so
   memory does not grow with the run.
2. **Load** (one transaction for the whole run of the source): raw rows, quarantine rows and ledger rows are
   inserted set-wise from the parts, rows read = loaded + quarantined is verified for every file with one
   query per table, then everything commits together. A crash or a failed check leaves none of the run's
   files recorded, so the next run loads them again.

The same parts are the Great Expectations frame (``SpilledFrame``): GX validates them in DuckDB. Given a
``validate`` function, ``ingest_source`` runs it on the frame while phase 2 loads in a worker thread (the parts
are final once judged), so the validation and the load overlap instead of following each other. The
validation keeps the calling thread: GX changes process-wide state (warning filters) as it did before.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import duckdb
import pandas as pd

from orchestration.contract import CONTRACTS, LINEAGE_COLUMNS, SourceContract, contract as get_contract
from orchestration.quality import SpilledFrame
from orchestration.scratch import directory as scratch_directory
from orchestration.settings import TIMEZONE, Settings
from orchestration.warehouse import path_sql, transaction, unreadable_name

from . import files as fl
from . import rules as R

# temp tables: _SRC and _JRAW live in a worker's own cursor (DuckDB temp tables are per connection)
_SRC = "_privdom_src"
_JRAW = "_privdom_jraw"
_FILES = "_privdom_files"
# lineage columns of a staging table: file id, batch date, row number, and the batch limit (batch date + 2
# days, 00:00 Asia/Shanghai: a constant of the file, folded when the judge is planned instead of a time zone
# conversion per row). A delivered column of one of these names (or DuckDB's `rowid`), in any case, is staged
# under another name (_staged_names) and keeps its delivered name in the judge.
_FID, _BD, _RN, _BL = "__privdom_fid", "__privdom_bd", "__privdom_rn", "__privdom_bl"
# A file's table (_SRC) from a careful read that met malformed records (a CSV row with the wrong number of
# fields, a JSON Lines line that is not an object) has one more column, last: the record's text as delivered,
# NULL for every other record, whose columns are then NULL (rule row.malformed). Staged beside the lineage.
_MF = "__privdom_mf"
_RESERVED = {"rowid", _FID, _BD, _RN, _BL, _MF}
# A landing file holds the columns it delivers and nothing else: DuckDB's readers would otherwise take a
# `dt=YYYY-MM-DD` folder for a Hive partition, add a column `dt` to every file in it, and give a delivered
# column called `dt` the folder's date instead of its own values.
_NO_HIVE = "hive_partitioning = false"


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
    # a loaded file without some optional contract columns that has columns the contract does not know: a renamed
    # column, whose rows took the default (see _columns_note)
    columns_note: str | None = None

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
            "columns_note": self.columns_note,
        }


@dataclass
class SourceIngestReport:
    source: str
    load_id: str
    files: list[FileResult] = field(default_factory=list)  # files recorded in the ledger by this run
    files_skipped: int = 0  # already in the ledger (same path and content)
    files_waiting: list[str] = field(default_factory=list)  # modified after the run's cutoff: left for a later run
    unlisted: list[str] = field(default_factory=list)  # under landing/<source>/, no regular file (files.listing)
    rows_read: int = 0
    rows_loaded: int = 0
    rows_quarantined: int = 0
    # of rows_read, those identical to a row of an earlier file of the source (a loaded row: the same contract
    # values, _row_hash; a quarantined one: the same original row): a feed that sends a window of days again
    # every day. The quarantine share judges the other rows, the run's new content (quarantined_share)
    rows_resent: int = 0
    rows_resent_quarantined: int = 0
    quarantine_by_rule: dict[str, int] = field(default_factory=dict)  # every contract rule, 0 included
    # raw rows whose _row_hash this run computed again before loading (a warehouse hashed by an older scheme or
    # DuckDB version: ensure_raw_schema), per source; empty when there were none
    rows_rehashed: dict[str, int] = field(default_factory=dict)
    # The run's new rows before the quarantine split, as orchestration.quality.validate_contract expects them:
    # a SpilledFrame (Parquet in a temporary directory; close() removes it), or an empty pandas frame.
    frame: SpilledFrame | pd.DataFrame | None = None
    # With ingest_source(validate=...): its result on `frame`, computed while the rows loaded (see
    # _load_beside); a done Future: `.result()` returns it or raises what it raised.
    validation: Future | None = None

    @property
    def rows_judged(self) -> int:
        """The rows the quarantine share judges: rows read but those re-sent unchanged from earlier files."""
        return self.rows_read - self.rows_resent

    @property
    def rows_judged_quarantined(self) -> int:
        return self.rows_quarantined - self.rows_resent_quarantined

    @property
    def quarantined_share(self) -> float | None:
        """Of the run's new content (rows_judged), the share quarantined; None without any."""
        return self.rows_judged_quarantined / self.rows_judged if self.rows_judged else None

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
            "rows_resent": self.rows_resent,
            "rows_resent_quarantined": self.rows_resent_quarantined,
            "quarantined_share": self.quarantined_share,
            "quarantine_by_rule": {k: v for k, v in self.quarantine_by_rule.items() if v},
            "files": [f.as_dict() for f in self.files],
        }


# ------------------------------------------------------------------------------------------------- schema
def _set_timezone(con: duckdb.DuckDBPyConnection) -> None:
    con.execute(f"SET TimeZone = {R.lit(TIMEZONE)}")


def ensure_raw_schema(con: duckdb.DuckDBPyConnection) -> dict[str, int] | None:
    """Create schema ``raw`` with every source table, the quarantine and the ledger (idempotent), and make
    the raw rows' ``_row_hash`` the current scheme's: when they were hashed another way, returns the rows
    hashed again per source (``rehash_raw_rows``), else None."""
    _set_timezone(con)
    con.execute("CREATE SCHEMA IF NOT EXISTS raw")
    for c in CONTRACTS.values():
        con.execute(R.raw_table_ddl(c))
    con.execute(R.QUARANTINE_DDL)
    con.execute(R.LEDGER_DDL)
    con.execute(R.HASH_CACHE_DDL)
    con.execute(R.ROW_HASH_SCHEME_DDL)
    if con.execute("SELECT scheme, duckdb_version FROM raw.row_hash_scheme").fetchall() != [_row_hash_scheme()]:
        return rehash_raw_rows(con)
    return None


_ROW_HASH_TYPE = dict(LINEAGE_COLUMNS)["_row_hash"]


def _row_hash_scheme() -> tuple[str, str]:
    return R.ROW_HASH_SCHEME, duckdb.__version__


def rehash_raw_rows(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Compute every raw row's ``_row_hash`` again with the current scheme (R.row_hash_expr) and record the scheme
    and DuckDB version, in one transaction. Returns the rows hashed per source.

    Identical contents share the fingerprint only if every row was hashed by one function: run when a warehouse
    was hashed by an older scheme (md5 of the row as JSON, before the table raw.row_hash_scheme; scheme v1's
    hash as 16 hex digits) or by another DuckDB version (DuckDB does not promise its ``hash`` across versions).
    A text ``_row_hash`` column (both older schemes) becomes BIGINT in the same transaction. Staging does not
    depend on the hash (it compares contents) and no model keeps one, so nothing else changes. ~0.5 s per
    million rows."""
    counts: dict[str, int] = {}
    with transaction(con):
        for c in CONTRACTS.values():
            table = f"raw.{R.q(c.name)}"
            expr = R.row_hash_expr(c, R.q)
            column_type = con.execute(
                "SELECT data_type FROM information_schema.columns WHERE table_catalog = current_database() "
                "AND table_schema = 'raw' AND table_name = ? AND column_name = '_row_hash'", [c.name]).fetchone()[0]
            if column_type != _ROW_HASH_TYPE:
                # a text column (md5, or scheme v1's 16 hex digits): retyped empty, then hashed by the UPDATE.
                # Not `USING <the hash>`: DuckDB's write-ahead log keeps that expression instead of the values,
                # and replaying it after a crash asks to install the extension `hash` lives in, which fails
                # offline: the file would not open again (tests/test_row_hash.py)
                con.execute(f"ALTER TABLE {table} ALTER COLUMN _row_hash SET DATA TYPE {_ROW_HASH_TYPE} USING NULL")
            counts[c.name] = con.execute(f"UPDATE {table} SET _row_hash = {expr}").fetchone()[0]
        con.execute("DELETE FROM raw.row_hash_scheme")
        con.execute("INSERT INTO raw.row_hash_scheme VALUES (?, ?, now())", list(_row_hash_scheme()))
    return counts


# ------------------------------------------------------------------------------------------------- reading
def _first_line(exc: BaseException, limit: int = 300) -> str:
    text = str(exc).strip().splitlines()
    line = text[0] if text else type(exc).__name__
    return line if len(line) <= limit else line[:limit] + "…"


class _Scratch:
    """One directory per worker thread, in the run's spill directory, created only when a file has to be
    transcoded."""

    def __init__(self, parent: Path) -> None:
        self._parent = parent
        self._tmp: tempfile.TemporaryDirectory | None = None
        self._n = 0

    def path(self) -> Path:
        if self._tmp is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="transcoded-", dir=self._parent)
        self._n += 1
        return Path(self._tmp.name) / f"transcoded-{self._n}.txt"

    def cleanup(self) -> None:
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None


def _open_bytes(path: Path, compression: str):
    """The file's bytes (decompressed where `compression` is "gzip"), for reading in Python."""
    import gzip

    return gzip.open(path, "rb") if compression == "gzip" else open(path, "rb")


class _Fallback(Exception):
    """The fast read could not decide; read the file again the careful way."""


def _starts_with_bom(f: fl.LandingFile) -> bool:
    with _open_bytes(f.path, f.compression) as fh:
        return fh.read(len(fl.UTF8_BOM)) == fl.UTF8_BOM


_Signature = tuple[tuple[str, str], ...]


def _read(con: duckdb.DuckDBPyConnection, f: fl.LandingFile, size: int, scratch: _Scratch,
          order: Sequence[str] = (), cents: Sequence[str] = ()) -> tuple[str, _Signature | None, int, bool]:
    """Read the file into temp table _SRC (one column per delivered column). Returns (the encoding, the
    signature where the reader knows it without asking DuckDB (a CSV file's header) or None, the rows read,
    whether _SRC has the column _MF of malformed records after the delivered ones).

    A JSON Lines file's columns come in `order` (the contract's column names) first, then the other keys (see
    _read_text).

    Raises FileRejected for every whole-file failure. Text files are first read directly as UTF-8 (DuckDB
    rejects invalid UTF-8 itself, so valid files are not pre-scanned in Python); on any failure, or when the
    file could be blank, the careful path runs: a streaming encoding sniff (UTF-8 / BOM / GB18030, blank
    files), transcoding where needed, and the read again, so every rejection keeps its precise message.
    """
    if f.format is None:
        raise fl.FileRejected(fl.unsupported_message(f))
    if f.batch_date is None:
        raise fl.FileRejected(fl.no_batch_date_message(f))
    if size == 0:
        raise fl.FileRejected(f"{f.shown}: empty file (0 bytes)")
    if unreadable_name(f.path):
        raise fl.FileRejected(f"{f.shown}: unreadable name: DuckDB cannot open a path holding both a backslash and "
                              f"one of [ * ? (it takes the path for a pattern); rename the file")
    if f.format == "parquet":
        try:
            rows = con.execute(
                f"CREATE OR REPLACE TEMP TABLE {_SRC} AS SELECT * FROM read_parquet({path_sql(f.path)}, {_NO_HIVE})"
            ).fetchone()[0]
        except duckdb.Error as exc:
            raise fl.FileRejected(f"{f.shown}: unreadable: not a valid Parquet file ({_first_line(exc)})") from None
        _int96_as_instants(con, f)
        _refuse_wide_decimals(con, f, order)
        return "binary", None, rows, False

    compression = "gzip" if f.compression == "gzip" else "none"
    try:
        bom = _starts_with_bom(f)
        if not (bom and f.format == "jsonl"):  # DuckDB's JSON reader does not skip a BOM: transcode those
            signature, rows, malformed = _read_text(con, f, f.path, compression, fast=True, order=order, cents=cents)
            return ("utf-8-sig" if bom else "utf-8"), signature, rows, malformed
    except (_Fallback, fl.FileRejected, duckdb.Error, UnicodeDecodeError, OSError, EOFError, zlib.error):
        pass

    encoding, empty = fl.sniff_text(f)
    if empty:
        raise fl.FileRejected(f"{f.shown}: empty file (no content but white space)")
    path = f.path
    if encoding == "gb18030" or (encoding == "utf-8-sig" and f.format == "jsonl"):
        path, compression = scratch.path(), "none"
        fl.transcode_to_utf8(f, encoding, path)
    signature, rows, malformed = _read_text(con, f, path, compression, fast=False, order=order, cents=cents)
    return encoding, signature, rows, malformed


def _int96_as_instants(con: duckdb.DuckDBPyConnection, f: fl.LandingFile) -> None:
    """A Parquet INT96 timestamp column of _SRC becomes TIMESTAMPTZ, its values read as UTC: Spark (INT96 is its
    default timestamp type) and Hive write instants there, normalised to UTC, and DuckDB reads them as a naive
    TIMESTAMP, which the contract takes as Asia/Shanghai wall-clock time: 10:00 in Shanghai loaded as 02:00
    (schema-drift review). Only a file with a naive TIMESTAMP column asks for its Parquet schema."""
    naive = {r[0] for r in con.execute(f"SELECT column_name FROM (DESCRIBE {_SRC}) WHERE column_type = 'TIMESTAMP'").fetchall()}
    if not naive:
        return
    int96 = [r[0] for r in con.execute(f"SELECT name FROM parquet_schema({path_sql(f.path)}) WHERE type = 'INT96'").fetchall()
             if r[0] in naive]
    for name in int96:
        con.execute(f"ALTER TABLE {_SRC} ALTER {R.q(name)} TYPE TIMESTAMPTZ USING timezone('UTC', {R.q(name)})")


def _refuse_wide_decimals(con: duckdb.DuckDBPyConnection, f: fl.LandingFile, order: Sequence[str]) -> None:
    """A Parquet DECIMAL wider than 38 digits (pyarrow's decimal256) in a contract column rejects the file.

    DuckDB reads such a column as DOUBLE, which rounds: 12.34000000000000000001 loaded as 12.34 where SPEC §2
    quarantines a value that is not a whole number of cents, and 99999999999999.99 as 100000000000000.00 (money
    review); nothing then tells the row's delivered value. Only a file with a DOUBLE contract column asks for its
    Parquet schema."""
    wanted = {n.strip().lower() for n in order}
    doubles = {r[0] for r in con.execute(
        f"SELECT column_name FROM (DESCRIBE {_SRC}) WHERE column_type IN ('DOUBLE', 'FLOAT')").fetchall()
        if r[0].strip().lower() in wanted}
    if not doubles:
        return
    # the file's own schema (its footer): a top-level field is looked up by name, so a struct's child of the same
    # name (a `payment` struct with its own `gross_amount`) is not that column
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = pq.read_schema(f.path)
    fields = {name: schema.field(i).type for name in doubles if (i := schema.get_field_index(name)) >= 0}
    wide = [f"{name} (DECIMAL({t.precision},{t.scale}))" for name, t in sorted(fields.items())
            if pa.types.is_decimal(t) and t.precision > 38]
    if wide:
        raise fl.FileRejected(
            f"{f.shown}: unreadable column(s) {', '.join(wide)}: a Parquet DECIMAL of more than 38 digits "
            "cannot be read exactly; write DECIMAL(38, s) or narrower, or the value as text")


def _read_text(con: duckdb.DuckDBPyConnection, f: fl.LandingFile, path: Path, compression: str, *, fast: bool,
               order: Sequence[str] = (), cents: Sequence[str] = ()) -> tuple[_Signature | None, int, bool]:
    """CSV or JSON Lines (UTF-8, a BOM allowed for CSV) into _SRC; returns (the signature where it is known
    without asking DuckDB, else None; the rows read; whether _SRC has the column _MF). With fast=True, a file
    that could be blank raises _Fallback (the caller sniffs it) instead of loading.

    Malformed records (SPEC §2: a row that breaks a rule is quarantined and the rest of the batch loads): a CSV
    file that DuckDB's strict reader refuses is read again by DuckDB (_read_csv_records); where the rows it
    refused have more or fewer fields than the header, and nothing else is wrong, those rows are kept as
    malformed records (_MF) and the others load as the strict read reads them. A JSON Lines line that is not a
    JSON object, or not JSON at all (_read_json_records), is a malformed record likewise, as long as one line
    of the file is an object; a file with none is not JSON Lines and is rejected.

    A CSV file's signature is its header's names (_csv_header: unique without case, as DuckDB compares them),
    every column VARCHAR: the reader is given exactly those. Knowing it, and the row count from the statement
    that read the file, saves a DESCRIBE and a count a file (~0.7 ms; 1M customers: referrals' staging on one
    thread 6.49-6.55 -> 6.22-6.36 s, alternated).

    A JSON Lines file's keys become columns in the order of `order` (names compared trimmed and without case),
    then the others by first appearance and name; keys of one contract column keep their order among
    themselves (the first is the one the judge reads). JSON objects have no column order of their own: this
    one gives JSON Lines files the column order of CSV files that follow the contract, so that both are
    judged by one statement (one schema signature), and orders `original_row` of their quarantined rows like
    the contract."""
    if f.format == "csv":
        names, last_blank = _csv_header(path, compression, f, require_content=fast)

        def strict(names: list[str]) -> int:
            columns = "{" + ", ".join(f"{R.lit(n)}: 'VARCHAR'" for n in names) + "}"
            return con.execute(
                f"CREATE OR REPLACE TEMP TABLE {_SRC} AS SELECT * FROM read_csv({_csv_options(path, compression)}, "
                f"columns = {columns}, null_padding = false, ignore_errors = false)"
            ).fetchone()[0]

        try:
            rows = strict(names)
            malformed = False
        except duckdb.Error as exc:
            if last_blank and len(names) > 1:
                # the header alone ends in a comma (its last name is blank) and no row has a field there: the
                # rows are read against the named columns (a row with a trailing comma too is read as well)
                try:
                    rows = strict(names[:-1])
                    return tuple((n, "VARCHAR") for n in names[:-1]), rows, False
                except duckdb.Error:
                    pass  # some row holds a value under the blank name, or is wrong otherwise: read as before
            refused = f"{f.shown}: unreadable: cannot be parsed as CSV ({_first_line(exc)})"
            try:
                rows = _read_csv_records(con, path, compression, names, refused)
            except fl.FileRejected as rejected:
                if str(rejected) != refused:
                    raise
                # what the line endings hold, read only for a file that is rejected (a malformed row that is
                # quarantined costs no such pass)
                raise fl.FileRejected(refused.removesuffix(")") + _line_endings_hint(path, compression) + ")") from None
            malformed = True
        return tuple((n, "VARCHAR") for n in names), rows, malformed
    # JSON Lines: one object per line; values as their JSON text (numbers in DuckDB's shortest decimal form)
    signature: _Signature | None = None  # asked of DuckDB by the caller, unless a column holds JSON numbers
    malformed = False  # whether _JRAW has the column _bad (the text of a record that is not an object)
    refused = None  # DuckDB's reason, where its reader refused the file (a line is not JSON)
    is_object = (f"CASE WHEN starts_with(json, '{{') THEN TRUE "
                 f"ELSE coalesce(json_type(json) = 'OBJECT', FALSE) END")
    try:
        try:
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {_JRAW} AS SELECT json FROM read_ndjson_objects({path_sql(path)}, "
                f"compression = {R.lit(compression)})"
            )
        except duckdb.Error as exc:
            refused = f"{f.shown}: unreadable: not valid JSON Lines ({_first_line(exc)})"
            _read_json_records(con, path, compression, refused)
            malformed = True
        # read_ndjson_objects has parsed every record (malformed JSON fails above) and keeps its text without the
        # surrounding white space, so a record starting with "{" is an object; json_type parses the others (it
        # parsed every record: ~380 ns a row of channel events, against ~5 for the first character)
        n_records, bad, n_objects = con.execute(
            f"SELECT count(*), min(n) FILTER (WHERE NOT is_object), count(*) FILTER (WHERE is_object) "
            f"FROM (SELECT rowid + 1 AS n, {is_object} AS is_object FROM {_JRAW})"
        ).fetchone()
        if fast and n_records == 0:
            raise _Fallback()
        if bad is not None and n_objects == 0:
            raise fl.FileRejected(refused or f"{f.shown}: unreadable: not JSON Lines: record {bad} is not a JSON "
                                  f"object, and no record is")
        if bad is not None:
            # a record that is JSON but not an object joins the lines that are not JSON (the careful read's _bad)
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {_JRAW}_mf AS SELECT CASE WHEN o THEN json END AS json, "
                f"CASE WHEN NOT o THEN coalesce({'_bad' if malformed else 'NULL'}, CAST(json AS VARCHAR)) END AS _bad "
                f"FROM (SELECT *, {is_object} AS o, rowid AS n FROM {_JRAW}) ORDER BY n"
            )
            con.execute(f"DROP TABLE {_JRAW}")
            con.execute(f"ALTER TABLE {_JRAW}_mf RENAME TO {_JRAW}")
            malformed = True
        mf = f", {R.q('_bad')} AS {R.q(_MF)}" if malformed else ""
        keys = [
            r[0]
            for r in con.execute(
                f"SELECT k FROM (SELECT unnest(json_keys(json)) AS k, rowid AS n FROM {_JRAW}) GROUP BY k ORDER BY min(n), k"
            ).fetchall()
        ]
        # a key "" names no column (DuckDB cannot name one so): it is not read, like any key outside the contract
        keys = [k for k in keys if k != ""]
        if order:
            position = {name: i for i, name in enumerate(order)}
            # stable; among keys of one contract column, the one spelled exactly as the contract first (the one read)
            keys.sort(key=lambda k: (position.get(k.strip().lower(), len(position)), k not in position))
        if malformed and any(k.lower() == _MF for k in keys):
            raise fl.FileRejected(refused or f"{f.shown}: unreadable: a key is named {_MF}, which privdom keeps for "
                                  f"the text of the lines that are not JSON objects")
        if not keys:
            con.execute(f"CREATE OR REPLACE TEMP TABLE {_SRC} AS SELECT NULL::VARCHAR AS {R.q('_')}{mf} FROM {_JRAW}")
        else:
            # one json_extract_string over the list of paths parses each record once (one call per key parsed
            # it once per key: 4x slower at 16 keys); the values are the same. JSON Pointer paths (RFC 6901),
            # so that no key is taken for path syntax ("*", "", quotes, backslashes, "/", "~")
            paths = "[" + ", ".join(_json_pointer(k) for k in keys) + "]"
            # (qualified names: a key may be called anything, "_v" and "_n" included)
            select = ", ".join(f"_s._v[{i}] AS {R.q(k)}" for i, k in enumerate(keys, start=1))
            con.execute(
                f"CREATE OR REPLACE TEMP TABLE {_SRC} AS SELECT {select}{mf.replace(R.q('_bad'), '_s._bad')} "
                f"FROM (SELECT json_extract_string(json, {paths}) AS _v, rowid AS _n{', _bad' if malformed else ''} "
                f"FROM {_JRAW}) AS _s ORDER BY _s._n"
            )
            signature = _json_number_signature(con, keys, cents)
            if _json_non_scalars(con, keys, order, malformed):
                malformed = True
            _json_whole_numbers(con, keys, order, cents)
    except duckdb.Error as exc:
        raise fl.FileRejected(f"{f.shown}: unreadable: not valid JSON Lines ({_first_line(exc)})") from None
    finally:
        con.execute(f"DROP TABLE IF EXISTS {_JRAW}")
        con.execute(f"DROP TABLE IF EXISTS {_JRAW}_mf")
    if malformed and signature is None:
        signature = _signature(con, malformed=True)
    return signature, n_records, malformed


# DuckDB's CSV options of the strict read (_read_text), shared by the reads of a file it refused
def _csv_options(path: Path, compression: str) -> str:
    return (f"{path_sql(path)}, auto_detect = false, header = true, delim = ',', quote = '\"', escape = '\"', "
            f"strict_mode = true, compression = {R.lit(compression)}, {_NO_HIVE}")


_REJECTS, _REJECT_SCANS, _WIDE = "_privdom_rejects", "_privdom_reject_scans", "_privdom_wide"
# what an empty field reads as in the wide read, instead of NULL (NULL there means "no such field")
_NEVER = "\x01privdom: no value is this\x01"


def _read_csv_records(con: duckdb.DuckDBPyConnection, path: Path, compression: str, names: list[str],
                      refused: str) -> int:
    """A CSV file that DuckDB's strict reader refused, read again by DuckDB into _SRC with the column _MF;
    returns the rows read. Raises FileRejected(`refused`: DuckDB's reason) unless the only rows it refused
    have more or fewer fields than the header.

    Two more reads, both DuckDB's parser, so a malformed row changes nothing in how the others are read:
    1. the strict read again, keeping going past errors (`store_rejects`): the refused rows, each with its
       error type and its text as delivered (every line of it);
    2. a wide read: the header's columns, then as many more as the longest refused row needs, short rows
       padded (`null_padding`) and an empty field read as '' (`nullstr`), so a row with too few fields has a
       NULL last column and one with too many a non-empty extra column (empty fields after the last column
       are none, as the strict read takes them). Every row, in file order (its row number).
    The wide read's malformed rows must be the refused rows, one for one; their text comes from the first
    read. The others load as the strict read reads them: an empty field is NULL, a blank line is no row."""
    n = len(names)
    if any(name.lower() == _MF for name in names):
        raise fl.FileRejected(refused)  # the delivered column would meet _MF
    options = _csv_options(path, compression)
    columns = "{" + ", ".join(f"{R.lit(c)}: 'VARCHAR'" for c in names) + "}"
    try:
        # every column read (a count alone is not parsed enough to find the rows with too many fields)
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {_WIDE} AS SELECT * FROM read_csv({options}, columns = {columns}, "
            f"null_padding = false, ignore_errors = true, store_rejects = true, rejects_table = {R.lit(_REJECTS)}, "
            f"rejects_scan = {R.lit(_REJECT_SCANS)})"
        )
        # (one entry per missing column; the text of a row after a blank line starts with that line's end)
        refusals = con.execute(
            f"SELECT line, ltrim(any_value(csv_line), chr(13) || chr(10)), list(DISTINCT error_type) FROM {_REJECTS} "
            f"GROUP BY line ORDER BY line"
        ).fetchall() if con.execute(
            f"SELECT count(*) FROM duckdb_tables() WHERE temporary AND table_name = {R.lit(_REJECTS)}").fetchone()[0] else []
        if not refusals or any(set(types) - {"TOO MANY COLUMNS", "MISSING COLUMNS"} for _, _, types in refusals):
            raise fl.FileRejected(refused)
        # the most fields of a row: at most the commas of a line + 1 (commas inside quotes counted too), since a
        # row's fields beyond the header's may be empty and still taken (a trailing comma or two); a row over
        # several lines (a quoted line break) may have more: then at most the commas of the refused rows' text,
        # or, failing that, of the whole file
        with _open_bytes(path, compression) as fh:
            per_line = [line.count(b",") for line in fh]
        bounds = sorted({max(per_line) + 1, max(text.count(",") for _, text, _ in refusals) + 1, sum(per_line) + 1})
        for most in bounds:
            wide = [*names, *(f"__privdom_extra_{i}" for i in range(max(1, most - n)))]
            if len({c.lower() for c in wide}) < len(wide):
                raise fl.FileRejected(refused)
            wide_columns = "{" + ", ".join(f"{R.lit(c)}: 'VARCHAR'" for c in wide) + "}"
            try:
                con.execute(
                    f"CREATE OR REPLACE TEMP TABLE {_WIDE} AS SELECT * FROM read_csv({options}, columns = {wide_columns}, "
                    f"null_padding = true, parallel = false, ignore_errors = false, nullstr = {R.lit(_NEVER)})"
                )
                break
            except duckdb.Error:
                if most == bounds[-1]:
                    raise
        malformed = " OR ".join([f"{R.q(names[-1])} IS NULL", *(f"coalesce({R.q(c)}, '') <> ''" for c in wide[n:])])
        values = ", ".join(f"CASE WHEN NOT w._bad THEN nullif(w.{R.q(c)}, '') END AS {R.q(c)}" for c in names)
        rows, bad = con.execute(
            f"CREATE OR REPLACE TEMP TABLE {_SRC} AS "
            f"WITH w AS (SELECT rowid AS _r, *, ({malformed}) AS _bad FROM {_WIDE}), "
            f"b AS (SELECT _r, row_number() OVER (ORDER BY _r) AS _k FROM w WHERE _bad), "
            f"t AS (SELECT row_number() OVER (ORDER BY line) AS _k, csv_line FROM "
            f"(SELECT line, ltrim(any_value(csv_line), chr(13) || chr(10)) AS csv_line FROM {_REJECTS} GROUP BY line)) "
            f"SELECT {values}, t.csv_line AS {R.q(_MF)} FROM w LEFT JOIN b USING (_r) LEFT JOIN t USING (_k) ORDER BY w._r"
        ).fetchone()[0], con.execute(f"SELECT count({R.q(_MF)}) FROM {_SRC}").fetchone()[0]
        if bad != len(refusals) or con.execute(f"SELECT count(*) FROM {_WIDE} WHERE {malformed}").fetchone()[0] != bad:
            raise fl.FileRejected(refused)  # the two reads do not agree on the malformed rows
        return rows
    except duckdb.Error:
        raise fl.FileRejected(refused) from None
    finally:
        for t in (_REJECTS, _REJECT_SCANS, _WIDE):
            con.execute(f"DROP TABLE IF EXISTS {t}")


def _read_json_records(con: duckdb.DuckDBPyConnection, path: Path, compression: str, refused: str) -> None:
    """A JSON Lines file that DuckDB's reader refused (a line that is not JSON), read again by DuckDB past its
    errors into _JRAW: per record, `json` (NULL for a line that is not JSON) and `_bad` (that line, trimmed).

    DuckDB keeps such a line's place as a NULL record but not its text; the text comes from the file's lines
    (split on line feeds, white space trimmed, blank lines left out as DuckDB leaves them), which must match
    DuckDB's records one for one, every JSON record equal to its line: else FileRejected(`refused`)."""
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {_JRAW} AS SELECT json FROM read_ndjson_objects({path_sql(path)}, "
            f"compression = {R.lit(compression)}, ignore_errors = true)"
        )
        records = [r[0] for r in con.execute(f"SELECT CAST(json AS VARCHAR) FROM {_JRAW} ORDER BY rowid").fetchall()]
        with _open_bytes(path, compression) as fh:
            lines = [t for t in (line.decode("utf-8").strip(" \t\r\n\x0b\x0c") for line in fh.read().split(b"\n")) if t]
    except (duckdb.Error, UnicodeDecodeError, OSError, EOFError):
        raise fl.FileRejected(refused) from None
    if len(lines) != len(records) or any(r is not None and r != line for r, line in zip(records, lines)):
        raise fl.FileRejected(refused)
    bad = [line if r is None else None for r, line in zip(records, lines)]
    if all(b is None for b in bad):
        raise fl.FileRejected(refused)
    import pyarrow as pa

    con.register("_privdom_records", pa.Table.from_arrays(
        [pa.array(range(len(bad)), pa.int64()), pa.array(bad, pa.string())], names=["_n", "_bad"]))
    try:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE {_JRAW}_lines AS SELECT j.json, b._bad FROM {_JRAW} AS j "
            f"JOIN _privdom_records AS b ON b._n = j.rowid ORDER BY j.rowid"
        )
        con.execute(f"DROP TABLE {_JRAW}")
        con.execute(f"ALTER TABLE {_JRAW}_lines RENAME TO {_JRAW}")
    except duckdb.Error:
        raise fl.FileRejected(refused) from None
    finally:
        con.unregister("_privdom_records")
        con.execute(f"DROP TABLE IF EXISTS {_JRAW}_lines")


def _json_non_scalars(con: duckdb.DuckDBPyConnection, keys: list[str], order: Sequence[str], malformed: bool) -> bool:
    """Make the records of a JSON Lines file (_JRAW, read into _SRC by _read_text) in which a contract column's
    value is a JSON object, array or boolean malformed records: _SRC is made again from _JRAW with their
    columns NULL and their text in _MF (rule row.malformed). Returns whether it was (`malformed`: _SRC has _MF).

    json_extract_string gives such a value as its JSON text, which loaded as an identifier (`{"id":"x"}`;
    `false`, which every row with `"unionid": false` would share); a contract column holds one text, number or
    null. The values read (the first key of each contract column, as _judge_select reads them) are looked at as
    text first, one scan of _SRC; only where one starts with `{` or `[`, or is `true`/`false`, are the JSON
    types of the record's values asked (a text "[vip]" is a text). _SRC is made again from _JRAW, not joined
    with it: a key may be called anything ("_n", "rowid")."""
    read = _keys_read(keys, order)
    if not read:
        return False
    def like_json(v: str) -> str:  # a value json_extract_string may have made of an object, array or boolean
        return f"(left({v}, 1) IN ('{{', '[') OR {v} IN ('true', 'false'))"

    looks = " OR ".join(like_json(f"_s.{R.q(keys[i - 1])}") for i in read.values())
    if not con.execute(f"SELECT count(*) FROM {_SRC} AS _s WHERE {looks}").fetchone()[0]:
        return False
    suspect = " OR ".join(like_json(f"_v[{i}]") for i in read.values())
    exact = " OR ".join(f"coalesce(json_type(json, {_json_pointer(keys[i - 1])}) IN ('OBJECT', 'ARRAY', 'BOOLEAN'), FALSE)"
                        for i in read.values())
    paths = "[" + ", ".join(_json_pointer(k) for k in keys) + "]"
    records = (f"SELECT *, CASE WHEN {suspect} THEN {exact} ELSE FALSE END AS _x FROM (SELECT json, "
               f"json_extract_string(json, {paths}) AS _v, rowid AS _n{', _bad' if malformed else ''} FROM {_JRAW})")
    if not con.execute(f"SELECT count(*) FROM ({records}) WHERE _x").fetchone()[0]:
        return False
    select = ", ".join(f"CASE WHEN _s._x THEN NULL ELSE _s._v[{i}] END AS {R.q(k)}" for i, k in enumerate(keys, start=1))
    before = "_s._bad" if malformed else "CAST(NULL AS VARCHAR)"
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE {_SRC} AS SELECT {select}, "
        f"CASE WHEN _s._x THEN CAST(_s.json AS VARCHAR) ELSE {before} END AS {R.q(_MF)} FROM ({records}) AS _s ORDER BY _s._n"
    )
    return True


def _json_whole_numbers(con: duckdb.DuckDBPyConnection, keys: list[str], order: Sequence[str], cents: Sequence[str]) -> None:
    """In _SRC (a JSON Lines file read by _read_text), a whole JSON number below 2^53 in a contract column other
    than an amount becomes its integer text, as a whole number in a Parquet float column does (rules.delivered_text):
    pandas writes an id column with a gap as float64, and `to_json` gave `"member_id": 880001.0`, which loaded as
    "880001.0", a second customer beside "880001", and a phone 13812340002.0 was quarantined (schema-drift
    review). A JSON string "880001.0" stays as delivered. The values are looked at as text first (json_extract_string
    writes a whole double with ".0"); only where one ends so are the records' JSON types asked."""
    amounts = {n.strip().lower() for n in cents}
    read = [keys[i - 1] for column, i in _keys_read(keys, order).items() if column not in amounts]
    # a key called rowid hides _SRC's row id, which pairs its rows with _JRAW's: such a file keeps its texts
    if not read or any(k.strip().lower() == "rowid" for k in keys):
        return
    looks = " OR ".join(f"{R.q(k)} LIKE '%.0'" for k in read)
    if not con.execute(f"SELECT count(*) FROM {_SRC} WHERE {looks}").fetchone()[0]:
        return
    for k in read:
        col = f"{_SRC}.{R.q(k)}"
        con.execute(
            f"UPDATE {_SRC} SET {R.q(k)} = CAST(CAST(CAST({col} AS DOUBLE) AS BIGINT) AS VARCHAR) "
            f"FROM (SELECT rowid AS _n, json_type(json, {_json_pointer(k)}) AS _t FROM {_JRAW}) AS _j "
            f"WHERE {_SRC}.rowid = _j._n AND _j._t = 'DOUBLE' AND {col} LIKE '%.0' "
            f"AND abs(TRY_CAST({col} AS DOUBLE)) < 9007199254740992"
        )


def _keys_read(keys: list[str], order: Sequence[str]) -> dict[str, int]:
    """Contract column -> 1-based position in `keys` of the key read for it: the first whose name is the column's,
    case and surrounding spaces aside, as _judge_select reads it."""
    wanted = {name.strip().lower() for name in order}
    read: dict[str, int] = {}
    for i, k in enumerate(keys, start=1):
        if k.strip().lower() in wanted:
            read.setdefault(k.strip().lower(), i)
    return read


def _json_pointer(key: str) -> str:
    """The JSON Pointer (RFC 6901) of a top-level key, as a SQL literal."""
    return R.lit("/" + key.replace("~", "~0").replace("/", "~1"))


def _json_number_signature(con: duckdb.DuckDBPyConnection, keys: list[str], cents: Sequence[str]) -> _Signature | None:
    """The signature of a JSON Lines file in _SRC (its keys, every column VARCHAR: the values' text), with the
    amount columns (`cents`) whose values in this file are all JSON numbers, one at least with a fraction or an
    exponent, typed R.JSON_NUMBER; None when there is no such column (the caller asks DuckDB, as for any file).

    A JSON number is a binary double (RFC 8259: a JavaScript exporter writes 0.1 + 0.2 as 0.30000000000000004),
    so the judge reads such a column as it reads a Parquet DOUBLE (SPEC §2: within 1e-9 of a cent value it is
    that value, so every format gives the same result), its text kept where it is a whole number of cents. The
    values stay the delivered text, which a quarantined row's original values show. A key holding JSON strings
    in the file, even beside numbers, is text, judged as CSV text is."""
    amount_names = {n.lower() for n in cents}
    amounts = [k for k in keys if k.strip().lower() in amount_names]
    if not amounts:
        return None
    paths = "[" + ", ".join(_json_pointer(k) for k in amounts) + "]"
    types = ", ".join(f"json_type(_j[{i}]) AS t{i}" for i in range(1, len(amounts) + 1))
    flags = con.execute(
        "SELECT " + ", ".join(
            f"coalesce(bool_and(t{i} IS NULL OR t{i} IN ('NULL', 'DOUBLE', 'UBIGINT', 'BIGINT')) "
            f"AND bool_or(t{i} = 'DOUBLE'), FALSE)" for i in range(1, len(amounts) + 1))
        + f" FROM (SELECT {types} FROM (SELECT json_extract(json, {paths}) AS _j FROM {_JRAW}))"
    ).fetchone()
    numbers = {k for k, flag in zip(amounts, flags) if flag}
    if not numbers:
        return None
    return tuple((k, R.JSON_NUMBER if k in numbers else "VARCHAR") for k in keys)


_HEADER_LIMIT = 1 << 20  # bytes of a CSV header line


def _line_endings_hint(path: Path, compression: str) -> str:
    """For a CSV file DuckDB refused: what its line endings have that the reader cannot take, in words ("" when
    nothing). DuckDB says "the CSV Parser state machine reached an invalid state" for a carriage return (CR)
    inside a line or lines ending in CR only, and a file mixing CRLF and LF fails the same way. Read only for a
    refused file, in chunks."""
    crlf = cr = lf = 0
    tail = b""
    try:
        with _open_bytes(path, compression) as fh:
            while chunk := fh.read(1 << 20):
                data = tail + chunk
                tail = data[-1:] if data.endswith(b"\r") else b""  # a CRLF split between chunks
                data = data[: len(data) - len(tail)]
                n = data.count(b"\r\n")
                crlf, cr, lf = crlf + n, cr + data.count(b"\r") - n, lf + data.count(b"\n") - n
        cr += len(tail)
    except (OSError, EOFError, zlib.error):
        return ""
    if cr and not crlf and not lf:
        return "; its lines end in CR only, an old Mac format: save it with LF or CRLF line endings"
    if cr:
        return (f"; it has {cr:,} carriage return(s) (CR) not followed by a line feed, inside a line: remove them "
                "or save the file with one kind of line ending")
    if crlf and lf:
        return f"; it mixes {crlf:,} CRLF and {lf:,} LF line endings: save it with one kind"
    return ""


def _csv_header(path: Path, compression: str, f: fl.LandingFile, *,
                require_content: bool = False) -> tuple[list[str], bool]:
    """Column names from the header line (UTF-8 by now), and whether its last name is blank (the line ends in
    a comma); blanks and duplicates get unique names, duplicates compared without case as DuckDB compares
    column names (the first keeps its name: the one the judge reads, as for JSON Lines keys).

    With require_content, a blank first line raises _Fallback (the file may be white space only). A header
    line of more than 1 MiB, or one that is not UTF-8, rejects the file (FileRejected; on the first, fast read
    the caller sniffs the encoding and transcodes first)."""
    import csv
    import io

    with _open_bytes(path, compression) as fh:
        raw = fh.readline(_HEADER_LIMIT + 1)
    if require_content and not raw.removeprefix(fl.UTF8_BOM).strip(b" \t\r\n\x0b\x0c"):
        raise _Fallback()
    if len(raw) > _HEADER_LIMIT:
        raise fl.FileRejected(f"{f.shown}: unreadable: cannot be parsed as CSV (the header line is longer than 1 MiB)")
    try:
        line = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise fl.FileRejected(f"{f.shown}: undecodable: the header line is not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        header = next(csv.reader(io.StringIO(line), delimiter=",", quotechar='"', strict=True), [])
    except csv.Error as exc:
        raise fl.FileRejected(f"{f.shown}: unreadable: cannot be parsed as CSV (bad header: {exc}"
                              f"{_line_endings_hint(path, compression)})") from None
    names: list[str] = []
    taken: set[str] = set()
    for i, n in enumerate(header):
        n = n.strip() or f"column{i + 1}"
        while n.lower() in taken:
            n = f"{n}_{i + 1}"
        names.append(n)
        taken.add(n.lower())
    if not names:
        raise fl.FileRejected(f"{f.shown}: unreadable: cannot be parsed as CSV (no header line)")
    return names, not header[-1].strip()


def _signature(con: duckdb.DuckDBPyConnection, malformed: bool = False) -> _Signature:
    """(name as delivered, DuckDB type) of every delivered column of _SRC, in order (with `malformed`, _SRC's
    last column is _MF, not delivered)."""
    columns = con.execute(f"DESCRIBE {_SRC}").fetchall()
    return tuple((name, ty) for name, ty, *_ in (columns[:-1] if malformed else columns))


def _nested(duckdb_type: str) -> bool:
    """A DuckDB type of nested values: STRUCT(...), MAP(...), UNION(...), a list (`T[]`) or an array (`T[3]`)."""
    return duckdb_type.upper().startswith(("STRUCT", "MAP", "UNION")) or duckdb_type.rstrip().endswith("]")


def _staged_names(signature: _Signature) -> list[str]:
    """The name each delivered column has in a staging table: its own, or, where it would meet DuckDB's row id
    or a lineage column (names compare without case in DuckDB), `__privdom_delivered_<i>` (made unique among
    the delivered names)."""
    taken = {name.lower() for name, _ in signature}
    out = []
    for i, (name, _) in enumerate(signature):
        if name.lower() in _RESERVED:
            new = f"__privdom_delivered_{i}"
            while new.lower() in taken:
                new = "_" + new
            taken.add(new.lower())
            name = new
        out.append(name)
    return out


def _source_columns(signature: _Signature) -> dict[str, tuple[str, str]]:
    """lower(trim(name)) → (name as delivered, DuckDB type); the first of equal names wins."""
    out: dict[str, tuple[str, str]] = {}
    for name, ty in signature:
        out.setdefault(name.strip().lower(), (name, ty))
    return out


# ------------------------------------------------------------------------------------------------- judging
def frame_projection(c: SourceContract, settings: Settings) -> tuple[list[tuple[str, str]], list[tuple[str, str]]]:
    """What a part holds for the GX frame: (helper columns as (name, SQL over the typed and delivered columns
    and the file's batch limit `_bl`), and per frame column (frame name, part column)). File id, row number,
    typed and delivered values are the part's own _fid, _rn, t__ and d__ columns; only the helper columns (net
    amount, identifier counts, batch limit) are stored in addition. Delivered texts are stored only where the
    frame reads them, and a string column's delivered text is its typed value."""
    extra: list[tuple[str, str]] = []
    select: list[tuple[str, str]] = []
    for name, expr in R.frame_columns(c, settings.placeholder_values, "_bl"):
        if name.startswith("h__"):
            extra.append((name, expr))
            select.append((name, name))
        else:
            column = expr.strip('"')  # _fid, _rn, t__<col> or d__<col>
            if column.startswith("d__") and c.column(column[3:]).type == "string":
                column = "t__" + column[3:]  # a string's typed value is its delivered text: stored once
            select.append((name, column))
    return extra, select


# The key of a malformed record's original_row in raw.quarantine: {"malformed_record": "<its text>"}.
MALFORMED_KEY = "malformed_record"


def _judge_select(c: SourceContract, signature: _Signature, settings: Settings, table: str, *, malformed: bool = False) -> str:
    """SELECT over staged files (`table`: their delivered columns plus lineage _FID, _BD, _RN, _BL): per row
    _fid, _bd, _rn, the typed value t__ of every contract column, the delivered text d__ of the columns the GX
    frame reads as delivered text (frame_projection: not for string columns, whose typed value is that text),
    the GX helper columns h__, one flag b__ per rule, _broken, and, for a broken row, its first rule _rule, all
    its rules _rules and its original values _original (JSON text), for a row that loads its _row_hash.

    The helper columns are computed before the flags, which read them: an identifier count once for the
    `any_identifier` flag and the frame, the batch limit once per file (`_bl`, from the staged files)."""
    ph = settings.placeholder_values
    src_cols = _source_columns(signature)
    staged_names = _staged_names(signature)
    staged: dict[str, str] = {}
    for (name, _), staged_name in zip(signature, staged_names):
        staged.setdefault(name, staged_name)  # the first of equal names, as _source_columns
    batch_limit = "_bl"
    # files without malformed records have no _MF column: a constant NULL, which DuckDB folds (their flag,
    # helper column and original are constants: ~5 % of channel events' judging when the column was read)
    inner = [f"{R.q(_FID)} AS _fid", f"{R.q(_BD)} AS _bd", f"{R.q(_RN)} AS _rn", f"{R.q(_BL)} AS _bl",
             f"{R.q(_MF) if malformed else 'CAST(NULL AS VARCHAR)'} AS {R.MALFORMED}"]
    inner += [f"{R.q(name)} AS {R.q(f'o__{i}')}" for i, name in enumerate(staged_names)]
    delivered, typed = [], []
    for col in c.columns:
        name, ty = src_cols.get(col.name, (None, None))
        name = staged[name] if name is not None else None
        # the delivered text, then (a layer up) a null marker as NULL
        inner.append(f"{R.delivered_text(name, ty)} AS {R.q(f'v__{col.name}')}")
        delivered.append(f"{R.no_null_marker(R.q(f'v__{col.name}'))} AS {R.d(col.name)}")
        s_name = None
        if name is not None and ty != "VARCHAR":
            s_name = f"s__{col.name}"
            inner.append(f"{R.q(name)} AS {R.q(s_name)}")
        typed.append(f"{R.typed_expr(col, s_name, ty if s_name else None, ph)} AS {R.t(col.name)}")
    extra, frame = frame_projection(c, settings)
    helpers = [f"{expr} AS {R.q(name)}" for name, expr in extra]
    flags = [f"{R.broken_expr(r, c, ph, batch_limit, R.q(R.helper_name(r, 'count')) if r.kind == 'any_identifier' else None)} AS {R.flag(r)}"
             for r in c.rules]
    any_broken = " OR ".join(R.flag(r) for r in c.rules) or "FALSE"
    # fixed types (the typed expressions already have them; the casts make it explicit)
    cast = ["_fid", "_bd", "_rn", R.MALFORMED]
    cast += [R.q(f"o__{i}") for i in range(len(signature))]
    cast += [R.d(col.name) for col in c.columns]
    cast += [f"CAST({R.t(col.name)} AS {R.SQL_TYPES[col.type]}) AS {R.t(col.name)}" for col in c.columns]
    cast += [R.q(name) for name, _ in extra]
    cast += [R.flag(r) for r in c.rules]
    cast.append(f"{any_broken} AS _broken")
    first_rule = "CASE " + " ".join(f"WHEN {R.flag(r)} THEN {R.lit(r.name)}" for r in c.rules) + " END"
    all_rules = "concat_ws(',', " + ", ".join(f"CASE WHEN {R.flag(r)} THEN {R.lit(r.name)} END" for r in c.rules) + ")"
    # a malformed record's original is its text as delivered (its columns were not read)
    original = (f"CASE WHEN {R.MALFORMED} IS NOT NULL THEN CAST(json_object({R.lit(MALFORMED_KEY)}, {R.MALFORMED}) AS VARCHAR) "
                "ELSE CAST(json_object(" + ", ".join(
                    f"{R.lit(n)}, CAST({R.q(f'o__{i}')} AS VARCHAR)" for i, (n, _) in enumerate(signature)) + ") AS VARCHAR) END")
    row_hash = R.row_hash_expr(c)
    out = ["_fid", "_bd", "_rn"]
    out += [R.t(col.name) for col in c.columns]
    # delivered texts only where the GX frame reads them (writing the part is a third of the judging's cost)
    out += [R.q(column) for _, column in frame if column.startswith("d__")]
    out += [R.q(name) for name, _ in extra]
    out += [R.flag(r) for r in c.rules]
    out += ["_broken", f"CASE WHEN _broken THEN {first_rule} END AS _rule",
            f"CASE WHEN _broken THEN {all_rules} END AS _rules",
            f"CASE WHEN _broken THEN {original} END AS _original",
            f"CASE WHEN NOT _broken THEN {row_hash} END AS _row_hash"]
    return (
        f"SELECT {', '.join(out)} FROM ("
        f"SELECT {', '.join(cast)} FROM ("
        f"SELECT *, {', '.join(flags)} FROM ("
        f"SELECT *{''.join(', ' + h for h in helpers)} FROM ("
        f"SELECT *, {', '.join(typed)} FROM ("
        f"SELECT *, {', '.join(delivered)} FROM ("
        f"SELECT {', '.join(inner)} FROM {table}))))))"
    )


# ------------------------------------------------------------------------------------------------- ledger
_LEDGER_COLUMNS = 17


def _ledger_row(file_id: int, source: str, f: fl.LandingFile, sha: str, size: int, encoding: str | None, status: str,
                counts: tuple[int, int, int], error: str | None, load_id: str, started: dt.datetime) -> list[Any]:
    return [file_id, source, f.rel_path, sha, size, f.format, encoding, f.compression if f.format else None,
            f.batch_date, status, *counts, error, load_id, started, None]


def _insert_ledger(con, rows: list[list[Any]], chunk: int = 200) -> None:
    """Insert ledger rows with a few multi-row statements (finished_at: now, in UTC)."""
    finished = dt.datetime.now(dt.timezone.utc)
    one = "(" + ", ".join(["?"] * _LEDGER_COLUMNS) + ")"
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        params = [v for r in part for v in (*r[:-1], finished)]
        con.execute(
            "INSERT INTO raw.ingestion_ledger SELECT * FROM (VALUES " + ", ".join([one] * len(part)) + ")", params
        )


# A file changed less than this long before it is hashed is not recorded in raw.landing_hash_cache: a write
# within the filesystem's timestamp resolution (milliseconds on ext4, seconds on NFS/SMB/FAT) after the stat could
# leave every stamp as it was (git's "racily clean" entries). It is hashed again by the next run.
RACY_NS = 2_000_000_000

_Stamp = tuple[int, int, int, int]  # size, modification time (ns), inode change time (ns), inode

# _content_hash's answer for a listed file that is gone when hashed, and the ledger's content hash of one that
# cannot be read (its path is recorded once as rejected; once readable, its real hash makes it new)
GONE, UNREADABLE = "gone", "unreadable"


def _stamp(st: os.stat_result) -> _Stamp:
    return st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino


def _content_hash(f: fl.LandingFile, hashed: dict[str, tuple[_Stamp, str]]) -> tuple[str, int, _Stamp | None, _Stamp]:
    """(sha256, size, stamp to record or None) of a landing file: from raw.landing_hash_cache when its path and
    stamp (size, modification time, inode change time, inode) are those recorded, else read and hashed.

    The change time cannot be set back (`touch -d`, `cp -p`, `rsync -t` and unpacking restore the modification
    time only) and any write or rename into place changes it or the inode. A hash is to be recorded (its stamp
    returned) only when the file's stamp was the same before and after it was read, the bytes read were its
    size, and it last changed more than RACY_NS before it was read; otherwise it is hashed again next time.
    The last item is the stamp seen before the hash, which the file must still have once it has been read
    (_still_as_hashed)."""
    started = time.time_ns()
    try:
        before = _stamp(f.path.stat())
        known = hashed.get(f.rel_path)
        if known is not None and known[0] == before:
            return known[1], before[0], None, before
        sha, size = fl.sha256_of(f.path)
        after = _stamp(f.path.stat())
    except FileNotFoundError:
        return GONE, 0, None, None  # removed since it was listed: not a delivery any more
    except OSError as exc:  # no read permission, an I/O error: rejected by name, the source's other files load
        return UNREADABLE, 0, None, exc
    record = after == before and size == before[0] and before[2] < started - RACY_NS
    return sha, size, before if record else None, before


def _modified_ns(path: Path) -> int:
    try:
        return path.stat().st_mtime_ns
    except FileNotFoundError:
        return 0  # gone since it was listed: judged (and rejected) like any file that cannot be read


class LandingFileChanged(RuntimeError):
    """A landing file changed between its hash and the end of its read: it was still being written."""


def _still_as_hashed(source: str, staged: list[_Staged], stamps: dict[int, _Stamp]) -> None:
    """Raise LandingFileChanged, before anything of the source is loaded, when a file whose rows are to load is
    not as it was when hashed: a delivery still being copied in (cp, SFTP) was loaded cut short, its last row
    valid and wrong for good (a channel event keeps its first content), and recorded under a hash of other bytes
    (crash review). Nothing is lost: the run loads none of the source, and the next run reads the whole file.
    Its size, modification time and inode are compared, not its change time (a chmod, a hard link into a
    snapshot or a restored access time change that alone); a file removed since it was read loads what was read."""
    changed = []
    for s in staged:
        try:
            now = _stamp(s.f.path.stat())
        except FileNotFoundError:
            continue
        size, modified, _, inode = stamps[s.result.file_id]
        if (now[0], now[1], now[3]) != (size, modified, inode):
            changed.append(s.f.rel_path)
    if changed:
        raise LandingFileChanged(
            f"{', '.join(changed[:5])}{' and more' if len(changed) > 5 else ''}: changed while being read (still being "
            f"written?); nothing of {source} was loaded by this run, and the next run loads the whole file. Deliver "
            "files under a name starting with '.' or '_' and rename them into place when complete "
            "(docs/data-contract.md)."
        )


def _content_hashes(files: list[fl.LandingFile], hashed: dict[str, tuple[_Stamp, str]],
                    newly_hashed: list[tuple[str, _Stamp, str]]) -> list[tuple[str, int, _Stamp]]:
    """_content_hash of every file, in order, ingest_workers() threads at a time (hashlib works without the
    GIL: a first run's 1.8 GB at 1M customers, ~1.8 s on one thread); the hashes to record are appended to
    `newly_hashed` in file order."""
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=ingest_workers(), thread_name_prefix="privdom-hash") as pool:
        results = list(pool.map(lambda f: _content_hash(f, hashed), files))
    for f, (sha, _, stamp, _) in zip(files, results):
        if stamp is not None:
            newly_hashed.append((f.rel_path, stamp, sha))
    return [(sha, size, seen) for sha, size, _, seen in results]


def _remember_hashes(con, source: str, rows: list[tuple[str, _Stamp, str]], chunk: int = 500) -> None:
    """Record files' content hashes with their stamps, replacing a path's older one."""
    for i in range(0, len(rows), chunk):
        part = rows[i : i + chunk]
        paths = [p for p, *_ in part]
        con.execute("DELETE FROM raw.landing_hash_cache WHERE source = ? AND list_contains(?, file_path)", [source, paths])
        con.execute("INSERT INTO raw.landing_hash_cache SELECT * FROM (VALUES "
                    + ", ".join(["(?, ?, ?, ?, ?, ?, ?)"] * len(part)) + ")",
                    [v for p, stamp, sha in part for v in (source, p, *stamp, sha)])


def _next_file_id(con) -> int:
    return con.execute("SELECT coalesce(max(file_id), 0) + 1 FROM raw.ingestion_ledger").fetchone()[0]


@dataclass
class _Candidate:
    file_id: int
    f: fl.LandingFile
    sha: str
    size: int
    started: dt.datetime


class _Read(NamedTuple):
    """A file read whole by _stage_batch: its encoding (for the ledger) and its _columns_note."""

    encoding: str
    columns_note: str | None


def _columns_note(c: SourceContract, rel_path: str, src_cols: dict[str, tuple[str, str]]) -> str | None:
    """What a loaded file's columns say against the contract, or None. A file that lacks an optional contract
    column and has a column the contract does not know under a name like it (schema-drift review:
    `discount_amount` delivered as `discount` loaded every discount as 0, and net revenue with it, without a
    word). Either alone is allowed and common (SPEC §2: optional columns default, unknown ones are ignored); a
    likeness of names says rename: one name inside the other (4 letters or more, case, `_`, `-` and spaces aside)
    or a SequenceMatcher ratio of 0.75 or more. And an amount delivered as a 32-bit float (Parquet FLOAT)."""
    absent = [n for n in c.column_names if n not in src_cols and n not in c.required_columns]
    unknown = [name for key, (name, _) in src_cols.items() if key not in c.column_names]
    pairs = []
    for column in absent:
        a = _bare(column)
        for name in unknown:
            u = _bare(name)
            if (len(u) >= 4 and (u in a or a in u)) or difflib.SequenceMatcher(None, a, u).ratio() >= 0.75:
                pairs.append(f"{column} (default used) beside {name}")
    notes = [f"no {'; no '.join(pairs)}, which the contract does not know: a renamed column?"] if pairs else []
    # A 32-bit float holds no cent exactly (12.34 is 12.3400001526): SPEC §2 takes a float amount within 1e-9 of
    # a cent value, so every such row with cents is quarantined as <column>.type, which alone says nothing of why
    narrow = [src_cols[col.name][0] for col in c.columns
              if col.type == "decimal" and col.name in src_cols and src_cols[col.name][1] in ("FLOAT", "REAL")]
    if narrow:
        notes.append(f"{', '.join(narrow)} {'is a' if len(narrow) == 1 else 'are'} 32-bit float{'s' if len(narrow) > 1 else ''}, "
                     "which cannot hold cents (12.34 is 12.3400001526), so rows with cents are quarantined as not "
                     "amounts: write amounts as DECIMAL, DOUBLE or text")
    if not notes:
        return None
    return f"{fl.shown(rel_path)}: {'; '.join(notes)}"


def _bare(name: str) -> str:
    return "".join(ch for ch in name.strip().lower() if ch.isalnum())


@dataclass
class _Staged:
    result: FileResult
    f: fl.LandingFile
    sha: str
    size: int
    encoding: str
    started: dt.datetime


def ingest_workers() -> int:
    """Batches judged at once: one per CPU core, at most 4 (each statement also uses DuckDB's threads)."""
    return max(1, min(4, os.cpu_count() or 1))


# Files are judged in batches of consecutive files (by file id) of about this many bytes: one judge statement
# per batch and schema signature (planning it costs ~40 ms, more than reading a small file), small enough that a
# batch's rows sit in a worker's memory. Batches are cut by file size, so parts are the same for every run.
BATCH_BYTES = 32 * 1024 * 1024
_FILE = "_privdom_file_{}"  # a batch's staged files: one temp table per large file or run of small ones
# A file with fewer rows is appended to its signature's table of small files instead of being an input of the
# judging statement of its own: an input costs ~5 ms of planning, appending ~2 µs a row (1M × 365: channel
# events ~27k rows a file, orders ~12k, referrals ~2.8k; at 10k every file is small).
SMALL_FILE_ROWS = 4096
# Uncompressed, with dictionaries only for columns of fewer than 1,000 distinct values in a row group (DuckDB's
# DICTIONARY_SIZE_LIMIT counts values: enums, flags): the parts are temporary files in the data directory's
# tmp/ (orchestration/scratch.py) and read twice (the load, GX's scans). Writing them is a third of judging a
# row; at 1M customers, against LZ4 with DuckDB's default dictionaries, writing costs 0.64 instead of 0.95 us a row for
# channel events (1.0 / 1.4 us for orders), the three sources' ingestion 48.6-49.7 s instead of 51.5-53.8 s,
# and the parts take ~1.2 GB for channel events and ~1.0 GB for orders instead of ~0.8 / 0.5 GB, for one step
# at a time (each step removes its parts). (zstd before LZ4: at 1M orders 401 MB instead of 696 MB, ingestion
# 61 s against 55 s.)
_PARQUET = "(FORMAT parquet, COMPRESSION uncompressed, DICTIONARY_SIZE_LIMIT 1000)"


def _batches(cands: list[_Candidate]) -> list[list[_Candidate]]:
    out: list[list[_Candidate]] = []
    size = 0
    for cand in cands:
        if not out or size + cand.size > BATCH_BYTES:
            out.append([])
            size = 0
        out[-1].append(cand)
        size += cand.size
    return out


@dataclass
class _Arm:
    """One input of a signature's judging statement: a large file's own temp table, or an accumulator table
    holding a run of consecutive small files (with their lineage columns already in it)."""
    table: str
    select: str
    accumulates: bool


def _stage_batch(cur: duckdb.DuckDBPyConnection, c: SourceContract, settings: Settings, batch: list[_Candidate],
                 spill: Path, name: str, scratch: _Scratch) -> tuple[dict[int, _Read | fl.FileRejected], list[Path]]:
    """Read every file of `batch` (whole-file rejections per file) and write the judged rows of each schema
    signature to one part. Returns (file id → _Read or FileRejected, the parts in order).

    The judge reads the files of a signature as one UNION ALL, in file order (DuckDB keeps a UNION ALL's
    order). A file of SMALL_FILE_ROWS rows or more is an input of its own (its temp table, renamed: no row is
    copied); consecutive smaller files are appended to one table, because each input costs ~5 ms of planning
    the wide judging statement, more than copying a few thousand rows."""
    results: dict[int, _Read | fl.FileRejected] = {}
    # per (signature, whether the files have malformed records): the judge of files without reads no _MF column
    signatures: dict[tuple[_Signature, bool], list[_Arm]] = {}
    tables: list[str] = []
    try:
        for cand in batch:
            f = cand.f
            try:
                encoding, signature, n_rows, malformed = _read(cur, f, cand.size, scratch, c.column_names, c.decimal_columns)
                if signature is None:
                    signature = _signature(cur)
                src_cols = _source_columns(signature)
                missing = [n for n in c.required_columns if n not in src_cols]
                if missing:
                    hint = ""
                    if len(signature) == 1:  # a header that is one column: another separator than the comma?
                        seps = [name for sep, name in ((";", "';'"), ("\t", "a tab"), ("|", "'|'")) if sep in signature[0][0]]
                        if seps:
                            hint = (f" (the header is one column holding {seps[0]}: privdom reads comma-separated "
                                    "files only)")
                    raise fl.FileRejected(f"{f.shown}: missing required column(s): {', '.join(missing)}{hint}")
                nested = [f"{src_cols[n][0]} ({src_cols[n][1]})" for n in c.column_names if n in src_cols and _nested(src_cols[n][1])]
                if nested:  # a Parquet struct, list or map: its text ("{'a': 1}") would load as the value
                    raise fl.FileRejected(f"{f.shown}: column(s) {', '.join(nested)} hold nested values (a struct, "
                                          f"list or map); a contract column holds one value per row")
                flags = [f"{src_cols[n][0]} (BOOLEAN)" for n in c.column_names if n in src_cols and src_cols[n][1] == "BOOLEAN"]
                if flags:  # its text, "true"/"false", would load as an id every such row shares (as a JSON boolean)
                    raise fl.FileRejected(f"{f.shown}: column(s) {', '.join(flags)} hold true/false; a contract "
                                          f"column holds a text, a number or a timestamp")
                # a Parquet BINARY column without the UTF8 annotation (Impala, Hive, older Spark write text so) reads
                # as BLOB, whose text is its bytes escaped: 双十一 loaded as \xE5\x8F\x8C...: read as UTF-8 text
                blobs = [src_cols[n][0] for n in c.column_names if n in src_cols and src_cols[n][1] == "BLOB"]
                for name in blobs:
                    bad = cur.execute(f"SELECT min(rowid) + 1 FROM {_SRC} WHERE {R.q(name)} IS NOT NULL "
                                      f"AND try(decode({R.q(name)})) IS NULL").fetchone()[0]
                    if bad is not None:
                        raise fl.FileRejected(f"{f.shown}: column {name} (BLOB) holds bytes that are not UTF-8 text "
                                              f"(row {bad}); a contract column holds text")
                    cur.execute(f"ALTER TABLE {_SRC} ALTER {R.q(name)} TYPE VARCHAR USING decode({R.q(name)})")
                if blobs:
                    signature = _signature(cur)
                note = _columns_note(c, f.rel_path, src_cols)
            except fl.FileRejected as exc:
                results[cand.file_id] = exc
                continue
            # a delivered column called rowid (any case) hides DuckDB's row id, one named like a lineage column
            # would be taken for it: renamed in the file's table, they keep their delivered names in the judge
            for (delivered, _), staged in zip(signature, _staged_names(signature)):
                if staged != delivered:
                    cur.execute(f"ALTER TABLE {_SRC} RENAME COLUMN {R.q(delivered)} TO {R.q(staged)}")
            batch_date = f"DATE {R.lit(f.batch_date.isoformat())}"
            lineage = (f"CAST({cand.file_id} AS BIGINT) AS {R.q(_FID)}, {batch_date} AS {R.q(_BD)}, "
                       f"rowid + 1 AS {R.q(_RN)}, {R.batch_limit_expr(batch_date)} AS {R.q(_BL)}, "
                       + (f"{R.q(_MF)}, * EXCLUDE ({R.q(_MF)})" if malformed else "*"))
            arms = signatures.setdefault((signature, malformed), [])
            small = n_rows < SMALL_FILE_ROWS
            if small and arms and arms[-1].accumulates:
                cur.execute(f"INSERT INTO {arms[-1].table} SELECT {lineage} FROM {_SRC}")
            else:
                table = _FILE.format(len(tables))
                tables.append(table)  # dropped in `finally` (IF EXISTS) whether or not the next statement ran
                if small:
                    cur.execute(f"CREATE TEMP TABLE {table} AS SELECT {lineage} FROM {_SRC}")
                    arms.append(_Arm(table, f"SELECT * FROM {table}", True))
                else:
                    cur.execute(f"ALTER TABLE {_SRC} RENAME TO {table}")
                    arms.append(_Arm(table, f"SELECT {lineage} FROM {table}", False))
            results[cand.file_id] = _Read(encoding, note)
        cur.execute(f"DROP TABLE IF EXISTS {_SRC}")
        parts = []
        for k, ((signature, malformed), arms) in enumerate(signatures.items()):
            part = spill / f"part-{name}-{k:03d}.parquet"
            judge = _judge_select(c, signature, settings, "(" + " UNION ALL ".join(a.select for a in arms) + ")",
                                  malformed=malformed)
            cur.execute(f"COPY ({judge}) TO {R.lit(part.as_posix())} {_PARQUET}")
            for a in arms:
                cur.execute(f"DROP TABLE {a.table}")
            parts.append(part)
        return results, parts
    finally:
        for t in [_SRC, *tables]:
            cur.execute(f"DROP TABLE IF EXISTS {t}")


def _stage_all(con: duckdb.DuckDBPyConnection, c: SourceContract, settings: Settings, cands: list[_Candidate],
               spill: Path, name: str) -> tuple[dict[int, _Read | fl.FileRejected], list[Path]]:
    """Stage `cands` in batches, ingest_workers() threads each with its own cursor. Returns (file id →
    _Read or FileRejected, every part in batch order). Any other error stops the workers and is raised."""
    batches = _batches(cands)
    done: dict[int, tuple[dict[int, _Read | fl.FileRejected], list[Path]]] = {}
    todo = list(reversed(range(len(batches))))
    lock = threading.Lock()
    failure: list[BaseException] = []

    def work() -> None:
        cur = con.cursor()
        scratch = _Scratch(spill)
        try:
            _set_timezone(cur)
            while True:
                with lock:
                    if failure or not todo:
                        return
                    i = todo.pop()
                result = _stage_batch(cur, c, settings, batches[i], spill, f"{name}{i:06d}", scratch)
                with lock:
                    done[i] = result
        except BaseException as exc:  # noqa: BLE001 - handed to the calling thread
            with lock:
                failure.append(exc)
        finally:
            scratch.cleanup()
            cur.close()

    n = min(ingest_workers(), len(batches))
    if n <= 1:
        work()
    else:
        threads = [threading.Thread(target=work, name=f"privdom-ingest-{i}", daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    if failure:
        raise failure[0]
    results: dict[int, _Read | fl.FileRejected] = {}
    parts: list[Path] = []
    for i in range(len(batches)):
        results.update(done[i][0])
        parts += done[i][1]
    return results, parts


def _load_beside(load: Callable[[], None], validate: Callable[[Any], Any], frame: Any) -> Future:
    """Run load() in a worker thread while validate(frame) runs in this one. Returns validate's outcome as a
    done Future (its result or its exception); once validate is over, waits for the load and raises the
    load's exception if it failed. The load's DuckDB connection is used by the worker alone meanwhile (this
    thread validates on GX's own connections), and DuckDB runs the load without holding the GIL."""
    failure: list[BaseException] = []

    def run() -> None:
        try:
            load()
        except BaseException as exc:  # noqa: BLE001 - raised in the calling thread below
            failure.append(exc)

    worker = threading.Thread(target=run, name="privdom-load", daemon=True)
    worker.start()
    outcome: Future = Future()
    try:
        try:
            outcome.set_result(validate(frame))
        except Exception as exc:  # noqa: BLE001 - the caller reads it from the future
            outcome.set_exception(exc)
    finally:
        worker.join()  # an interruption of the validation still waits for the transaction to end
    if failure:
        raise failure[0]
    return outcome


def _completed(validate: Callable[[Any], Any], frame: Any) -> Future:
    outcome: Future = Future()
    try:
        outcome.set_result(validate(frame))
    except Exception as exc:  # noqa: BLE001 - the caller reads it from the future
        outcome.set_exception(exc)
    return outcome


def _parts_sql(parts: list[Path]) -> str:
    return "read_parquet([" + ", ".join(path_sql(p) for p in parts) + "])"


# ------------------------------------------------------------------------------------------------- public
def ingest_source(con: duckdb.DuckDBPyConnection, source: str, settings: Settings, load_id: str,
                  *, keep_frame: bool = True,
                  batch_dates: tuple[dt.date, dt.date] | None = None,
                  validate: Callable[[SpilledFrame | pd.DataFrame], Any] | None = None,
                  modified_before_ns: int | None = None) -> SourceIngestReport:
    """Load every new file of `source` from settings.landing_dir/<source>/ into raw.<source>.

    With ``batch_dates`` (first, last), only new files whose batch date is in that range load (a daily
    partition or a backfill's range); files without a batch date are always judged (and rejected).
    With ``modified_before_ns`` (the landing sensor's cutoff: files it saw settled), a file modified later is
    not read nor recorded (``report.files_waiting``): it may still be being copied in, and a later run loads it.

    All files of the run load in one transaction (raw rows, quarantine rows and ledger rows of loaded,
    rejected and duplicate files together); see the module docstring. The report carries the run's new rows
    before the quarantine split (``frame``) for the GX validation. With ``validate`` (and ``keep_frame``),
    ``report.validation`` is a done Future of validate(frame): it runs in the calling thread from the moment
    the rows are judged while the load's transaction runs in a worker (1M customers: orders' GX 13 s and load
    6 s took 14.5-16.7 s together instead of 18-19 s); a load that fails is raised once the validation is
    over, so the parts are never removed under it. The caller closes ``frame``.
    """
    c = get_contract(source)
    rehashed = ensure_raw_schema(con)
    report = SourceIngestReport(source=source, load_id=load_id, quarantine_by_rule={r.name: 0 for r in c.rules},
                                rows_rehashed={k: n for k, n in (rehashed or {}).items() if n})

    ledger = con.execute("SELECT file_path, content_sha256, status, batch_date, rows_read FROM raw.ingestion_ledger "
                         "WHERE source = ?", [source]).fetchall()
    seen = {(p, h): s for p, h, s, _, _ in ledger}
    # each loaded content: the file that loaded it, the batch date its rows were judged with, and how many rows
    # it held (None while this run has not counted them)
    loaded_at = {h: (p, b, n) for p, h, s, b, n in ledger if s == "loaded"}
    hashed = {p: ((size, m_ns, c_ns, ino), h) for p, size, m_ns, c_ns, ino, h in con.execute(
        "SELECT file_path, size_bytes, modified_ns, changed_ns, inode, content_sha256 FROM raw.landing_hash_cache "
        "WHERE source = ?", [source]).fetchall()}
    newly_hashed: list[tuple[str, _Stamp, str]] = []

    first_id = next_id = _next_file_id(con)
    ledger_rows: list[list[Any]] = []
    staged: list[_Staged] = []
    spill_dir = scratch_directory(settings.data_dir, f"ingest-{source}")
    spill = Path(spill_dir.name)
    keep_spill = False
    try:
        # ---- 1. stage and judge every new file. The first file of each content judges in parallel; a later
        # file with the same content is a duplicate when that one loads, and is judged afterwards otherwise.
        first: list[_Candidate] = []
        later: list[_Candidate] = []
        run_shas: set[str] = set()
        listed, report.unlisted = fl.listing(settings.landing_dir, source)
        wanted = [f for f in listed
                  if not (batch_dates and f.batch_date is not None and not batch_dates[0] <= f.batch_date <= batch_dates[1])]
        if modified_before_ns is not None:
            report.files_waiting = [f.rel_path for f in wanted if _modified_ns(f.path) > modified_before_ns]
            waiting = set(report.files_waiting)
            wanted = [f for f in wanted if f.rel_path not in waiting]
        stamps: dict[int, _Stamp] = {}
        for f, (sha, size, stamp) in zip(wanted, _content_hashes(wanted, hashed, newly_hashed)):
            if sha == GONE:
                continue
            if (f.rel_path, sha) in seen:
                report.files_skipped += 1
                continue
            if sha == UNREADABLE:
                why = getattr(stamp, "strerror", None) or _first_line(stamp)
                err = f"{f.shown}: unreadable: cannot be read ({why}); nothing of it loaded, the next run reads it again once it can be read"
                started = dt.datetime.now(dt.timezone.utc)
                ledger_rows.append(_ledger_row(next_id, source, f, UNREADABLE, 0, None, "rejected", (0, 0, 0), err, load_id, started))
                report.files.append(FileResult(f.rel_path, "rejected", next_id, f.batch_date, error=err))
                next_id += 1
                continue
            cand = _Candidate(next_id, f, sha, size, dt.datetime.now(dt.timezone.utc))
            stamps[cand.file_id] = stamp
            next_id += 1
            if sha in loaded_at or sha in run_shas:  # loaded by an earlier run, or a second copy in this one
                later.append(cand)
            else:
                run_shas.add(sha)
                first.append(cand)

        def record(cand: _Candidate, result: _Read | fl.FileRejected | None) -> None:
            f = cand.f
            if result is None:
                err = f"{f.shown}: duplicate: same content (sha256 {cand.sha[:12]}…) as {fl.shown(loaded_at[cand.sha][0])}, already loaded"
                judged, rows = loaded_at[cand.sha][1:]
                if rows == 0:  # a header alone: a quiet day's file of a feed that sends a window of days
                    err += " (it holds no rows)"
                elif judged is not None and f.batch_date is not None and judged != f.batch_date:
                    # a copy under a later-dated name, meant as a correction of rows quarantined for
                    # timestamp.after_batch: content is loaded once whatever its name (SPEC §2), so nothing changes
                    err += (f" with batch date {judged.isoformat()}: a content is loaded once whatever its name, its "
                            f"rows judged by that date, not this file's {f.batch_date.isoformat()}; to deliver rows "
                            "quarantined there again (timestamp.after_batch), put them in a file of their own "
                            "(`privdom quarantine --csv`)")
                ledger_rows.append(_ledger_row(cand.file_id, source, f, cand.sha, cand.size, None, "duplicate", (0, 0, 0), err, load_id, cand.started))
                report.files.append(FileResult(f.rel_path, "duplicate", cand.file_id, f.batch_date, error=err))
            elif isinstance(result, fl.FileRejected):
                ledger_rows.append(_ledger_row(cand.file_id, source, f, cand.sha, cand.size, None, "rejected", (0, 0, 0), str(result), load_id, cand.started))
                report.files.append(FileResult(f.rel_path, "rejected", cand.file_id, f.batch_date, error=str(result)))
            else:
                res = FileResult(f.rel_path, "loaded", cand.file_id, f.batch_date, columns_note=result.columns_note)
                report.files.append(res)
                staged.append(_Staged(res, f, cand.sha, cand.size, result.encoding, cand.started))
                loaded_at[cand.sha] = (f.rel_path, f.batch_date, None)

        results, parts = _stage_all(con, c, settings, first, spill, "a")
        for cand in first:
            record(cand, results[cand.file_id])
        deferred: list[_Candidate] = []  # copies of a content this run loads: told once its rows are counted
        for cand in later:
            if cand.sha in loaded_at:
                if loaded_at[cand.sha][2] is None:  # loaded by this run (the ledger's rows_read is never NULL)
                    deferred.append(cand)
                else:
                    record(cand, None)
            else:
                results, more = _stage_all(con, c, settings, [cand], spill, f"b{cand.file_id:09d}-")
                record(cand, results[cand.file_id])
                parts += more
        _still_as_hashed(source, staged, stamps)
        report.files.sort(key=lambda r: r.file_id)
        staged.sort(key=lambda s: s.result.file_id)

        # ---- per-file counts, from the parts' flags
        per_file: dict[int, tuple] = {}
        if staged:
            counts_sql = ", ".join(["count(*)", "count(*) FILTER (WHERE _broken)"] + [f"count(*) FILTER (WHERE {R.flag(r)})" for r in c.rules])
            per_file = {row[0]: row[1:] for row in con.execute(f"SELECT _fid, {counts_sql} FROM {_parts_sql(parts)} GROUP BY _fid").fetchall()}
        zero = (0, 0) + (0,) * len(c.rules)
        for s in staged:
            n_read, n_quar, *per_rule = per_file.get(s.result.file_id, zero)
            s.result.rows_read, s.result.rows_quarantined, s.result.rows_loaded = n_read, n_quar, n_read - n_quar
            report.rows_read += n_read
            report.rows_loaded += n_read - n_quar
            report.rows_quarantined += n_quar
            for r, n in zip(c.rules, per_rule):
                report.quarantine_by_rule[r.name] += n
            r_ = s.result
            ledger_rows.append(_ledger_row(r_.file_id, source, s.f, s.sha, s.size, s.encoding, "loaded",
                                           (r_.rows_read, r_.rows_loaded, r_.rows_quarantined), None, load_id, s.started))
        if deferred:
            rows_of = {s.sha: s.result.rows_read for s in staged}
            for cand in deferred:
                path, batch, _ = loaded_at[cand.sha]
                loaded_at[cand.sha] = (path, batch, rows_of.get(cand.sha))
                record(cand, None)
            report.files.sort(key=lambda r: r.file_id)
        ledger_rows.sort(key=lambda r: r[0])

        if keep_frame and staged:
            # the parts are the frame: GX validates them in DuckDB, its memory does not grow with the run
            _, select = frame_projection(c, settings)
            report.frame = SpilledFrame(spill_dir, parts, [(s.result.file_id, s.result.rows_read) for s in staged], select)

        # ---- 2. load: one transaction for the run
        def load() -> None:
            try:
                with transaction(con):
                    if staged:
                        _load_rows(con, c, source, load_id, staged, parts)
                        report.rows_resent, report.rows_resent_quarantined = _resent_rows(con, source, first_id)
                    _insert_ledger(con, ledger_rows)
                    _remember_hashes(con, source, newly_hashed)
                    if staged:
                        _verify(con, source, staged, first_id)
            finally:
                _reset_insertion_order(con)  # again, should the raw insert have failed (_load_rows)

        if keep_frame and staged and validate is not None:
            report.validation = _load_beside(load, validate, report.frame)
        elif ledger_rows:
            load()
        elif newly_hashed:  # files hashed again that were already recorded (touched, or copied back)
            with transaction(con):
                _remember_hashes(con, source, newly_hashed)

        if keep_frame:
            if staged:
                keep_spill = True
            else:
                names = [name for name, _ in frame_projection(c, settings)[1]]
                report.frame = pd.DataFrame({n: pd.Series(dtype=object) for n in names})
                if validate is not None:
                    report.validation = _completed(validate, report.frame)
    finally:
        try:
            con.execute(f"DROP TABLE IF EXISTS {_FILES}")
        finally:
            if not keep_spill:
                spill_dir.cleanup()
    return report


def _load_rows(con, c: SourceContract, source: str, load_id: str, staged: list[_Staged], part_paths: list[Path]) -> None:
    """Raw rows of every staged file with one INSERT, quarantine rows with one more.

    The raw rows are inserted without keeping the parts' order (DuckDB's `preserve_insertion_order`, for this
    statement only): its threads each write their own row groups, and nothing reads raw rows by position
    (every model orders by `_file_id`, `_row_number`; a run's rows still come after earlier runs' row groups, so
    `_file_id` filters skip those). 1M customers: channel events' insert 6.9-7.2 s -> 5.8 s."""
    parts = _parts_sql(part_paths)
    cols = ", ".join(R.q(col.name) for col in c.columns) + ", " + ", ".join(R.q(n) for n, _ in LINEAGE_COLUMNS)
    typed = ", ".join(R.t(col.name) for col in c.columns)
    con.execute("SET SESSION preserve_insertion_order = false")
    try:
        con.execute(
            f"INSERT INTO raw.{R.q(source)} ({cols}) SELECT {typed}, _fid, _bd, _rn, _row_hash, now() "
            f"FROM {parts} WHERE NOT _broken"
        )
    finally:
        _reset_insertion_order(con)
    quarantined = [s for s in staged if s.result.rows_quarantined]
    if not quarantined:
        return
    values = ", ".join(f"({s.result.file_id}, {R.lit(s.f.rel_path)})" for s in quarantined)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {_FILES} AS SELECT * FROM (VALUES {values}) v(file_id, file_path)")
    con.execute(
        f"INSERT INTO raw.quarantine SELECT ?, j._fid, p.file_path, j._bd, j._rn, j._rule, j._rules, j._original, ?, now() "
        f"FROM (SELECT _fid, _bd, _rn, _rule, _rules, _original FROM {parts} WHERE _broken) j "
        f"JOIN {_FILES} p ON p.file_id = j._fid ORDER BY j._fid, j._rn",
        [source, load_id],
    )


def _resent_rows(con, source: str, first_id: int) -> tuple[int, int]:
    """(rows of the files from `first_id` on, loaded or quarantined, identical to a row of an earlier file of
    `source`; those of them quarantined). A loaded row is identical by its contract values (`_row_hash`), a
    quarantined one by its original row. A feed that sends every order changed in the last 7 days each day
    (the windowed re-delivery review) diluted a bad day's share up to 7-fold, 5 bad rows of 10 new ones passing
    as 5 of 110, and kept a bad row's share up for the 6 days it came again. 1M customers' full load: ~1 s (a
    semi join of the run's hashes on the table's); a day: ~0.1 s."""
    loaded = con.execute(
        f"SELECT count(*) FROM (SELECT _row_hash h, _file_id f FROM raw.{R.q(source)} WHERE _file_id >= ?) n "
        f"SEMI JOIN (SELECT _row_hash h, _file_id f FROM raw.{R.q(source)}) o ON o.h = n.h AND o.f < n.f",
        [first_id]).fetchone()[0]
    quarantined = con.execute(
        "SELECT count(*) FROM (SELECT original_row r, file_id f FROM raw.quarantine WHERE source = ? AND file_id >= ?) n "
        "SEMI JOIN (SELECT original_row r, file_id f FROM raw.quarantine WHERE source = ?) o ON o.r = n.r AND o.f < n.f",
        [source, first_id, source]).fetchone()[0]
    return int(loaded) + int(quarantined), int(quarantined)


def _reset_insertion_order(con) -> None:
    """Back to the connection's default. A failed statement leaves the transaction aborted, which refuses even
    this (and its error must not replace the statement's): ingest_source's load resets it again once the
    transaction is rolled back."""
    try:
        con.execute("RESET SESSION preserve_insertion_order")
    except duckdb.Error:
        pass


def _verify(con, source: str, staged: list[_Staged], first_id: int) -> None:
    """For every loaded file: rows read = rows in raw.<source> + rows in raw.quarantine (one query per table)."""
    raw = dict(con.execute(f"SELECT _file_id, count(*) FROM raw.{R.q(source)} WHERE _file_id >= ? GROUP BY 1", [first_id]).fetchall())
    quar = dict(con.execute("SELECT file_id, count(*) FROM raw.quarantine WHERE file_id >= ? GROUP BY 1", [first_id]).fetchall())
    for s in staged:
        r = s.result
        loaded, quarantined = raw.get(r.file_id, 0), quar.get(r.file_id, 0)
        if loaded + quarantined != r.rows_read or loaded != r.rows_loaded:
            raise RuntimeError(f"{r.path}: rows read {r.rows_read} != loaded {loaded} + quarantined {quarantined}")
