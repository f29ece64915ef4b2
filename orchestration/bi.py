"""The read-only copy of the published schemas for BI tools: ``<data dir>/bi/``.

DuckDB lets a file have one writing process and, while it writes, no reader in another process. BI tools
(Metabase, Superset, DBeaver, Tableau, Power BI) therefore never open ``warehouse.duckdb``; after each
successful run the pipeline publishes:

- ``bi/warehouse.duckdb``: every table and view of the schemas ``marts`` and ``segments`` as tables, written
  to a temporary file and renamed over the previous copy (atomic: a reader sees the old copy or the new
  one, never a half-written file; a reader that has the old one open keeps reading it). It is written in
  DuckDB's storage format v1.0.0 (``BI_STORAGE_VERSION``), which every DuckDB from 1.0 reads: the BI tools'
  drivers and a DuckDB CLI installed on its own are often older than the pipeline's DuckDB, and a file in
  the newest format is refused by them ("version number 69, but we can only read versions between 64 and 68").
- ``bi/parquet/<schema>/<table>.parquet``: one Parquet file per table, each replaced atomically, each with
  the publication's run id and time in its key-value metadata (``privdom_run_id``, ``privdom_published_at``);
- ``bi/manifest.json`` (written last): when, by which run, and the row count of every table.

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


@dataclass
class BiPublication:
    directory: Path
    database: Path
    published_at: str
    run_id: str | None
    tables: dict[str, int] = field(default_factory=dict)  # "<schema>.<table>" -> rows
    parquet_files: list[str] = field(default_factory=list)  # relative to directory

    def to_manifest(self) -> dict:
        return {
            "published_at": self.published_at,
            "run_id": self.run_id,
            "database": self.database.name,
            "schemas": list(BI_SCHEMAS),
            "tables": self.tables,
            "parquet_files": self.parquet_files,
        }


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


def publish(
    con: duckdb.DuckDBPyConnection,
    bi_dir: Path,
    *,
    schemas: tuple[str, ...] = BI_SCHEMAS,
    run_id: str | None = None,
    parquet: bool = True,
) -> BiPublication:
    """Copy `schemas` of the warehouse open on `con` into bi_dir (see the module docstring)."""
    bi_dir.mkdir(parents=True, exist_ok=True)
    final = bi_dir / BI_DATABASE_NAME
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
    con.execute(f"ATTACH {_sql_string(str(tmp))} AS {_ALIAS} (STORAGE_VERSION {_sql_string(BI_STORAGE_VERSION)})")
    try:
        for schema in schemas:
            con.execute(f"CREATE SCHEMA {_ALIAS}.{_quote(schema)}")
        for schema, table in tables:
            target = f"{_ALIAS}.{_quote(schema)}.{_quote(table)}"
            con.execute(f"CREATE TABLE {target} AS SELECT * FROM {_quote(schema)}.{_quote(table)}")
            publication.tables[f"{schema}.{table}"] = con.execute(f"select count(*) from {target}").fetchone()[0]
    except BaseException:
        con.execute(f"DETACH {_ALIAS}")
        _remove(tmp, Path(str(tmp) + ".wal"))
        raise
    con.execute(f"DETACH {_ALIAS}")
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
                con.execute(f"COPY (SELECT * FROM {_quote(schema)}.{_quote(table)}) TO {_sql_string(str(part))} "
                            f"(FORMAT parquet, {metadata})")
        except BaseException:
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
