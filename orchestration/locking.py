"""One writer at a time per data directory, across processes: lock files next to the warehouse.

DuckDB allows one writing process per file and fails at once when another holds it. Dagster's pool
``warehouse`` (limit 1) serialises the writing steps of runs that share the Dagster instance, but per step
(two runs interleave), and a run killed while holding a slot keeps it. So privdom adds two ``flock`` locks,
which the kernel releases when the holding process dies, however it dies:

- the **run lock** (``.privdom-run.lock``), held by ``privdom run`` for its whole run: two runs launched at
  once run one after the other;
- the **warehouse lock** (``.privdom-warehouse.lock``), held by every warehouse-writing step (inside its pool
  slot) and by privdom's own reads of the warehouse outside steps: runs launched from the UI or the daemon
  and CLI runs never write at the same time. Steps take it only after their pool slot, and nothing waits
  for a slot while holding it, so the two cannot deadlock.

Locks are re-entrant within one process. The file records who holds it, so a waiting process can say
what it waits for.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import struct
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_FILE_NAME = ".privdom-warehouse.lock"
RUN_LOCK_FILE_NAME = ".privdom-run.lock"

# how long a waiter waits for the holder's name before it reports an unknown holder
_UNKNOWN_HOLDER_GRACE = 2.0
_held: dict[str, list] = {}  # lock path -> [fd, depth], for this process
_guard = threading.RLock()


class WarehouseBusyTimeout(TimeoutError):
    """The warehouse lock was not free within the time the caller allowed."""


def lock_path(data_dir: str | os.PathLike[str], name: str = LOCK_FILE_NAME) -> Path:
    return Path(data_dir) / name


def holder(data_dir: str | os.PathLike[str], name: str = LOCK_FILE_NAME) -> dict | None:
    """Who holds (or last held) the lock, as written by the holder: pid, what, since. None if unknown."""
    try:
        text = lock_path(data_dir, name).read_text(encoding="utf-8").strip()
        return json.loads(text) if text else None
    except (OSError, ValueError):
        return None


def describe_holder(info: dict | None) -> str:
    if not info:
        return "another privdom process"
    return f"{info.get('what', 'a privdom process')} (PID {info.get('pid', '?')}, since {info.get('since', '?')})"


@contextlib.contextmanager
def warehouse_lock(
    data_dir: str | os.PathLike[str],
    *,
    name: str = LOCK_FILE_NAME,
    what: str = "privdom",
    log: Callable[[str], None] | None = None,
    timeout: float | None = None,
    poll_seconds: float = 0.5,
    report_every: float = 30.0,
) -> Iterator[None]:
    """Hold one of the data directory's locks; wait (logging who holds it) while another process has it."""
    path = lock_path(data_dir, name)
    key = str(path.resolve())
    with _guard:
        entry = _held.get(key)
        if entry is not None:
            entry[1] += 1
            reentered = True
        else:
            reentered = False
    if reentered:
        try:
            yield
        finally:
            with _guard:
                _held[key][1] -= 1
        return

    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        started = time.monotonic()
        last_report = None
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                now = time.monotonic()
                if last_report is None or now - last_report >= report_every:
                    info = holder(data_dir, name)
                    # a holder that has just taken the lock has not written who it is yet: say so on a later
                    # poll (two runs started at once met that window: "another privdom process", not its name)
                    if info is not None or now - started >= _UNKNOWN_HOLDER_GRACE:
                        (log or _stderr)(f"waiting for the warehouse: {describe_holder(info)} is using it (lock file {path})")
                        last_report = now
                if timeout is not None and now - started >= timeout:
                    raise WarehouseBusyTimeout(
                        f"the warehouse stayed in use by {describe_holder(holder(data_dir, name))} for {timeout:.0f} s"
                    ) from None
                time.sleep(poll_seconds)
        info = {"pid": os.getpid(), "what": what, "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(info) + "\n").encode(), 0)
        with _guard:
            _held[key] = [fd, 1]
        try:
            yield
        finally:
            with _guard:
                del _held[key]
            os.ftruncate(fd, 0)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@contextlib.contextmanager
def reading_lock(data_dir: str | os.PathLike[str], *, what: str, log: Callable[[str], None] | None = None) -> Iterator[bool]:
    """The warehouse lock for a command that only reads the warehouse (`privdom segments`); yields whether it is
    held. Where this user cannot write the data directory (a read-only mount, another user's directory), the lock
    file cannot be opened, and the command reads without it: DuckDB's own file lock keeps a read-only
    connection and a writer apart (the writer is then another user's, which privdom's lock would not name
    anyway). Such a command failed with "Permission denied" (runbook review)."""
    with contextlib.ExitStack() as stack:
        try:
            stack.enter_context(warehouse_lock(data_dir, what=what, log=log))
            held = True
        except OSError as exc:
            if exc.errno not in (errno.EACCES, errno.EPERM, errno.EROFS):
                raise
            held = False
        yield held


def is_held_here(data_dir: str | os.PathLike[str], name: str = LOCK_FILE_NAME) -> bool:
    with _guard:
        return str(lock_path(data_dir, name).resolve()) in _held


def _stderr(message: str) -> None:
    print(f"privdom: {message}", file=sys.stderr, flush=True)


def duckdb_lock_holder(path: str | os.PathLike[str], *, readers_too: bool = False) -> int | None:
    """The PID of a process holding DuckDB's lock on the database file `path` (fcntl's, not the flock files
    above), or None: a read-write connection holds a write lock, a read-only one a read lock. Asked with F_GETLK,
    which locks nothing: for a read lock, which only a write lock conflicts with (a read-write holder), or with
    `readers_too` for a write lock, which any lock conflicts with. Locks of this process are never named. Linux
    only (the layout of `struct flock` below is Linux's; macOS and the BSDs order its fields otherwise): None
    elsewhere."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        request = struct.pack("hhqqi", fcntl.F_WRLCK if readers_too else fcntl.F_RDLCK, os.SEEK_SET, 0, 0, 0)
        l_type, _, _, _, pid = struct.unpack("hhqqi", fcntl.fcntl(fd, fcntl.F_GETLK, request))
        return None if l_type == fcntl.F_UNLCK else pid
    finally:
        os.close(fd)
