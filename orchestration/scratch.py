"""Scratch space of a running step, inside the data directory (`<data dir>/tmp/`).

Ingestion writes a run's judged rows to Parquet parts before loading them (orchestration/ingest/core.py), and
transcodes GBK files to UTF-8 there; at 1M customers a full run's parts are hundreds of megabytes. They live
in the data directory, not the system's temporary directory: SPEC §6 keeps everything a run reads and writes
in one data directory, that disk is the one sized for the data (a system `/tmp` is often a RAM-backed tmpfs),
and DuckDB spills there too (`warehouse.duckdb.tmp/`).

A step removes its own directory when it ends. A process killed with SIGKILL cannot, so every new scratch
directory first sweeps away those left behind: a directory is named `<what>.<pid>@<host>.<random>`, and goes
when that process on this host is gone, or, for a process of another host sharing the disk (whose pid means
nothing here), when it has not changed for a day. Anything else under `tmp/` is never touched: it was not
written here.
"""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path

DIR_NAME = "tmp"
STALE_SECONDS = 24 * 3600.0


def _host() -> str:
    return socket.gethostname() or "localhost"


def _owner(name: str) -> tuple[int, str] | None:
    """(pid, host) from a directory name `<what>.<pid>@<host>.<random>`; None for another name."""
    parts = name.split(".", 1)
    if len(parts) != 2 or "." not in parts[1]:
        return None
    owner = parts[1].rsplit(".", 1)[0]
    pid, at, host = owner.partition("@")
    if not at or not pid.isdigit() or int(pid) <= 0 or not host:
        return None
    return int(pid), host


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists on this host (another user's counts: it is left alone)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another user's process has that pid now
    return True


def sweep(parent: Path, *, stale_seconds: float = STALE_SECONDS) -> list[Path]:
    """Remove the directories under `parent` whose process is gone (see the module docstring). Returns them."""
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except FileNotFoundError:
        return removed
    host, now = _host(), time.time()
    for d in entries:
        try:
            if not d.is_dir() or d.is_symlink():
                continue
            owner = _owner(d.name)
            if owner is None:  # not a scratch directory's name
                continue
            pid, owner_host = owner
            if owner_host == host:
                gone = pid != os.getpid() and not pid_alive(pid)
            else:
                gone = now - d.stat().st_mtime > stale_seconds
            if gone:
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
        except OSError:
            continue
    return removed


def directory(data_dir: Path, what: str) -> tempfile.TemporaryDirectory:
    """A new scratch directory for this process under `<data_dir>/tmp/`, after sweeping the stale ones. The
    caller cleans it up (`.cleanup()`); should it not, the next sweep after this process ends does."""
    parent = Path(data_dir) / DIR_NAME
    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent)
    return tempfile.TemporaryDirectory(prefix=f"{what}.{os.getpid()}@{_host()}.", dir=parent)
