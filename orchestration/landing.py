"""What is in the landing zone now, for the landing sensor: a cheap listing (path, size, mtime, inode change
time), no reads.

The sensor's cursor is small whatever the landing zone holds: a time (`before`) up to which every file it
listed was handed to a run or found unchanged, the stamps of the files changed after it, and the files it left
waiting. A file is new or changed when its inode change time (ctime: set by every write, rename into place,
copy, even one that keeps the old mtime) is after `before` and its stamp is not the one the cursor holds. The
cursor was the whole listing, and Dagster keeps a copy of it in every tick it records (the file-count review:
1.7 MB a tick at 21,000 files, written once a minute even when nothing changed, kept forever for a tick that
started a run). Ingestion itself decides by content hash what is new, so a listing that misses a change only
delays a file to the next run that touches its date (or the daily unpartitioned run), never loses it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import stat
import time
from dataclasses import dataclass
from pathlib import Path

from orchestration.contract import SOURCES
from orchestration.ingest import files as fl


# A file modified less than this long ago may still be being copied in (cp, SFTP): the sensor leaves it for a
# later tick, so a run it starts does not read it cut short (crash review). A run reading a file that changes
# while it is read stops that source's load (ingest.core.LandingFileChanged); delivering under a hidden name and
# renaming into place avoids both.
SETTLE_NS = 30 * 1_000_000_000
# The tag of a sensor's run: files modified after this (ns since the epoch) wait for a later run, also those of
# a date the run loads
SETTLED_BEFORE_TAG = "privdom/landing_settled_before_ns"


# `before` lags the listing's start by this much: a file changed just before or while the listing ran may carry an
# earlier ctime than a file listed after it (the kernel's coarse clock, a file server's clock a little behind the
# host's), so what changed within it is kept by stamp in the cursor, not summed up by the time
CLOCK_MARGIN_NS = 120 * 1_000_000_000


@dataclass(frozen=True)
class LandingChange:
    paths: tuple[str, ...]  # new or changed files, relative to the landing dir, settled
    batch_dates: tuple[dt.date, ...]  # their batch dates, sorted, distinct
    undated: int  # of them without a batch date (they will be rejected, with the reason)
    waiting: tuple[str, ...] = ()  # new or changed files modified within SETTLE_NS: left for a later tick
    stamps: tuple[str, ...] = ()  # the stamp of each of `paths`, as listed

    @property
    def digest(self) -> str:
        """The run key: the paths with their stamps. Dagster launches one run per run key and sensor, so a key of
        the paths alone dropped the request for a file delivered again, corrected, under its name."""
        lines = [f"{p}\t{s}" for p, s in zip(self.paths, self.stamps)] if self.stamps else list(self.paths)
        return hashlib.sha256("\n".join(lines).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Stamp:
    size: int
    mtime_ns: int
    ctime_ns: int

    def __str__(self) -> str:
        return f"{self.size}:{self.mtime_ns}:{self.ctime_ns}"


def snapshot(landing_dir: Path) -> dict[str, Stamp]:
    """{relative path: Stamp} of every delivery under landing/<source>/."""
    out: dict[str, Stamp] = {}
    folders: dict[Path, int] = {}  # ctime of each folder below landing/<source>/, stat once
    for source in SOURCES:
        root = landing_dir / source
        for f in fl.discover(landing_dir, source):
            try:
                link = f.path.lstat()
                st = f.path.stat() if stat.S_ISLNK(link.st_mode) else link
            except FileNotFoundError:
                continue
            # a link's target keeps its own ctime (an archived file linked into landing/ long after it was
            # written): the link's creation is the delivery, a rewrite of the target a change; a folder renamed
            # into place (`_dt=2024-01-31/` → `dt=2024-01-31/`, a Spark or Hive job's commit) changes its own
            # ctime, not its files': they are as new as it is. The source's own folder is left out: a file
            # added beside the others would make every file of a flat landing/<source>/ new.
            ctime = max(st.st_ctime_ns, link.st_ctime_ns)
            for folder in f.path.parents:
                if folder == root or folder == landing_dir:
                    break
                if folder not in folders:
                    try:
                        folders[folder] = folder.lstat().st_ctime_ns
                    except FileNotFoundError:
                        folders[folder] = 0
                ctime = max(ctime, folders[folder])
            out[f.rel_path] = Stamp(st.st_size, st.st_mtime_ns, ctime)
    return out


def _clock_went_back(cursor: dict, now_ns: int) -> bool:
    """Whether the host's clock is now earlier than at the tick that wrote `cursor` (an NTP step, a restored VM):
    files written since carry ctimes that may be at or before the cursor's `before`."""
    return now_ns < int(cursor.get("listed_at", 0))


def _changed(cursor: dict, current: dict[str, Stamp], now_ns: int) -> list[str]:
    """The paths of `current` new or changed since the tick that wrote `cursor` ({} before the first tick). After
    the clock went back every file counts (one run over all dates: ingestion loads nothing twice)."""
    if cursor and "before" not in cursor:
        # the cursor of privdom before 2026-12-07: the whole listing, {path: "size:mtime"}; read once
        return sorted(p for p, st in current.items() if cursor.get(p) != f"{st.size}:{st.mtime_ns}")
    before = -1 if _clock_went_back(cursor, now_ns) else int(cursor.get("before", -1))
    seen, waiting = cursor.get("seen", {}), set(cursor.get("waiting", ()))
    return sorted(p for p, st in current.items()
                  if p in waiting or (st.ctime_ns > before and seen.get(p) != str(st)))


def changes(cursor: dict, current: dict[str, Stamp], now_ns: int | None = None,
            settle_ns: int | None = None) -> LandingChange | None:
    """The new or changed files of `current` against the sensor's `cursor` (None when there are none), those
    modified within `settle_ns` (default SETTLE_NS) of `now_ns` set aside as `waiting`."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    settle_ns = SETTLE_NS if settle_ns is None else settle_ns
    changed = _changed(cursor, current, now_ns)
    if not changed:
        return None
    waiting = [p for p in changed if current[p].mtime_ns > now_ns - settle_ns]
    settled = [p for p in changed if current[p].mtime_ns <= now_ns - settle_ns]
    dates = [fl.batch_date_of(p)[0] for p in settled]
    return LandingChange(
        paths=tuple(settled),
        batch_dates=tuple(sorted({d for d in dates if d is not None})),
        undated=sum(1 for d in dates if d is None),
        waiting=tuple(waiting),
        stamps=tuple(str(current[p]) for p in settled),
    )


def cursor_after(cursor: dict, current: dict[str, Stamp], change: LandingChange | None, listed_at_ns: int) -> dict:
    """The cursor a tick hands to the next, for a listing `current` begun at `listed_at_ns`: every file changed up
    to CLOCK_MARGIN_NS before it is accounted for by the time alone; the files changed after that keep their
    stamps, and a file still waiting is named, so the next tick sees it as changed again."""
    before = listed_at_ns - CLOCK_MARGIN_NS
    if not _clock_went_back(cursor, listed_at_ns):
        before = max(int(cursor.get("before", -1)), before)
    waiting = set(change.waiting) if change else set()
    return {
        "before": before,
        "listed_at": listed_at_ns,
        "seen": {p: str(st) for p, st in sorted(current.items()) if st.ctime_ns > before and p not in waiting},
        "waiting": sorted(waiting),
    }
