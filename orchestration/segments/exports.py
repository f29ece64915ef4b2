"""File exports of segments (SPEC §5, §6): `exports/<segment>/<export_id>/` and `exports/<segment>/LATEST`.

An export is written into a hidden folder (`.tmp-<export_id>`), checked (row counts, no suppressed customer,
no clear phone), described by manifest.json (written last inside it), then renamed into place in one step;
LATEST is replaced atomically after that. A reader that lists `exports/<segment>/` therefore sees either no
export folder or a complete one, and LATEST always names a complete export. Old exports are renamed to a
hidden name before they are deleted, for the same reason.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

from orchestration.identity.keys import key_registry_id
from orchestration.segments.definitions import EXPLAIN_COLUMNS, ExportOptions, SegmentDefinition
from orchestration.segments.membership import DIM_CUSTOMERS, MEMBERS_TABLE, REMOVE_REASON_SQL, remove_reason_joins
from orchestration.warehouse import path_sql, table_exists

LATEST = "LATEST"
MANIFEST = "manifest.json"
EXTENSIONS = {"csv": "csv", "parquet": "parquet", "jsonl": "jsonl"}
BOM = b"\xef\xbb\xbf"
# How the JSON Lines files write instants (the manifest says so): `2024-06-30T12:00:00+08:00` (_rfc3339_instants)
JSONL_INSTANTS = "rfc3339"
# What a CSV manifest says of its formula-like campaigns (_neutralised): a LATEST without it is written again once
CSV_FORMULAS = "neutralised"
# Columns of every members / adds row (stable, SPEC §5), in this order.
ROW_COLUMNS = ("segment", "segment_version", "customer_key", "contact_channel", "contact_handle", "phone_sha256",
               *EXPLAIN_COLUMNS, "computed_at", "data_end_at")
# A remove names the customer as the previous export did: its key and contact fields, and why it left (`reason`:
# merged, no_longer_a_customer, opted_out, unreachable or left_segment; export_segment): a tool that keeps lists of
# its own must stop contacting an opted-out customer everywhere (PIPL), not only in this segment.
REMOVE_COLUMNS = ("segment", "segment_version", "customer_key", "contact_channel", "contact_handle", "phone_sha256",
                  "computed_at", "data_end_at", "reason")
# The text columns of an export row, where a clear phone could hide; every other column is typed. Identifier
# columns hold hex and base64-like ids (openids, SHA-256): a mobile counts there only between non-hex
# characters, or 1 in ~50 hashes would look like one. The free text (a campaign, masked in dim_customers) is
# searched for every spelling that dbt's privdom_mask_phones masks: full-width digits, +86 / 86, spaces, dots,
# dashes or ideographic spaces between the groups, letters beside.
TEXT_COLUMNS = ("contact_channel", "contact_handle", "phone_sha256", "acquisition_campaign", "reachable_channels", "acquisition_channel")
IDENTIFIER_TEXT_COLUMNS = TEXT_COLUMNS[:3]
CLEAR_PHONE_REGEX = r"(^|[^0-9a-fA-F])1[3-9][0-9]{9}([^0-9a-fA-F]|$)"
PHONE_IN_TEXT_REGEX = r"(^|[^0-9０-９])([+＋]?(86|８６)[ .　-]?)?[1１][3-9３-９][0-9０-９][ .　-]?[0-9０-９]{4}[ .　-]?[0-9０-９]{4}([^0-9０-９]|$)"


class ExportError(RuntimeError):
    """An export could not be written or failed its own verification; nothing of it was published."""


@dataclass
class ExportResult:
    segment: str
    export_id: str
    path: Path
    rows: int
    adds: int
    removes: int
    previous_export_id: str | None
    manifest: dict = field(repr=False)
    unchanged: bool = False  # nothing differs from LATEST: no new export was written, LATEST stands
    prune_error: str | None = None  # old exports beyond `keep` that could not be removed (the export stands)


def _inside(path: Path, root: Path) -> Path:
    """`path` resolved, refusing anything (a symlink, say) that leads outside `root`."""
    resolved = path.resolve()
    if resolved != root.resolve() and not resolved.is_relative_to(root.resolve()):
        raise ExportError(f"{path} resolves to {resolved}, outside the exports directory {root}: refusing to write there")
    return resolved


def _sql_path(path: Path) -> str:
    return "'" + str(path).replace("'", "''") + "'"


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def new_export_id(now: dt.datetime, previous: str | None) -> str:
    """`YYYYMMDDTHHMMSSZ-<6 hex>`; strictly after `previous`, so ids sort in export order."""
    stamp = now.astimezone(dt.UTC).replace(microsecond=0)
    if previous:
        try:
            before = dt.datetime.strptime(previous[:16], "%Y%m%dT%H%M%SZ").replace(tzinfo=dt.UTC)
        except ValueError:
            before = None
        if before is not None and stamp <= before:
            stamp = before + dt.timedelta(seconds=1)
    return f"{stamp:%Y%m%dT%H%M%SZ}-{secrets.token_hex(3)}"


def latest_export_id(segment_dir: Path) -> str | None:
    try:
        value = (segment_dir / LATEST).read_text(encoding="utf-8").strip()
    except FileNotFoundError:
        return None
    return value or None


def read_manifest(export_dir: Path) -> dict:
    return json.loads((export_dir / MANIFEST).read_text(encoding="utf-8"))


def _read_previous(con: duckdb.DuckDBPyConnection, export_dir: Path, segment: str) -> None:
    """Load the previous export's members (key and contact fields, as text) into temp table previous_rows."""
    manifest = read_manifest(export_dir)
    if manifest["row_count"] == 0:
        con.execute(
            "create or replace temp table previous_rows (customer_key varchar, contact_channel varchar, contact_handle varchar, phone_sha256 varchar)"
        )
        return
    members = {f["format"]: export_dir / f["name"] for f in manifest["files"] if f["kind"] == "members"}
    cols = ", ".join(f"cast({c} as varchar) as {c}" for c in ("customer_key", "contact_channel", "contact_handle", "phone_sha256"))
    fmt = next((f for f in ("parquet", "jsonl", "csv") if f in members), None)
    if fmt is None:
        raise ExportError(f"{export_dir}: the previous export of {segment!r} has no members file to diff against")
    con.execute(f"create or replace temp table previous_rows as select {cols} from {_reader(members[fmt], fmt)}")


