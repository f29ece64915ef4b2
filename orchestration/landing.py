"""What is in the landing zone now, for the landing sensor: a cheap listing (path, size, mtime), no reads.

The sensor compares the listing with the one of its last tick; ingestion itself decides by content hash
what is new, so a listing that misses a change only delays a file to the next run that touches its date
(or the daily unpartitioned run), never loses it.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from dataclasses import dataclass
from pathlib import Path

from orchestration.contract import SOURCES
from orchestration.ingest import files as fl


@dataclass(frozen=True)
class LandingChange:
    paths: tuple[str, ...]  # new or changed files, relative to the landing dir
    batch_dates: tuple[dt.date, ...]  # their batch dates, sorted, distinct
    undated: int  # of them without a batch date (they will be rejected, with the reason)

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


def changes(previous: dict[str, str], current: dict[str, str]) -> LandingChange | None:
    changed = sorted(p for p, stamp in current.items() if previous.get(p) != stamp)
    if not changed:
        return None
    dates = [fl.batch_date_of(p)[0] for p in changed]
    return LandingChange(
        paths=tuple(changed),
        batch_dates=tuple(sorted({d for d in dates if d is not None})),
        undated=sum(1 for d in dates if d is None),
    )
