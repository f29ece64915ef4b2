"""Opening the DuckDB warehouse: one place that sets the time zone and explains lock conflicts."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

import duckdb

from orchestration.settings import TIMEZONE

LAYER_SCHEMAS = ("raw", "staging", "intermediate", "marts", "segments")


class WarehouseLockedError(RuntimeError):
    """Another process holds DuckDB's write lock on the warehouse file."""


def connect(path: str | Path, *, read_only: bool = False, memory_limit: str | None = None) -> duckdb.DuckDBPyConnection:
    """Open the warehouse with the session settings every privdom connection needs.

    `memory_limit` (the setting duckdb_memory_limit) caps DuckDB's memory for the whole database instance;
    None or "" leaves DuckDB's default.

    DuckDB allows one writing process per file. When another process (a notebook, a second CLI, the UI's
    run) holds it, this raises WarehouseLockedError with a message that says what to do instead of DuckDB's
    "Could not set lock on file" text.
    """
    path = Path(path)
    if not read_only:
        path.parent.mkdir(parents=True, exist_ok=True)
    try:
        con = duckdb.connect(str(path), read_only=read_only)
    except duckdb.IOException as exc:
        if is_lock_conflict(str(exc)):
            raise locked_error(path, str(exc)) from exc
        raise
    con.execute(f"SET TimeZone = '{TIMEZONE}'")
    if memory_limit:
        con.execute("SET memory_limit = ?", [memory_limit])
    return con


def is_lock_conflict(text: str) -> bool:
    """DuckDB's words for "another process holds the file" (also what dbt-duckdb reports)."""
    lowered = text.lower()
    return "could not set lock" in lowered or "conflicting lock" in lowered


def locked_error(path: str | Path, detail: str) -> WarehouseLockedError:
    holder = re.search(r"Conflicting lock is held in (.+?) \(PID (\d+)\)", detail)
    who = f" ({holder.group(1)}, PID {holder.group(2)})" if holder else ""
    return WarehouseLockedError(
        f"The warehouse {path} is in use by another process{who}, and DuckDB allows one writer at a time. "
        "Close the other connection (a notebook, a DuckDB shell, a BI tool opened on warehouse.duckdb) and run "
        "again; BI tools should read the published copy in bi/ instead. DuckDB said: "
        + _lock_line(detail)
    )


def _lock_line(detail: str) -> str:
    lines = [line.strip() for line in detail.strip().splitlines() if line.strip()] or [""]
    return next((line for line in lines if "lock" in line.lower()), lines[0])[:400]


def ensure_not_locked(path: str | Path) -> None:
    """Raise WarehouseLockedError now, with a readable message, if another process holds the file."""
    if Path(path).exists():
        connect(path).close()


@contextlib.contextmanager
def connection(
    path: str | Path, *, read_only: bool = False, memory_limit: str | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, read_only=read_only, memory_limit=memory_limit)
    try:
        yield con
    finally:
        con.close()