def _merge_survivors(con: duckdb.DuckDBPyConnection) -> str:
    """SQL for the keys that keys of previous_rows were merged into (the key registry keeps `merged_into`
    pointing at the active end of a chain); no rows where the warehouse has no registry."""
    if not table_exists(con, "identity_state.customer_keys"):
        return "select cast(null as varchar) where false"
    return ("select k.merged_into from identity_state.customer_keys k where k.status = 'merged' "
            "and k.customer_key in (select customer_key from previous_rows)")


# CSV cells a spreadsheet would run as a formula (OWASP's "CSV injection"): the CSV is written with a BOM so that
# Excel opens it by double-click, and a campaign is free text from outside (share-link and QR parameters). Only
# the free-text column is neutralised, with a leading apostrophe, and only in CSV: identifiers stay exact (the next
# export diffs against them), money is numeric, Parquet and JSON Lines carry every value as it is.
FORMULA_COLUMNS = ("acquisition_campaign",)
FORMULA_START = r"^[=+\-@\t\r]"


def _neutralised(query: str, columns: Sequence[str]) -> str:
    cells = ", ".join(
        f"case when regexp_matches({c}, '{FORMULA_START}') then concat(chr(39), {c}) else {c} end as {c}" for c in columns
    )
    return f"select * replace ({cells}) from ({query})" if columns else query


def _copy(con: duckdb.DuckDBPyConnection, query: str, params: list, path: Path, fmt: str, csv_bom: bool,
          formula_columns: Sequence[str] = ()) -> None:
    if fmt == "parquet":
        con.execute(f"copy ({query}) to {_sql_path(path)} (format parquet, compression zstd)", params)
    elif fmt == "jsonl":
        con.execute(f"copy ({_rfc3339_instants(con, query, params)}) to {_sql_path(path)} (format json)", params)
    else:
        target = path.with_name(path.name + ".nobom") if csv_bom else path
        con.execute(f"copy ({_neutralised(query, formula_columns)}) to {_sql_path(target)} (format csv, header true)", params)
        if csv_bom:  # DuckDB writes no BOM; Excel needs one to open Chinese text as UTF-8
            with open(path, "wb") as out, open(target, "rb") as src:
                out.write(BOM)
                shutil.copyfileobj(src, out, 1 << 20)
            target.unlink()


