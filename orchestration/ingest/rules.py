"""Contract → DuckDB SQL: raw table DDL, delivered/typed value expressions and one predicate per rule kind.

Naming inside a batch table: ``"d__<col>"`` is the delivered value (text, trimmed, a null marker such as an empty
text → NULL) and ``"t__<col>"`` the typed value (NULL when not convertible; the column default when absent).
Every predicate is TRUE when the row *breaks* the rule, never NULL.
"""

from __future__ import annotations

import re

from orchestration.contract import (
    ALL_ZEROS_PATTERN,
    LINEAGE_COLUMNS,
    MAINLAND_MOBILE_PATTERN,
    Column,
    Rule,
    SourceContract,
)
from orchestration.settings import TIMEZONE

SQL_TYPES = {
    "string": "VARCHAR",
    "enum": "VARCHAR",
    "phone": "VARCHAR",
    "timestamp": "TIMESTAMPTZ",
    "decimal": "DECIMAL(18,2)",
    "integer": "BIGINT",
}

# ISO-8601: date, T or space, hh:mm, optional :ss and fraction, optional offset Z / ±hh:mm / ±hhmm / ±hh, the
# offset within ±14:59 (real ones are within ±14:00; +99:00 is a typo). The year is EARLIEST_YEAR or later: a
# year 0001, 1900 or 1970 is a default or an epoch zero, not an event, and one such row made the triangle's
# month spine run from year 1 (218k rows for 9) and gave the marts cohorts nobody has.
EARLIEST_YEAR = 1990
# A date alone (`1997-01-01`) is that day's 00:00, as a Parquet DATE is: ISO-8601 allows it, and day-grain
# exports (CDNOW's orders) have nothing else. An offset needs a time.
TIMESTAMP_PATTERN = (r"^(199[0-9]|[2-9][0-9]{3})-[0-9]{2}-[0-9]{2}([T ][0-9]{2}:[0-9]{2}(:[0-9]{2}(\.[0-9]{1,9})?)?"
                     r"(Z|[+-](0[0-9]|1[0-4])(:?[0-5][0-9])?)?)?$")
# A plain decimal (no exponent, no thousands separators) that is a whole number of cents: digits after the
# second decimal place must be zeros. A point may come first (`.5`, as some exporters write half a yuan) or last.
DECIMAL_PATTERN = r"^[+-]?([0-9]+(\.[0-9]{0,2}0*)?|\.[0-9]{1,2}0*)$"
# A whole number, optionally written with a zero fraction (``10.0``, as spreadsheets and JSON doubles write it).
INTEGER_PATTERN = r"^[+-]?[0-9]+(\.0*)?$"
# separators people and spreadsheets put in a phone number: white space (no-break, ideographic, the Unicode
# spaces and the zero-width ones among them), hyphens, dots, brackets
PHONE_STRIP = r"[\s\x{00a0}\x{2000}-\x{200b}\x{202f}\x{205f}\x{3000}\x{feff}\-.()]"
PHONE_PREFIX = r"^(\+86|0086|86)[0-9]{11}$"
FULL_WIDTH_PHONE = "０１２３４５６７８９＋－（）"
ASCII_PHONE = "0123456789+-()"
# The same separators in Python's syntax (PHONE_STRIP is RE2's), for normalised_phone
_PHONE_STRIP_PY = re.compile(r"[\s\u00a0\u2000-\u200b\u202f\u205f\u3000\ufeff\-.()]")


def normalised_phone(value: str) -> str | None:
    """A phone's 11 digits as typed_expr normalises it in SQL (full-width read as ASCII, separators stripped, a
    +86 / 0086 / 86 prefix dropped), when that is a mainland mobile; else None. For values outside the data:
    the block list's entries (settings.placeholder_values)."""
    stripped = _PHONE_STRIP_PY.sub("", value.translate(str.maketrans(FULL_WIDTH_PHONE, ASCII_PHONE)))
    norm = stripped[-11:] if re.fullmatch(PHONE_PREFIX, stripped) else stripped
    return norm if re.fullmatch(MAINLAND_MOBILE_PATTERN, norm) else None
