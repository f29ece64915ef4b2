"""One writer at a time per data directory, across processes: a lock file next to the warehouse.

DuckDB allows one writing process per file and fails at once when another holds it. Dagster's pool
``warehouse`` (limit 1) serialises the writing steps of runs that share the Dagster instance, but not a
run that was killed while holding a slot, and not two runs' steps as whole runs. So every privdom writer
also holds this lock: ``privdom run`` for its whole run (two runs launched at once then run one after the
other), and every warehouse-writing asset for its step (so runs launched from the UI queue behind a CLI
run and the other way round). The lock is ``flock`` on ``<data dir>/.privdom-warehouse.lock``: the kernel
releases it when the holding process dies, however it dies, so a killed run never blocks the next one.

The lock is re-entrant within one process (the run holds it; its in-process steps take it again at no
cost). The file records who holds it, so a waiting process can say what it waits for.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

LOCK_FILE_NAME = ".privdom-warehouse.lock"

_held: dict[str, list] = {}  # lock path -> [fd, depth], for this process
_guard = threading.RLock()


class WarehouseBusyTimeout(TimeoutError):
    """The warehouse lock was not free within the time the caller allowed."""


def lock_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / LOCK_FILE_NAME


def holder(data_dir: str | os.PathLike[str]) -> dict | None:
    """Who holds (or last held) the lock, as written by the holder: pid, what, since. None if unknown."""
    try:
        text = lock_path(data_dir).read_text(encoding="utf-8").strip()
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
    what: str = "privdom",
    log: Callable[[str], None] | None = None,
    timeout: float | None = None,
    poll_seconds: float = 0.5,
    report_every: float = 30.0,
) -> Iterator[None]:
    """Hold the data directory's writer lock; wait (logging who holds it) while another process has it."""
    path = lock_path(data_dir)
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
                    message = (
                        f"waiting for the warehouse: {describe_holder(holder(data_dir))} is writing it "
                        f"(lock file {path})"
                    )
                    (log or _stderr)(message)
                    last_report = now
                if timeout is not None and now - started >= timeout:
                    raise WarehouseBusyTimeout(
                        f"the warehouse stayed in use by {describe_holder(holder(data_dir))} for {timeout:.0f} s"
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


def is_held_here(data_dir: str | os.PathLike[str]) -> bool:
    with _guard:
        return str(lock_path(data_dir).resolve()) in _held


def _stderr(message: str) -> None:
    print(f"privdom: {message}", file=sys.stderr, flush=True)