def _rfc3339_instant_sql(column: str) -> str:
    """A TIMESTAMPTZ as RFC 3339 text in the session's time zone: `2024-01-05T16:16:48+08:00`, with `.ffffff` only
    when there is a fraction of a second. DuckDB's own text (what its JSON writer gives) is
    `2024-01-05 16:16:48+08`, whose offset strict parsers refuse (Java's OffsetDateTime, JavaScript's Date)."""
    col = f'"{column}"'
    text = (f"strftime({col}, case when microsecond({col}) % 1000000 = 0 then '%Y-%m-%dT%H:%M:%S%z' "
            f"else '%Y-%m-%dT%H:%M:%S.%f%z' end)")
    # %z is `+08` for a whole-hour offset, `+0530` otherwise
    return (f"regexp_replace(regexp_replace({text}, '([+-][0-9]{{2}})([0-9]{{2}})$', '\\1:\\2'), "
            f"'([+-][0-9]{{2}})$', '\\1:00')")


def _rfc3339_instants(con: duckdb.DuckDBPyConnection, query: str, params: list) -> str:
    """`query` with its TIMESTAMPTZ columns as RFC 3339 text (for JSON Lines, which has no timestamp type)."""
    described = con.execute(f"select * from ({query}) limit 0", params).description
    instants = [name for name, kind, *_ in described if str(kind) == "TIMESTAMP WITH TIME ZONE"]
    if not instants:
        return query
    replaced = ", ".join(f'{_rfc3339_instant_sql(c)} as "{c}"' for c in instants)
    return f"select * replace ({replaced}) from ({query})"


def _reader(path: Path, fmt: str) -> str:
    """A DuckDB table function reading an export file back (CSV as text, so nothing is reinterpreted)."""
    if fmt == "parquet":
        return f"read_parquet({path_sql(path)})"
    if fmt == "jsonl":
        return f"read_json({path_sql(path)}, format = 'newline_delimited')"
    return f"read_csv({path_sql(path)}, header = true, all_varchar = true)"


def _rows_in(con: duckdb.DuckDBPyConnection, path: Path, fmt: str) -> int:
    if fmt == "jsonl":  # read_json would skip nothing, but count lines to catch a torn last line too
        with open(path, "rb") as f:
            return sum(1 for line in f if line.strip())
    return con.execute(f"select count(*) from {_reader(path, fmt)}").fetchone()[0]


def _keys_in(path: Path, fmt: str) -> str:
    return f"select cast(customer_key as varchar) as customer_key from {_reader(path, fmt)}"


def _verify(con: duckdb.DuckDBPyConnection, tmp: Path, files: list[dict], expected: dict[str, int],
            copies: dict[str, str] | None = None) -> None:
    """Read the written files back: every file has the planned row count; in one file per kind (Parquet when
    written: the fastest to read; the formats are written from one query) no suppressed or unknown customer
    in members or adds, and no clear phone, counted in the same scan as its rows. A file in `copies` (name →
    the file it is a byte copy of, already verified) is not read again. Raises ExportError (and nothing is
    published) otherwise."""
    copies = copies or {}
    order = {"parquet": 0, "csv": 1, "jsonl": 2}
    originals = [f for f in files if f["name"] not in copies]
    deep = {kind: min((f for f in originals if f["kind"] == kind), key=lambda f: order[f["format"]])
            for kind in {f["kind"] for f in originals}}
    for f in originals:
        path = tmp / f["name"]
        if deep[f["kind"]] is not f or expected[f["kind"]] == 0:  # (an empty JSON Lines file has no columns to read)
            rows = _rows_in(con, path, f["format"])
            if rows != expected[f["kind"]]:
                raise ExportError(f"{f['name']}: {rows} rows written, {expected[f['kind']]} expected")
            continue
        if f["format"] == "jsonl":  # lines first: a torn last line is a wrong count, not a parse error
            rows = _rows_in(con, path, f["format"])
            if rows != expected[f["kind"]]:
                raise ExportError(f"{f['name']}: {rows} rows written, {expected[f['kind']]} expected")
        ids = ", ".join(f"cast(t.{c} as varchar)" for c in IDENTIFIER_TEXT_COLUMNS)
        leak = f"regexp_matches(concat_ws('|', {ids}), ?)"
        if f["kind"] != "removes":  # a removes file carries the identifiers only
            free = ", ".join(f"cast(t.{c} as varchar)" for c in TEXT_COLUMNS if c not in IDENTIFIER_TEXT_COLUMNS)
            leak = f"({leak} or regexp_matches(concat_ws('|', {free}), '{PHONE_IN_TEXT_REGEX}'))"
        try:
            rows, bad, leaks = _scan(con, path, f, leak)
        except duckdb.Error as exc:
            raise ExportError(f"{f['name']}: cannot be read back ({str(exc).splitlines()[0]})") from None
        if rows != expected[f["kind"]]:
            raise ExportError(f"{f['name']}: {rows} rows written, {expected[f['kind']]} expected")
        if bad:
            raise ExportError(f"{f['name']}: {bad} opted-out, unreachable or unknown customers; export withheld")
        if leaks:
            raise ExportError(f"{f['name']}: {leaks} rows hold what looks like a clear mobile number; export withheld")