# Trimmed from every delivered text value: ASCII white space, the no-break and ideographic spaces, the other
# Unicode spaces (U+2000-U+200A, U+202F, U+205F) and the invisible U+200B (zero-width space) and U+FEFF (a
# byte-order mark inside a value): a value of only these is no value, and no identifier.
TRIM_CHARS = " \t\r\n\x0b\x0c\u00a0\u3000" + "".join(chr(c) for c in range(0x2000, 0x200C)) + "\u202f\u205f\ufeff"

_INT_TYPES = ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT")
_FLOAT_TYPES = ("FLOAT", "DOUBLE", "REAL")
# The signature type of a JSON Lines amount key whose values in a file are all JSON numbers (core._read_text):
# its values are their text, judged as a Parquet DOUBLE where the text is not a whole number of cents.
JSON_NUMBER = "JSON_NUMBER"
# The range a value must be in to load (under 100,000,000 yuan, under 10,000,000,000 points), as the type every
# conversion is tried into: DECIMAL(10,2) holds up to 99,999,999.99, DECIMAL(10,0) up to 9,999,999,999, and a
# TRY_CAST above that is NULL, which is the column's `type` rule. The loaded value is then the column's own type.
_CHECK_TYPES = {"decimal": "DECIMAL(10,2)", "integer": "DECIMAL(10,0)"}
# The judge's column holding a malformed record's text as delivered (NULL for every other row): the
# `well_formed` rule reads it.
MALFORMED = "_mf"


def q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def d(col: str) -> str:
    return q(f"d__{col}")


def t(col: str) -> str:
    return q(f"t__{col}")


def flag(rule: Rule) -> str:
    return q(f"b__{rule.name}")


def sql_list(values) -> str:
    return "(" + ", ".join(lit(v) for v in values) + ")"


# ------------------------------------------------------------------------------------------------- DDL
def raw_table_ddl(c: SourceContract) -> str:
    cols = [f"{q(col.name)} {SQL_TYPES[col.type]}" for col in c.columns]
    cols += [f"{q(n)} {ty}" for n, ty in LINEAGE_COLUMNS]
    return f"CREATE TABLE IF NOT EXISTS raw.{q(c.name)} (\n    " + ",\n    ".join(cols) + "\n)"


QUARANTINE_DDL = """
CREATE TABLE IF NOT EXISTS raw.quarantine (
    source VARCHAR NOT NULL,
    file_id BIGINT NOT NULL,
    file_path VARCHAR NOT NULL,
    batch_date DATE,
    row_number BIGINT NOT NULL,
    rule VARCHAR NOT NULL,
    rules VARCHAR NOT NULL,
    original_row VARCHAR NOT NULL,
    load_id VARCHAR,
    quarantined_at TIMESTAMPTZ NOT NULL
)"""

LEDGER_DDL = """
CREATE TABLE IF NOT EXISTS raw.ingestion_ledger (
    file_id BIGINT NOT NULL,
    source VARCHAR NOT NULL,
    file_path VARCHAR NOT NULL,
    content_sha256 VARCHAR NOT NULL,
    size_bytes BIGINT NOT NULL,
    format VARCHAR,
    encoding VARCHAR,
    compression VARCHAR,
    batch_date DATE,
    status VARCHAR NOT NULL,
    rows_read BIGINT NOT NULL,
    rows_loaded BIGINT NOT NULL,
    rows_quarantined BIGINT NOT NULL,
    error VARCHAR,
    load_id VARCHAR,
    started_at TIMESTAMPTZ NOT NULL,
    finished_at TIMESTAMPTZ NOT NULL
)"""


