"""Opening the DuckDB warehouse: one place that sets the time zone and explains lock conflicts."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import duckdb

from orchestration.settings import TIMEZONE

LAYER_SCHEMAS = ("raw", "staging", "intermediate", "marts", "segments")


class WarehouseLockedError(RuntimeError):
    """Another process holds DuckDB's write lock on the warehouse file."""


def connect(path: str | Path, *, read_only: bool = False) -> duckdb.DuckDBPyConnection:
    """Open the warehouse with the session settings every privdom connection needs.

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
        if "lock" in str(exc).lower():
            raise WarehouseLockedError(
                f"The warehouse {path} is in use by another process, and DuckDB allows one writer at a time. "
                "Close the other connection (a notebook, a DuckDB shell, another `privdom run`) and try again; "
                f"BI tools should read the published read-only copy instead. DuckDB said: {exc}"
            ) from exc
        raise
    con.execute(f"SET TimeZone = '{TIMEZONE}'")
    return con


@contextlib.contextmanager
def connection(path: str | Path, *, read_only: bool = False) -> Iterator[duckdb.DuckDBPyConnection]:
    con = connect(path, read_only=read_only)
    try:
        yield con
    finally:
        con.close()