def _scan(con: duckdb.DuckDBPyConnection, path: Path, f: dict, leak: str) -> tuple[int, int, int]:
    """(rows, suppressed or unknown customers, rows matching the clear-phone pattern) of one file, in one scan.
    A removes file names customers who left the segment: only its leak count applies."""
    if f["kind"] == "removes":
        rows, leaks = con.execute(
            f"select count(*), count(*) filter (where {leak}) from {_reader(path, f['format'])} t", [CLEAR_PHONE_REGEX]
        ).fetchone()
        return rows, 0, leaks
    # dim_customers has one row per customer_key (a dbt test), so the join adds no rows
    return con.execute(
        f"""select count(*),
                   count(*) filter (where d.customer_key is null or d.opted_out or not d.is_reachable),
                   count(*) filter (where {leak})
            from {_reader(path, f['format'])} t
            left join {DIM_CUSTOMERS} d on d.customer_key = cast(t.customer_key as varchar)""",
        [CLEAR_PHONE_REGEX],
    ).fetchone()


def export_segment(
    con: duckdb.DuckDBPyConnection,
    exports_dir: Path,
    definition: SegmentDefinition,
    options: ExportOptions,
    *,
    now: dt.datetime | None = None,
) -> ExportResult:
    """Write one export of a segment from segments.segment_members and publish it atomically."""
    now = now or dt.datetime.now(dt.UTC)
    formats = definition.formats or options.formats
    exports_dir.mkdir(parents=True, exist_ok=True)
    segment_dir = _inside(exports_dir / definition.name, exports_dir)
    segment_dir.mkdir(exist_ok=True)
    previous_id = latest_export_id(segment_dir)
    if previous_id is not None and not (segment_dir / previous_id / MANIFEST).is_file():
        raise ExportError(f"{segment_dir / LATEST} names {previous_id!r}, which is not a complete export")
    _remove_leftovers(segment_dir, previous_id)
    digest = _members_digest(con, definition.name)
    registry = key_registry_id(con)
    if previous_id is not None:
        previous = read_manifest(segment_dir / previous_id)
        _require_same_registry(previous, registry, segment_dir / previous_id)
        if _same_export(previous, definition, formats, options, digest):
            pruned = _prune_after_publishing(segment_dir, keep=options.keep)  # a lowered `keep` applies without new data too
            return ExportResult(definition.name, previous_id, segment_dir / previous_id, previous["row_count"], 0, 0,
                                previous.get("previous_export_id"), previous, unchanged=True, prune_error=pruned)
    export_id = new_export_id(now, previous_id)
    tmp = segment_dir / f".tmp-{export_id}"
    final = segment_dir / export_id
    tmp.mkdir()
    try:
        head = con.execute(
            f"select max(segment_version), max(computed_at), max(data_end_at), count(*) from {MEMBERS_TABLE} where segment = ?",
            [definition.name],
        ).fetchone()
        _, computed_at, data_end_at, rows = head
        if rows == 0:  # an empty segment still states when it was computed and on which data
            computed_at, data_end_at = con.execute(
                "select computed_at, data_end_at from segments.segment_definitions where segment = ?", [definition.name]
            ).fetchone()
        if previous_id is not None:
            _read_previous(con, segment_dir / previous_id, definition.name)
        else:
            con.execute(
                "create or replace temp table previous_rows (customer_key varchar, contact_channel varchar, contact_handle varchar, phone_sha256 varchar)"
            )
        select_cols = ", ".join(f"m.{c}" for c in ROW_COLUMNS)
        members_q = f"select {select_cols} from {MEMBERS_TABLE} m where m.segment = ? order by m.customer_key"
        # adds: new members, members into whom a member of the previous export merged (SPEC §5: a merge shows
        # as a remove of the old key and an add of the surviving one), and members whose contact changed
        adds_q = (
            f"select {select_cols} from {MEMBERS_TABLE} m left join previous_rows p on p.customer_key = m.customer_key "
            "where m.segment = ? and (p.customer_key is null or m.contact_channel is distinct from p.contact_channel "
            "or m.contact_handle is distinct from p.contact_handle or m.phone_sha256 is distinct from p.phone_sha256 "
            f"or m.customer_key in ({_merge_survivors(con)})) order by m.customer_key"
        )
        # why each left (membership.REMOVE_REASON_SQL). Computed once into a temporary table (counted, then
        # copied once per format): the reasons join dim_customers and the key registry, ~0.2 s for 120k removes
        # among 1.25M customers.
        con.execute(
            "create or replace temp table export_removes as "
            f"with gone as (select p.* from previous_rows p where p.customer_key not in "
            f"(select customer_key from {MEMBERS_TABLE} where segment = ?)) "
            "select cast(? as varchar) as segment, cast(? as integer) as segment_version, p.customer_key, p.contact_channel, "
            "p.contact_handle, p.phone_sha256, cast(? as timestamptz) as computed_at, cast(? as timestamptz) as data_end_at, "
            f"{REMOVE_REASON_SQL} as reason "
            f"from gone p {remove_reason_joins(con, 'p.customer_key')}",
            [definition.name, definition.name, definition.version, computed_at, data_end_at],
        )
        removes_q = f"select {', '.join(REMOVE_COLUMNS)} from export_removes order by customer_key"
        plans = [
            ("members", definition.name, members_q, [definition.name]),
            ("adds", "adds", adds_q, [definition.name]),
            ("removes", "removes", removes_q, []),
        ]
        expected = {
            "members": rows,
            "adds": con.execute(f"select count(*) from ({adds_q})", [definition.name]).fetchone()[0],
            "removes": con.execute("select count(*) from export_removes").fetchone()[0],
        }
        files = []
        copies: dict[str, str] = {}
        for kind, stem, query, params in plans:
            for fmt in formats:
                name = f"{stem}.{EXTENSIONS[fmt]}"
                if kind == "adds" and expected["adds"] == expected["members"]:
                    # every member is new (a first export): the adds are the members, in the same order and
                    # columns, so the file is the members file byte for byte (1M customers: 141 MB of CSV for
                    # the largest segment, written and read back once instead of twice)
                    members_name = f"{definition.name}.{EXTENSIONS[fmt]}"
                    shutil.copyfile(tmp / members_name, tmp / name)
                    copies[name] = members_name
                else:
                    _copy(con, query, params, tmp / name, fmt, options.csv_bom,
                          FORMULA_COLUMNS if kind != "removes" else ())
                files.append({"name": name, "kind": kind, "format": fmt, "rows": expected[kind]})
        _verify(con, tmp, files, expected, copies)
        for f in files:
            path = tmp / f["name"]
            _fsync(path)
            f["bytes"] = path.stat().st_size
            f["sha256"] = _sha256(path)
        sha = {f["name"]: f["sha256"] for f in files}
        for copy, original in copies.items():
            if sha[copy] != sha[original]:
                raise ExportError(f"{copy}: differs from {original}, of which it is a copy; export withheld")
        manifest = {
            "segment": definition.name,
            "definition_version": definition.version,
            "purpose": definition.purpose,
            "campaign": definition.campaign,
            "rule": definition.rule,
            "export_id": export_id,
            "previous_export_id": previous_id,
            "exported_at": now.astimezone(dt.UTC).isoformat(),
            "computed_at": computed_at.isoformat() if computed_at else None,
            "data_end_at": data_end_at.isoformat() if data_end_at else None,
            "row_count": rows,
            "members_digest": digest,
            "key_registry": registry,
            "adds": expected["adds"],
            "removes": expected["removes"],
            "formats": list(formats),
            "csv_bom": options.csv_bom,
            **({"jsonl_instants": JSONL_INSTANTS} if "jsonl" in formats else {}),
            **({"csv_formulas": CSV_FORMULAS} if "csv" in formats else {}),
            "columns": {"members": list(ROW_COLUMNS), "adds": list(ROW_COLUMNS), "removes": list(REMOVE_COLUMNS)},
            "suppression": "opted-out and unreachable customers are never exported",
            "files": files,
        }
        manifest_tmp = tmp / (MANIFEST + ".tmp")
        manifest_tmp.write_text(json.dumps(manifest, indent=2, ensure_ascii=False, default=str) + "\n", encoding="utf-8")
        _fsync(manifest_tmp)
        os.replace(manifest_tmp, tmp / MANIFEST)
        _fsync(tmp)
        os.rename(tmp, final)  # the export appears complete, in one step
        _fsync(segment_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        con.execute("drop table if exists previous_rows")
        con.execute("drop table if exists export_removes")
    _write_latest(segment_dir, export_id)
    pruned = _prune_after_publishing(segment_dir, keep=options.keep)
    return ExportResult(definition.name, export_id, final, rows, expected["adds"], expected["removes"], previous_id,
                        manifest, prune_error=pruned)


def _prune_after_publishing(segment_dir: Path, keep: int) -> str | None:
    """_prune once LATEST names the export: a file-system error there (an old folder that cannot be removed) is
    no reason to call the export unpublished. Returns what went wrong, for the step to warn of, or None."""
    try:
        _prune(segment_dir, keep=keep)
    except OSError as exc:
        return f"old exports beyond keep = {keep} not removed from {segment_dir}: {exc}"
    return None


def _members_digest(con: duckdb.DuckDBPyConnection, segment: str) -> str:
    """What the segment's member rows hold, computed_at (wall clock) aside: count and XOR of row hashes, and
    the data end it was computed on (an empty segment has no rows to carry it)."""
    cols = ", ".join(c for c in ROW_COLUMNS if c != "computed_at")
    rows, xor = con.execute(
        f"select count(*), coalesce(bit_xor(hash({cols})), 0) from {MEMBERS_TABLE} where segment = ?", [segment]
    ).fetchone()
    end = con.execute("select max(data_end_at) from segments.segment_definitions where segment = ?", [segment]).fetchone()[0]
    return f"{rows}:{xor:016x}:{end.isoformat() if end else '-'}"


def _same_export(previous: dict, definition: SegmentDefinition, formats, options: ExportOptions, digest: str) -> bool:
    """An export now would repeat LATEST: same members (rows and values), definition, data end and files.

    Exports are idempotent so that a rerun on unchanged data (or the run after one killed mid-export) does not
    publish a copy whose adds and removes are empty. A run on new data always exports (its data end moved).
    The definition is its version and what the manifest says of it (purpose, campaign, rule): a rule edited
    without a new version, selecting the same members, left LATEST's manifest describing the old one.
    """
    said = lambda value: json.dumps(value, sort_keys=True, default=str)  # noqa: E731 (as the manifest holds it)
    return (
        previous.get("members_digest") == digest
        and previous.get("definition_version") == definition.version
        and said(previous.get("rule")) == said(definition.rule)
        and previous.get("purpose") == definition.purpose
        and previous.get("campaign") == definition.campaign
        and previous.get("formats") == list(formats)
        and previous.get("csv_bom") == options.csv_bom
        # a LATEST written with another text for instants in its JSON Lines (before RFC 3339) is written again
        and ("jsonl" not in formats or previous.get("jsonl_instants") == JSONL_INSTANTS)
        # and one whose CSV wrote formula-like campaigns as they came (diff review)
        and ("csv" not in formats or previous.get("csv_formulas") == CSV_FORMULAS)
    )


def _remove_leftovers(segment_dir: Path, latest: str | None) -> None:
    """What a process killed mid-export left: temporary and trash folders, a temporary LATEST, and a complete
    export that was renamed into place but never named by LATEST (newer than LATEST: never published)."""
    for leftover in [*segment_dir.glob(".tmp-*"), *segment_dir.glob(".trash-*")]:
        shutil.rmtree(leftover, ignore_errors=True)
    (segment_dir / f".{LATEST}.tmp").unlink(missing_ok=True)
    for export_id in complete_exports(segment_dir):
        if latest is None or export_id > latest:
            _discard(segment_dir, export_id)


def _discard(segment_dir: Path, export_id: str) -> None:
    """Remove a complete export: it disappears in one step (a rename), then is deleted."""
    trash = segment_dir / f".trash-{export_id}"
    os.rename(segment_dir / export_id, trash)
    shutil.rmtree(trash, ignore_errors=True)


def _write_latest(segment_dir: Path, export_id: str) -> None:
    tmp = segment_dir / f".{LATEST}.tmp"
    tmp.write_text(export_id + "\n", encoding="utf-8")
    _fsync(tmp)
    os.replace(tmp, segment_dir / LATEST)
    _fsync(segment_dir)


def complete_exports(segment_dir: Path) -> list[str]:
    """Export ids of the complete exports in a segment folder, oldest first."""
    if not segment_dir.is_dir():
        return []
    return sorted(p.name for p in segment_dir.iterdir() if p.is_dir() and not p.name.startswith(".") and (p / MANIFEST).is_file())


def _prune(segment_dir: Path, keep: int) -> None:
    latest = latest_export_id(segment_dir)
    ids = complete_exports(segment_dir)
    for export_id in ids[: max(0, len(ids) - keep)]:
        if export_id != latest:
            _discard(segment_dir, export_id)


def _require_same_registry(previous: dict, registry: str | None, previous_dir: Path) -> None:
    """Raise ExportError when the previous export was made with another key registry's customer keys (runbook
    review: a warehouse deleted and rebuilt from landing gave 186 of 520 keys to other people, and the next
    exports' adds and removes, reasons included, were computed key by key against the old export's people). An
    export from before manifests named their registry, or a warehouse without one, is taken as the same."""
    earlier = previous.get("key_registry")
    if earlier and registry and earlier != registry:
        raise ExportError(
            f"{previous_dir} was made with the customer keys of another key registry ({earlier}; this warehouse's is "
            f"{registry}): the warehouse was rebuilt or replaced, and its keys name other people. Restore "
            f"warehouse.duckdb from a backup, or move {previous_dir.parent} aside, and clear what destinations "
            "received from it, to begin this segment's exports anew"
        )


def export_all(
    con: duckdb.DuckDBPyConnection,
    exports_dir: Path,
    definitions: Sequence[SegmentDefinition],
    options: ExportOptions,
    now: dt.datetime | None = None,
) -> list[ExportResult]:
    now = now or dt.datetime.now(dt.UTC)
    return [export_segment(con, exports_dir, d, options, now=now) for d in definitions if d.enabled]


def export_freshness(con: duckdb.DuckDBPyConnection, exports_dir: Path, segment: str) -> dict:
    """Whether the segment's LATEST export was built from the warehouse's current data end (SPEC §5)."""
    current = con.execute(f"select max(data_end_at) from {DIM_CUSTOMERS}").fetchone()[0]
    segment_dir = exports_dir / segment
    latest = latest_export_id(segment_dir)
    if latest is None:
        return {"fresh": False, "latest": None, "export_data_end_at": None, "warehouse_data_end_at": current}
    manifest = read_manifest(segment_dir / latest)
    exported_end = dt.datetime.fromisoformat(manifest["data_end_at"]) if manifest["data_end_at"] else None
    return {
        # both None: nothing loaded yet, and the export (empty) was built from that warehouse
        "fresh": exported_end == current,
        "latest": latest,
        "export_data_end_at": exported_end,
        "warehouse_data_end_at": current,
    }


def summarise_exports(exports_dir: Path, defined: Sequence[str] | None = None,
                      switched_off: Sequence[str] = ()) -> list[tuple[str, str, int, int, int]]:
    """(segment, latest export id, rows, adds, removes) for every segment folder with a LATEST; with `defined`
    (the segments enabled now), a folder of another segment is named `<segment> (switched off)` when it is among
    `switched_off`, else `<segment> (no longer defined)` (renamed or deleted): its last export stays for whoever
    reads it, and is not current."""
    out = []
    if not exports_dir.is_dir():
        return out
    for segment_dir in sorted(p for p in exports_dir.iterdir() if p.is_dir() and not p.name.startswith(".")):
        latest = latest_export_id(segment_dir)
        if latest and (segment_dir / latest / MANIFEST).is_file():
            m = read_manifest(segment_dir / latest)
            name = segment_dir.name
            if defined is not None and name not in defined:
                name += " (switched off)" if name in switched_off else " (no longer defined)"
            out.append((name, latest, m["row_count"], m["adds"], m["removes"]))
    return out