# Content hashes of landing files by path and stamp (size, modification time, inode change time, inode): a file
# whose path and stamp match is not read again to hash it (orchestration.ingest.core._content_hash). A cache:
# dropping it only makes the next run hash every file again.
HASH_CACHE_DDL = """
CREATE TABLE IF NOT EXISTS raw.landing_hash_cache (
    source VARCHAR NOT NULL,
    file_path VARCHAR NOT NULL,
    size_bytes BIGINT NOT NULL,
    modified_ns BIGINT NOT NULL,
    changed_ns BIGINT NOT NULL,
    inode UBIGINT NOT NULL,
    content_sha256 VARCHAR NOT NULL
)"""

# How raw rows' `_row_hash` is computed (row_hash_expr), with the DuckDB version that computed it: a warehouse
# whose raw rows were hashed another way, or by another DuckDB version, has them hashed again before a run
# loads more (orchestration.ingest.core.ensure_raw_schema), so that identical contents share the fingerprint
# whenever they were loaded.
ROW_HASH_SCHEME = "hash64-typed-bigint-v2"  # v1: the same hash as 16 hex digits (VARCHAR)
ROW_HASH_SCHEME_DDL = """
CREATE TABLE IF NOT EXISTS raw.row_hash_scheme (
    scheme VARCHAR NOT NULL,
    duckdb_version VARCHAR NOT NULL,
    recorded_at TIMESTAMPTZ NOT NULL
)"""


def row_hash_expr(c: SourceContract, ref=t) -> str:
    """`_row_hash` of a row: DuckDB's 64-bit `hash` of the typed values of every contract column in contract
    order, as a signed BIGINT (the unsigned hash minus 2^63: every hash keeps its own value, and the type is
    one that Spark, Parquet readers and BI tools all have). Identical contents (identical re-deliveries, in any
    file format) share it. It is a fingerprint, not collision-free: DuckDB hashes a text 8 bytes at a time, and
    texts that differ only in the last byte of two or more of those blocks collide about once in 256 (a review
    showed two versions of an order sharing it). Nothing relies on it to tell versions apart: staging and the
    event_id_conflicts test compare every contract column (dbt_project/macros/raw_contents.sql). `ref(name)`
    is the SQL of a column's typed value (the judge's t__ column, or the raw table's own column when a
    warehouse is hashed again). ~35 ns a row on one thread; as 16 hex digits (scheme v1) it was ~130 ns, and
    the 16-character text cost the part and the raw insert more again (1M customers, the three sources'
    ingestion 46.75 / 48.40 s -> 45.33 / 45.38 s, alternated); md5 of the row as JSON took 0.8-1.3 us. DuckDB does not
    promise its hash across versions, hence ROW_HASH_SCHEME's version check."""
    return "CAST(CAST(hash(" + ", ".join(ref(col.name) for col in c.columns) + ") AS HUGEINT) - 9223372036854775808 AS BIGINT)"


# ------------------------------------------------------------------------------------------------- values
def is_placeholder(expr: str, placeholders: tuple[str, ...]) -> str:
    """SQL: the (trimmed) text `expr` is a placeholder (SPEC §3), compared lower-cased; NULL-safe → FALSE."""
    return f"coalesce(lower({expr}) IN {sql_list(placeholders)} OR {all_zeros(expr)}, FALSE)"


def all_zeros(expr: str) -> str:
    """SQL: `expr` matches ALL_ZEROS_PATTERN (one or more '0' and nothing else), without a regex: it is
    evaluated for every identifier value of every row, and the regex was a sixth of the judging statement's
    time. NULL for NULL, as regexp_full_match. [tests/test_ingest_rules.py checks both agree]"""
    return f"(length({expr}) > 0 AND ltrim({expr}, '0') = '')"


