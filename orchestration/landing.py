"""What is in the landing zone now, for the landing sensor: a cheap listing (path, size, mtime), no reads.

The sensor compares the listing with the one of its last tick; ingestion itself decides by content hash
what is new, so a listing that misses a change only delays a file to the next run that touches its date
(or the daily unpartitioned run), never loses it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
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


@dataclass(frozen=True)
class LandingChange:
    paths: tuple[str, ...]  # new or changed files, relative to the landing dir, settled
    batch_dates: tuple[dt.date, ...]  # their batch dates, sorted, distinct
    undated: int  # of them without a batch date (they will be rejected, with the reason)
    waiting: tuple[str, ...] = ()  # new or changed files modified within SETTLE_NS: left for a later tick

    @property
    def digest(self) -> str:
        return hashlib.sha256("\n".join(self.paths).encode()).hexdigest()[:16]


def snapshot(landing_dir: Path) -> dict[str, str]:
    """{relative path: "size:mtime_ns"} of every delivery under landing/<source>/."""
    out: dict[str, str] = {}
    for source in SOURCES:
        for f in fl.discover(landing_dir, source):
            try:
                st = f.path.stat()
            except FileNotFoundError:
                continue
            out[f.rel_path] = f"{st.st_size}:{st.st_mtime_ns}"
    return out


def changes(previous: dict[str, str], current: dict[str, str], now_ns: int | None = None,
            settle_ns: int | None = None) -> LandingChange | None:
    """The new or changed files of `current` against `previous` (None when there are none), those modified
    within `settle_ns` (default SETTLE_NS) of `now_ns` set aside as `waiting`."""
    now_ns = time.time_ns() if now_ns is None else now_ns
    settle_ns = SETTLE_NS if settle_ns is None else settle_ns
    changed = sorted(p for p, stamp in current.items() if previous.get(p) != stamp)
    if not changed:
        return None
    waiting = [p for p in changed if int(current[p].split(":")[1]) > now_ns - settle_ns]
    settled = [p for p in changed if int(current[p].split(":")[1]) <= now_ns - settle_ns]
    dates = [fl.batch_date_of(p)[0] for p in settled]
    return LandingChange(
        paths=tuple(settled),
        batch_dates=tuple(sorted({d for d in dates if d is not None})),
        undated=sum(1 for d in dates if d is None),
        waiting=tuple(waiting),
    )


def cursor_after(previous: dict[str, str], current: dict[str, str], change: LandingChange | None) -> dict[str, str]:
    """The listing a tick hands to the next: the current one, except that a file still waiting keeps the stamp
    it had (or stays out), so the next tick sees it as changed again."""
    out = dict(current)
    for p in change.waiting if change else ():
        if p in previous:
            out[p] = previous[p]
        else:
            del out[p]
    return out
