"""Opening the DuckDB warehouse: one place that sets the time zone and explains lock conflicts."""

from __future__ import annotations

import contextlib
import ctypes
import re
import sys
from collections.abc import Iterator
from pathlib import Path

import duckdb

from orchestration.scratch import pid_alive
from orchestration.settings import TIMEZONE


def path_sql(path: Path | str) -> str:
    """A file path as the SQL literal DuckDB's readers (read_csv, read_parquet, read_ndjson_objects, ...) take
    for that one file. They read a path as a glob pattern: a landing file named `orders_20240131_[1].csv` read
    `orders_20240131_1.csv`, and one named `*.csv` every file beside it. `[`, `*` and `?` are escaped as the
    one-character classes `[[]`, `[*]`, `[?]`, which match only themselves (`]` outside a class is literal).
    Not for COPY ... TO or ATTACH, which take a path as it is.

    A path holding a backslash and one of those characters cannot be named at all (DuckDB's glob takes the
    backslash for an escape, and no class matches it): ValueError, which ingestion reports as the file's
    rejection (unreadable_name)."""
    text = path.as_posix() if isinstance(path, Path) else str(path)
    if unreadable_name(text):
        raise ValueError(f"{text}: DuckDB cannot read a path holding both a backslash and one of [ * ?")
    return "'" + text.replace("[", "[[]").replace("*", "[*]").replace("?", "[?]").replace("'", "''") + "'"


def unreadable_name(path: Path | str) -> bool:
    """Whether DuckDB's readers cannot name this path (see path_sql)."""
    text = str(path)
    return "\\" in text and any(c in text for c in "[*?")


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
    owner = _privdoms_dbt_owner(int(holder.group(2))) if holder else None
    if owner is not None:
        # privdom's own dbt: not a tool of the user's (crash review)
        if owner > 1 and pid_alive(owner):
            return WarehouseLockedError(
                f"The warehouse {path} is in use by a dbt command{who} of a privdom process that is still going "
                f"(PID {owner}); wait for it to end. DuckDB said: " + _lock_line(detail)
            )
        # left by a run that was killed (PRIVDOM_DBT_WARM=0 runs dbt as a plain child, which outlives a kill -9)
        return WarehouseLockedError(
            f"The warehouse {path} is in use by a dbt command of privdom{who}, whose run is no longer there "
            "(killed?): it ends by itself once its models are built. Wait and run again, or stop it: "
            f"kill {holder.group(2)}. DuckDB said: " + _lock_line(detail)
        )
    return WarehouseLockedError(
        f"The warehouse {path} is in use by another process{who}, and DuckDB allows one writer at a time. "
        "Close the other connection (a notebook, a DuckDB shell, a BI tool opened on warehouse.duckdb) and run "
        "again; BI tools should read the published copy in bi/ instead. DuckDB said: "
        + _lock_line(detail)
    )


def _privdoms_dbt_owner(pid: int) -> int | None:
    """When process `pid` is a dbt command privdom started (through its warm server, or dbt itself with
    privdom's profile), the pid of the privdom process it works for (the warm server's `--parent`, else its
    parent; 1 when orphaned); None when it is not one, or where it cannot tell (no /proc)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    parent = int(stat.rsplit(")", 1)[1].split()[1])
    if b"orchestration.warm" in b" ".join(argv):  # the warm server or one of its commands
        at = argv.index(b"--parent") if b"--parent" in argv else -1
        return int(argv[at + 1]) if 0 <= at < len(argv) - 1 and argv[at + 1].isdigit() else parent
    if any(Path(a.decode(errors="replace")).name == "dbt" for a in argv[:2]) and any(
            e.startswith(b"PRIVDOM_WAREHOUSE=") for e in environ):
        return parent
    return None


def _lock_line(detail: str) -> str:
    lines = [line.strip() for line in detail.strip().splitlines() if line.strip()] or [""]
    return next((line for line in lines if "lock" in line.lower()), lines[0])[:400]


def ensure_not_locked(path: str | Path) -> None:
    """Raise WarehouseLockedError now, with a readable message, if another process holds the file."""
    if Path(path).exists():
        connect(path).close()


def table_exists(con: duckdb.DuckDBPyConnection, qualified: str) -> bool:
    """Whether `schema.name` is a table or a view of the database open on `con`."""
    schema, name = qualified.split(".")
    return con.execute(
        "SELECT count(*) FROM information_schema.tables WHERE table_catalog = current_database() "
        "AND table_schema = ? AND table_name = ?",
        [schema, name],
    ).fetchone()[0] > 0


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """BEGIN … COMMIT around the block; on an error, ROLLBACK and re-raise that error. A ROLLBACK that fails
    (DuckDB may already have ended the transaction) never replaces the original error; a failed COMMIT raises
    its own (DuckDB has then ended the transaction)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:
            pass
        raise
    con.execute("COMMIT")


@contextlib.contextmanager
def connection(
    path: str | Path, *, read_only: bool = False, memory_limit: str | None = None
) -> Iterator[duckdb.DuckDBPyConnection]:
    """An open warehouse connection, closed afterwards, with the memory it freed handed back to the OS."""
    con = connect(path, read_only=read_only, memory_limit=memory_limit)
    try:
        yield con
    finally:
        con.close()
        release_free_memory()


def _glibc():
    try:
        return ctypes.CDLL("libc.so.6")
    except OSError:  # not glibc (macOS, musl): nothing to trim
        return None


_LIBC = _glibc() if sys.platform.startswith("linux") else None


def release_free_memory() -> None:
    """Hand memory that is free but still held by the allocators back to the OS.

    `privdom run` runs every step in one process, beside its dbt subprocesses. DuckDB allocates with glibc
    malloc here, and glibc keeps what a closed connection freed in its per-thread arenas; Arrow (the
    examples read back through Arrow) keeps its own pool. Without this, a step's high-water mark stays resident for the
    rest of the run. Costs a few milliseconds.
    """
    pyarrow = sys.modules.get("pyarrow")
    if pyarrow is not None:
        try:
            pyarrow.default_memory_pool().release_unused()
        except (AttributeError, NotImplementedError):
            pass
    if _LIBC is not None:
        try:
            _LIBC.malloc_trim(0)
        except AttributeError:
            pass