def trimmed(expr: str) -> str:
    """`expr` without TRIM_CHARS at either end. trim() with a character set costs several times a plain read,
    so it runs only where the first or last character is one of them (most values: neither)."""
    return (f"(CASE WHEN contains({lit(TRIM_CHARS)}, {expr}[1]) OR contains({lit(TRIM_CHARS)}, {expr}[-1]) "
            f"THEN trim({expr}, {lit(TRIM_CHARS)}) ELSE {expr} END)")


# A delivered text that means "no value" in every column and every format (a CSV's empty field, a JSON null and
# a Parquet null are NULL already): the empty text, `\N` (exactly: the NULL of MySQL's, Hive's and PostgreSQL's
# text exports, `SELECT ... INTO OUTFILE`, `COPY ... TO`) and `null` in any case (SQL Server's and many tools'
# exports write `NULL`). Such a value is missing, as an empty field is: a required column's `required` rule, an
# optional column's default, no identifier. Compared after trimming (` NULL ` is one); `\n` is text.
NULL_MARKERS = ("", "\\N", "null")


def no_null_marker(expr: str) -> str:
    """SQL: the text `expr`, or NULL where it is one of NULL_MARKERS. A text longer than four bytes is none of
    them, and most values are longer: they pay one length test."""
    return (f"(CASE WHEN strlen({expr}) > 4 THEN {expr} "
            f"WHEN {expr} = '' OR {expr} = {lit(NULL_MARKERS[1])} OR lower({expr}) = 'null' THEN NULL ELSE {expr} END)")


def delivered_text(src: str | None, src_type: str | None) -> str:
    """The delivered value as text, trimmed; a null marker is still its text (no_null_marker takes it to NULL, a
    layer up in the judge, so that its reads of the text read a column, not the trimming again). A whole number
    in a Parquet float column is its integer text, as CSV and JSON deliver it: pandas writes an integer column
    with gaps as float64, and an id 123.0 read as "123.0" never linked to "123"; here, not in the typed value, so
    that the placeholder checks see the text that loads (-1.0 is the placeholder -1, a review found it loaded as
    an identifier and dropped in staging)."""
    if src is None:
        return "CAST(NULL AS VARCHAR)"
    if src_type == "VARCHAR":
        return trimmed(q(src))
    if _base(src_type) in _FLOAT_TYPES:
        x = q(src)
        text = (f"(CASE WHEN isfinite({x}) AND {x} = trunc({x}) AND abs({x}) < 9007199254740992 "
                f"THEN CAST(CAST({x} AS BIGINT) AS VARCHAR) ELSE CAST({x} AS VARCHAR) END)")
        return trimmed(text)
    return trimmed(f"CAST({q(src)} AS VARCHAR)")


def _base(src_type: str | None) -> str:
    return (src_type or "VARCHAR").split("(")[0].strip().upper()


def _cents_of_double(v: str, sqlt: str) -> str:
    """SPEC §2's rule for a float amount `v` (a DOUBLE): within 1e-9 of a cent value it is that value, else NULL."""
    return f"(CASE WHEN isfinite({v}) AND abs({v} - round({v}, 2)) <= 1e-9 THEN TRY_CAST(round({v}, 2) AS {sqlt}) END)"


