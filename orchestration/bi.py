"""The read-only copy of the published schemas for BI tools: ``<data dir>/bi/``.

DuckDB lets a file have one writing process and, while it writes, no reader in another process. BI tools
(Metabase, Superset, DBeaver, Tableau, Power BI) therefore never open ``warehouse.duckdb``; after each
successful run the pipeline publishes:

- ``bi/warehouse.duckdb``: every table and view of the schemas ``marts`` and ``segments`` as tables (without
  the phone's SHA-256, which beside the masked phone gives the clear phone: ``_published_select``), written
  to a temporary file and renamed over the previous copy (atomic: a reader sees the old copy or the new
  one, never a half-written file; a reader that has the old one open keeps reading it). It is written in
  DuckDB's storage format v1.0.0 (``BI_STORAGE_VERSION``), which every DuckDB from 1.0 reads: the BI tools'
  drivers and a DuckDB CLI installed on its own are often older than the pipeline's DuckDB, and a file in
  the newest format is refused by them ("version number 69, but we can only read versions between 64 and 68").
- ``bi/parquet/<schema>/<table>.parquet``: one Parquet file per table, each replaced atomically, each with
  the publication's run id and time in its key-value metadata (``privdom_run_id``, ``privdom_published_at``);
- ``bi/manifest.json`` (written last): when, by which run, and the row count of every table.

The tables and columns of the DuckDB copy carry their dbt docs as comments (``COMMENT ON``; DuckDB's
``duckdb_tables().comment`` and ``duckdb_columns().comment``, shown by DBeaver and other SQL clients): the
models' descriptions, and for the schema ``segments``, which Python writes, the sources of
``dbt_project/models/segments/__sources.yml`` (``docs_from_manifest``).

Everything is written to temporary files first; then the DuckDB copy and the Parquet files are renamed into
place one after the other, and the manifest last, so a run killed while it publishes leaves either the old
set or (past the renames) a new set whose manifest is still the old one. A WAL beside the copy's name (left
by a tool that opened the copy read-write and died) belongs to the old file and is removed: DuckDB would
replay it on the new copy and refuse to open it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import duckdb

BI_SCHEMAS: tuple[str, ...] = ("marts", "segments")
BI_DIR_NAME = "bi"
BI_DATABASE_NAME = "warehouse.duckdb"
BI_STORAGE_VERSION = "v1.0.0"  # the oldest DuckDB storage format: readable by every DuckDB from 1.0 on
_ALIAS = "privdom_bi_copy"
HIDDEN_COLUMN = "phone_sha256"  # never in the copy: with phone_masked it is the clear phone (_published_select)


@dataclass
class BiPublication:
    directory: Path
    database: Path
    published_at: str
    run_id: str | None
    tables: dict[str, int] = field(default_factory=dict)  # "<schema>.<table>" -> rows
    parquet_files: list[str] = field(default_factory=list)  # relative to directory
    comments_error: str | None = None  # the docs could not be written as comments: the copy is published without

    def to_manifest(self) -> dict:
        return {
            "published_at": self.published_at,
            "run_id": self.run_id,
            "database": self.database.name,
            "schemas": list(BI_SCHEMAS),
            "tables": self.tables,
            "parquet_files": self.parquet_files,
        }


@dataclass(frozen=True)
class TableDocs:
    """A published table's description and its columns' (column name -> text), from dbt's manifest."""

    description: str
    columns: dict[str, str] = field(default_factory=dict)


# segments.segment_members repeats marts.dim_customers' columns as of computed_at (the fields that explain
# membership); its source documents only its own columns and says so, and the others take dim_customers' text
_MEMBERS = "segments.segment_members"
_MEMBERS_FROM = "marts.dim_customers"


def docs_from_manifest(manifest: dict, schemas: tuple[str, ...] = BI_SCHEMAS) -> dict[str, TableDocs]:
    """"<schema>.<table>" -> TableDocs for every model and source of `schemas` in a dbt manifest (the parsed
    manifest.json), with blank descriptions left out."""

    def text(value) -> str:
        return " ".join(str(value or "").split())

    docs: dict[str, TableDocs] = {}
    for node in [*manifest.get("nodes", {}).values(), *manifest.get("sources", {}).values()]:
        if node.get("resource_type") not in ("model", "snapshot", "seed", "source") or node.get("schema") not in schemas:
            continue
        name = node.get("identifier") if node["resource_type"] == "source" else node.get("alias")
        columns = {c: text(col.get("description")) for c, col in (node.get("columns") or {}).items()}
        docs[f"{node['schema']}.{name or node['name']}"] = TableDocs(
            text(node.get("description")), {c: d for c, d in columns.items() if d}
        )
    members, dim = docs.get(_MEMBERS), docs.get(_MEMBERS_FROM)
    if members is not None and dim is not None:
        inherited = {c: f"As {_MEMBERS_FROM}.{c} at computed_at: {d}" for c, d in dim.columns.items()}
        docs[_MEMBERS] = TableDocs(members.description, {**inherited, **members.columns})
    return docs


