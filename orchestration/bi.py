"""The read-only copy of the published schemas for BI tools: ``<data dir>/bi/``.

DuckDB lets a file have one writing process and, while it writes, no reader in another process. BI tools
(Metabase, Superset, DBeaver, Tableau, Power BI) therefore never open ``warehouse.duckdb``; after each
successful run the pipeline publishes:

- ``bi/warehouse.duckdb``: every table and view of the schemas ``marts`` and ``segments`` as tables, written
  to a temporary file and renamed over the previous copy (atomic: a reader sees the old copy or the new
  one, never a half-written file; a reader that has the old one open keeps reading it);
- ``bi/parquet/<schema>/<table>.parquet``: one Parquet file per table, each replaced atomically;
- ``bi/manifest.json`` (written last): when, by which run, and the row count of every table.
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
    con.execute(f"ATTACH {_sql_string(str(tmp))} AS {_ALIAS}")
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
    os.replace(tmp, final)

    if parquet:
        root = bi_dir / "parquet"
        wanted: set[Path] = set()
        for schema, table in tables:
            out = root / schema / f"{table}.parquet"
            out.parent.mkdir(parents=True, exist_ok=True)
            part = out.with_name(f".{out.name}.{os.getpid()}.tmp")
            con.execute(
                f"COPY (SELECT * FROM {_quote(schema)}.{_quote(table)}) TO {_sql_string(str(part))} (FORMAT parquet)"
            )
            os.replace(part, out)
            wanted.add(out)
            publication.parquet_files.append(str(out.relative_to(bi_dir)))
        if root.exists():
            for stale in root.glob("*/*.parquet"):
                if stale not in wanted:
                    stale.unlink()

    manifest = bi_dir / "manifest.json"
    part = bi_dir / f".manifest.json.{os.getpid()}.tmp"
    part.write_text(json.dumps(publication.to_manifest(), indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(part, manifest)
    return publication