def typed_expr(col: Column, src: str | None, src_type: str | None, placeholders: tuple[str, ...]) -> str:
    """SQL for the typed value of `col`; reads ``d__<col>`` (text) and, for typed Parquet columns, the source."""
    dv = d(col.name)
    sqlt = _CHECK_TYPES.get(col.type, SQL_TYPES[col.type])
    base = _base(src_type)
    x = q(src) if src is not None else None
    if col.type == "string":
        return dv
    if col.type == "enum":
        return f"lower({dv})"
    if col.type == "phone":
        # full-width digits, plus, hyphen and brackets (全角, as Chinese input methods type them) read as ASCII;
        # translate() only where the text has a non-ASCII character (more bytes than characters): it costs
        # ~1 us a value, twice the rest of the phone's judging, and almost every phone is ASCII
        ascii_ = (f"(CASE WHEN strlen({dv}) = length({dv}) THEN {dv} "
                  f"ELSE translate({dv}, {lit(FULL_WIDTH_PHONE)}, {lit(ASCII_PHONE)}) END)")
        stripped = f"regexp_replace({ascii_}, {lit(PHONE_STRIP)}, '', 'g')"
        norm = f"(CASE WHEN regexp_full_match({stripped}, {lit(PHONE_PREFIX)}) THEN right({stripped}, 11) ELSE {stripped} END)"
        # a phone that is all zeros once normalised (`+86 000-0000-0000`) is the all-zeros placeholder: kept as
        # its zeros, which staging cleans away like `00000000000`
        return (
            f"(CASE WHEN regexp_full_match({norm}, {lit(MAINLAND_MOBILE_PATTERN)}) THEN {norm} "
            f"WHEN {all_zeros(norm)} THEN {norm} "
            f"WHEN {is_placeholder(dv, placeholders)} THEN {dv} END)"
        )
    if col.type == "timestamp":
        # a typed Parquet value: from EARLIEST_YEAR on, as a Shanghai wall-clock time (what the text's year is)
        if x is not None and base in ("TIMESTAMP", "TIMESTAMP_NS", "TIMESTAMP_MS", "TIMESTAMP_S", "DATE", "DATETIME"):
            # nanoseconds are cut to the microsecond, as a text's digits and a UTC-adjusted Parquet value are:
            # DuckDB's cast rounds, so 23:59:59.999999999 (an end-of-day value) was the next day's 00:00
            ts = f"make_timestamp(epoch_ns({x}) // 1000)" if base == "TIMESTAMP_NS" else f"CAST({x} AS TIMESTAMP)"
            conv = (f"(CASE WHEN {ts} >= TIMESTAMP '{EARLIEST_YEAR}-01-01' "
                    f"THEN timezone({lit(TIMEZONE)}, {ts}) END)")
        elif x is not None and (base.startswith("TIMESTAMP WITH TIME ZONE") or base == "TIMESTAMPTZ"):
            conv = (f"(CASE WHEN timezone({lit(TIMEZONE)}, CAST({x} AS TIMESTAMPTZ)) >= TIMESTAMP '{EARLIEST_YEAR}-01-01' "
                    f"THEN CAST({x} AS TIMESTAMPTZ) END)")
        else:
            conv = f"(CASE WHEN regexp_full_match({dv}, {lit(TIMESTAMP_PATTERN)}) THEN TRY_CAST({dv} AS TIMESTAMPTZ) END)"
    elif col.type == "decimal":
        if x is not None and base == "DECIMAL":
            conv = f"(CASE WHEN {x} = round({x}, 2) THEN TRY_CAST({x} AS {sqlt}) END)"
        elif x is not None and base in _FLOAT_TYPES:
            conv = _cents_of_double(f"CAST({x} AS DOUBLE)", sqlt)
        elif x is not None and base in _INT_TYPES:
            conv = f"TRY_CAST({x} AS {sqlt})"
        elif x is not None and base == JSON_NUMBER:
            conv = (f"(CASE WHEN regexp_full_match({dv}, {lit(DECIMAL_PATTERN)}) THEN TRY_CAST({dv} AS {sqlt}) "
                    f"ELSE {_cents_of_double(f'TRY_CAST({dv} AS DOUBLE)', sqlt)} END)")
        else:
            conv = f"(CASE WHEN regexp_full_match({dv}, {lit(DECIMAL_PATTERN)}) THEN TRY_CAST({dv} AS {sqlt}) END)"
    elif col.type == "integer":
        if x is not None and base in _INT_TYPES:
            conv = f"TRY_CAST({x} AS {sqlt})"
        elif x is not None and (base in _FLOAT_TYPES or base == "DECIMAL"):
            conv = f"(CASE WHEN isfinite(CAST({x} AS DOUBLE)) AND {x} = trunc({x}) THEN TRY_CAST({x} AS {sqlt}) END)"
        else:
            conv = (
                f"(CASE WHEN regexp_full_match({dv}, {lit(INTEGER_PATTERN)}) "
                f"THEN TRY_CAST(regexp_replace({dv}, '\\.0*$', '') AS {sqlt}) END)"
            )
    else:  # pragma: no cover - ColumnType is closed
        raise NotImplementedError(f"column type {col.type!r}")
    if col.type in _CHECK_TYPES:
        conv = f"CAST({conv} AS {SQL_TYPES[col.type]})"
    if col.default is not None:
        return f"(CASE WHEN {dv} IS NULL THEN CAST({lit(col.default)} AS {SQL_TYPES[col.type]}) ELSE {conv} END)"
    return conv