def _comment_statements(con: duckdb.DuckDBPyConnection, docs: dict[str, TableDocs]) -> list[str]:
    """COMMENT ON statements for the tables and columns of the copy (attached as _ALIAS) that docs describe."""
    present: dict[str, set[str]] = {}
    for schema, table, column in con.execute(
        "select table_schema, table_name, column_name from information_schema.columns where table_catalog = ?",
        [_ALIAS],
    ).fetchall():
        present.setdefault(f"{schema}.{table}", set()).add(column)
    statements = []
    for qualified, columns in sorted(present.items()):
        doc = docs.get(qualified)
        if doc is None:
            continue
        schema, table = qualified.split(".", 1)
        target = f"{_ALIAS}.{_quote(schema)}.{_quote(table)}"
        if doc.description:
            statements.append(f"COMMENT ON TABLE {target} IS {_sql_string(doc.description)}")
        for column, text in sorted(doc.columns.items()):
            if column in columns:
                statements.append(f"COMMENT ON COLUMN {target}.{_quote(column)} IS {_sql_string(text)}")
    return statements


def _published_select(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> str:
    """The SELECT that copies one table into the BI copy: everything but the phone's SHA-256.

    A masked phone (139****5678) leaves 10,000 candidates, and an unsalted SHA-256 of the phone tells which one
    in a millisecond: side by side (dim_customers) or a join away (segment_members by customer_key), the two
    are the clear phone (the privacy review rebuilt 801 of 801 phones from the copy in 1.2 s). The hash is a
    delivery field, for ad platforms, and stays in the warehouse and the exports; the copy leaves out
    ``phone_sha256`` and the ``contact_handle`` of rows reached by it (``contact_channel = 'phone_sha256'``).
    """
    columns = {
        name for (name,) in con.execute(
            "select column_name from information_schema.columns "
            "where table_catalog = current_database() and table_schema = ? and table_name = ?",
            [schema, table],
        ).fetchall()
    }
    select = "SELECT *"
    if HIDDEN_COLUMN in columns:
        select += f" EXCLUDE ({_quote(HIDDEN_COLUMN)})"
    if {"contact_channel", "contact_handle"} <= columns:
        select += (" REPLACE (CASE WHEN contact_channel = 'phone_sha256' THEN NULL ELSE contact_handle END "
                   "AS contact_handle)")
    return f"{select} FROM {_quote(schema)}.{_quote(table)}"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _sql_string(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _remove(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except FileNotFoundError:
            pass


class BiCopyInUseError(RuntimeError):
    """The published copy is open read-write in another process: replacing it would hand that process's later
    writes to the new copy."""


def _refuse_read_write_holder(final: Path) -> None:
    """Raise BiCopyInUseError when a process has the copy open read-write. DuckDB names a database's WAL after
    its path: such a process's later writes (a BI tool's scratch table, an edit by mistake) went to a WAL that
    the next open of the new copy replayed into it; a review saw a read-only reader of the new copy get 240 of
    520 customers and another net revenue, without an error. Read-only readers are no obstacle; off Linux
    nothing is asked and the copy is replaced as before (locking.duckdb_lock_holder)."""
    from orchestration.locking import duckdb_lock_holder

    pid = duckdb_lock_holder(final)
    if pid is not None:
        raise BiCopyInUseError(
            f"{final} is open read-write in another process (PID {pid}): its writes would land in the new copy, so "
            "none is published; close that connection, or open the copy read-only (README, \"BI tools\"), and run "
            "again (the previous copy stays)")


def publish(
    con: duckdb.DuckDBPyConnection,
    bi_dir: Path,
    *,
    schemas: tuple[str, ...] = BI_SCHEMAS,
    run_id: str | None = None,
    parquet: bool = True,
    docs: dict[str, TableDocs] | None = None,
) -> BiPublication:
    """Copy `schemas` of the warehouse open on `con` into bi_dir (see the module docstring); `docs`
    ("<schema>.<table>" -> TableDocs, from docs_from_manifest) become the copy's table and column comments."""
    bi_dir.mkdir(parents=True, exist_ok=True)
    final = bi_dir / BI_DATABASE_NAME
    _refuse_read_write_holder(final)  # before the work; and again before the copy replaces it
    tmp = bi_dir / f".{BI_DATABASE_NAME}.{os.getpid()}.tmp"
    # Left by a publisher that was killed (the caller holds the warehouse lock: no publisher is running).
    _remove(*bi_dir.glob(f".{BI_DATABASE_NAME}.*.tmp"), *bi_dir.glob(f".{BI_DATABASE_NAME}.*.tmp.wal"))
    _remove(*bi_dir.glob("parquet/*/.*.parquet.*.tmp"), *bi_dir.glob(".manifest.json.*.tmp"))
    tables = con.execute(
        "select table_schema, table_name from information_schema.tables "
        "where table_catalog = current_database() and table_schema in (select unnest(?::varchar[])) order by 1, 2",
        [list(schemas)],
    ).fetchall()
    publication = BiPublication(
        directory=bi_dir,
        database=final,
        published_at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        run_id=run_id,
    )
    selects = {(schema, table): _published_select(con, schema, table) for schema, table in tables}
    con.execute(f"ATTACH {_sql_string(str(tmp))} AS {_ALIAS} (STORAGE_VERSION {_sql_string(BI_STORAGE_VERSION)})")
    try:
        for schema in schemas:
            con.execute(f"CREATE SCHEMA {_ALIAS}.{_quote(schema)}")
        for schema, table in tables:
            target = f"{_ALIAS}.{_quote(schema)}.{_quote(table)}"
            con.execute(f"CREATE TABLE {target} AS {selects[schema, table]}")
            publication.tables[f"{schema}.{table}"] = con.execute(f"select count(*) from {target}").fetchone()[0]
        if docs:
            statements = _comment_statements(con, docs)
            if statements:  # one transaction: a few hundred catalog entries in ~0.1 s
                con.execute("BEGIN TRANSACTION")
                try:
                    for statement in statements:
                        con.execute(statement)
                except duckdb.Error as exc:  # the docs are a convenience: the data are published without them
                    con.execute("ROLLBACK")
                    publication.comments_error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
                except BaseException:
                    con.execute("ROLLBACK")
                    raise
                else:
                    con.execute("COMMIT")
    except BaseException:
        con.execute(f"DETACH {_ALIAS}")
        _remove(tmp, Path(str(tmp) + ".wal"))
        raise
    try:
        con.execute(f"DETACH {_ALIAS}")  # it checkpoints: at 1M customers, seconds in which a stop may come
    except BaseException:
        # a SIGTERM or Ctrl-C there left the copy's temporary file (hundreds of MB at 1M customers) until the next
        # publication (signal review)
        try:
            con.execute(f"DETACH DATABASE IF EXISTS {_ALIAS}")
        except duckdb.Error:
            pass
        _remove(tmp, Path(str(tmp) + ".wal"))
        raise
    _remove(Path(str(tmp) + ".wal"))  # DETACH checkpoints; a WAL must not be left beside the renamed file

    parts: list[tuple[Path, Path]] = []  # (temporary file, final name)
    if parquet:
        root = bi_dir / "parquet"
        metadata = (f"KV_METADATA {{privdom_run_id: {_sql_string(run_id or '')}, "
                    f"privdom_published_at: {_sql_string(publication.published_at)}}}")
        try:
            for schema, table in tables:
                out = root / schema / f"{table}.parquet"
                out.parent.mkdir(parents=True, exist_ok=True)
                part = out.with_name(f".{out.name}.{os.getpid()}.tmp")
                parts.append((part, out))
                con.execute(f"COPY ({selects[schema, table]}) TO {_sql_string(str(part))} "
                            f"(FORMAT parquet, {metadata})")
        except BaseException:
            _remove(tmp, *(part for part, _ in parts))
            raise

    try:
        _refuse_read_write_holder(final)
    except BiCopyInUseError:
        _remove(tmp, *(part for part, _ in parts))
        raise
    _remove(Path(str(final) + ".wal"))  # the old copy's, never this one's: it would be replayed on the new copy
    os.replace(tmp, final)
    for part, out in parts:
        os.replace(part, out)
        publication.parquet_files.append(str(out.relative_to(bi_dir)))
    if parquet and (bi_dir / "parquet").exists():
        wanted = {out for _, out in parts}
        for stale in (bi_dir / "parquet").glob("*/*.parquet"):
            if stale not in wanted:
                stale.unlink()

    manifest = bi_dir / "manifest.json"
    part = bi_dir / f".manifest.json.{os.getpid()}.tmp"
    part.write_text(json.dumps(publication.to_manifest(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(part, manifest)
    return publication