# ------------------------------------------------------------------------------------------------- rules
def batch_limit_expr(batch_date_sql: str) -> str:
    """batch date + 2 days, 00:00 Asia/Shanghai, as TIMESTAMPTZ."""
    return f"timezone({lit(TIMEZONE)}, CAST(CAST({batch_date_sql} AS DATE) + 2 AS TIMESTAMP))"


def identifier_count_expr(rule: Rule, placeholders: tuple[str, ...], phones: tuple[str, ...] = ()) -> str:
    """SQL: how many of the rule's columns hold an identifier (present, not a placeholder); never NULL.

    A phone column (`phones`) is also no identifier where its normalised value is a placeholder: staging cleans
    the phone raw keeps, normalised (`+86 138-0013-8000` is `13800138000`, a block-list value there), and a row
    ingestion loads must keep an identifier in staging (a review found such a row loaded and then left out).

    One CASE per column, not ``CAST(x IS NOT NULL AND NOT <placeholder> AS INTEGER)``: DuckDB plans the
    placeholder's IN list outside a CASE as a join per column, and the CASE form costs less than half
    (1M × 365 channel events, five identifier columns: ~300 → ~150 ns a row on one thread)."""
    # a normalised phone is 11 digits: only placeholders of that form can equal one (none by default, so the
    # default judge pays nothing for it; all zeros is never a mainland mobile)
    phone_placeholders = tuple(p for p in placeholders if re.fullmatch(MAINLAND_MOBILE_PATTERN, p))
    parts = [
        f"(CASE WHEN {d(c)} IS NULL THEN 0 WHEN {is_placeholder(d(c), placeholders)} THEN 0 "
        + (f"WHEN {t(c)} IN {sql_list(phone_placeholders)} THEN 0 " if c in phones and phone_placeholders else "")
        + (f"WHEN {all_zeros(t(c))} THEN 0 " if c in phones else "")
        + "ELSE 1 END)"
        for c in rule.columns
    ]
    return "(" + " + ".join(parts) + ")"


def unless_expr(rule: Rule) -> str:
    if not rule.unless:
        return "FALSE"
    col, values = rule.unless
    return f"coalesce(lower({d(col)}) IN {sql_list(values)}, FALSE)"


def broken_expr(rule: Rule, contract: SourceContract, placeholders: tuple[str, ...], batch_limit: str,
                identifier_count: str | None = None) -> str:
    """SQL boolean: the row breaks `rule` (never NULL). `identifier_count`: for an ``any_identifier`` rule, a
    column that already holds identifier_count_expr(rule) (the judge computes it once, for the flag and the GX
    frame); without it the count is computed here."""
    k = rule.kind
    cols = rule.columns
    if k == "well_formed":
        e = f"{MALFORMED} IS NOT NULL"
    elif k == "required":
        e = f"{d(cols[0])} IS NULL"
    elif k == "type":
        e = f"{d(cols[0])} IS NOT NULL AND {t(cols[0])} IS NULL"
    elif k == "in_set":
        values = rule.values or contract.column(cols[0]).values
        e = f"{d(cols[0])} IS NOT NULL AND lower({d(cols[0])}) NOT IN {sql_list(values)}"
    elif k == "non_negative":
        e = f"{t(cols[0])} < 0"
    elif k == "not_after":
        e = f"{t(cols[0])} > {t(cols[1])}"
    elif k == "required_when":
        e = f"{d(cols[0])} IS NULL AND lower({d(cols[1])}) IN {sql_list(rule.values)}"
    elif k == "refund_matches_status":
        refund, gross, discount, status = (t(c) for c in cols)
        net = f"({gross} - {discount})"
        e = (
            f"{refund} IS NOT NULL AND {gross} IS NOT NULL AND {discount} IS NOT NULL AND {status} IS NOT NULL AND "
            f"(CASE lower({status}) WHEN 'refunded' THEN {refund} <> {net} "
            f"WHEN 'partially_refunded' THEN NOT ({refund} > 0 AND {refund} < {net}) "
            f"ELSE {refund} <> 0 END)"
        )
    elif k == "any_identifier":
        e = (f"{identifier_count or identifier_count_expr(rule, placeholders, contract.phone_columns)} = 0 "
             f"AND NOT {unless_expr(rule)}")
    elif k == "before_batch_limit":
        e = "(" + " OR ".join(f"{t(c)} >= {batch_limit}" for c in cols) + ")"
    else:
        raise NotImplementedError(f"rule kind {k!r} (rule {rule.name!r} of {contract.name}) is not implemented by ingestion")
    return f"coalesce({e}, FALSE)"


def helper_name(rule: Rule, what: str) -> str:
    return "h__" + re.sub(r"[^0-9a-zA-Z]+", "_", rule.name).strip("_") + "__" + what


def frame_columns(contract: SourceContract, placeholders: tuple[str, ...], batch_limit: str) -> list[tuple[str, str]]:
    """(frame column name, SQL over the judged columns) for the GX validation frame: only what the rules need."""
    typed: list[str] = [contract.key]
    delivered: list[str] = []
    helpers: dict[str, str] = {}
    for r in contract.rules:
        cols = r.columns
        if r.kind == "well_formed":
            # BIGINT 0/1 (see any_identifier); the record's text is in the quarantine, not in the frame
            helpers[helper_name(r, "flag")] = f"CAST({MALFORMED} IS NOT NULL AS BIGINT)"
        elif r.kind == "required":
            delivered.append(cols[0])
        elif r.kind == "type":
            typed.append(cols[0])
            delivered.append(cols[0])
        elif r.kind in ("in_set", "non_negative"):
            typed.append(cols[0])
        elif r.kind == "not_after":
            typed += list(cols)
        elif r.kind == "required_when":
            delivered.append(cols[0])
            typed.append(cols[1])
        elif r.kind == "refund_matches_status":
            typed += list(cols)
            helpers["h__net_amount"] = f"({t(cols[1])} - {t(cols[2])})"
        elif r.kind == "any_identifier":
            # BIGINT: GX vectorises "between" on int64 columns only (int32 goes row by row in Python)
            helpers[helper_name(r, "count")] = f"CAST({identifier_count_expr(r, placeholders, contract.phone_columns)} AS BIGINT)"
            if r.unless:
                typed.append(r.unless[0])
        elif r.kind == "before_batch_limit":
            typed += list(cols)
            helpers["h__batch_limit"] = batch_limit
        else:
            raise NotImplementedError(f"rule kind {r.kind!r} (rule {r.name!r} of {contract.name}) is not implemented by ingestion")
    out: list[tuple[str, str]] = [("_file_id", "_fid"), ("_row_number", "_rn")]
    for c in contract.column_names:  # contract order
        if c in typed:
            out.append((c, t(c)))
        if c in delivered:
            out.append((f"{c}__delivered", d(c)))
    out += list(helpers.items())
    return out
