"""Synthetic landing data for privdom: deterministic, vectorised, exercising every rule and metric.

``generate(landing_dir, customers, days, seed, dirty_rate, start_date)`` simulates a private-domain business
(customers acquired with growth, weekly seasonality and promo spikes; churn; channel events, order versions,
referral trees) as columnar arrays, then writes one file per source per batch day under
``landing_dir/<source>/``, rotating through every landing format. Only ``orchestration.contract`` is imported
from privdom: the files pass the same door as a customer's.

File names: ``<source>_YYYYMMDD.<ext>`` or ``dt=YYYY-MM-DD/part-0.<ext>``; formats rotate over a source's
batches in the order CSV UTF-8, CSV UTF-8 with BOM, CSV GBK, gzip CSV, Parquet, JSON Lines.
"""

from __future__ import annotations

import datetime as dt
import pathlib
import shutil
from dataclasses import dataclass, field

import numpy as np

from orchestration.contract import CONTRACTS, SOURCES
from orchestration.settings import MAX_DIRTY_RATE

from . import _dirty, _model, _write

__all__ = ["generate", "GenerateSummary", "FORMAT_NAMES"]

FORMAT_NAMES: tuple[str, ...] = tuple(name for name, _ in _write.FORMATS)
_SOURCE_OFFSET = {"channel_events": 0, "orders": 2, "referrals": 4}


@dataclass
class GenerateSummary:
    landing_dir: pathlib.Path
    customers: int
    days: int
    seed: int
    dirty_rate: float
    start_date: dt.date
    end_date: dt.date  # the last batch date
    files_written: int = 0
    rows_by_source: dict[str, int] = field(default_factory=dict)  # rows in readable files, dirty included
    dirty_rows_by_rule: dict[str, int] = field(default_factory=dict)  # "source:rule" -> rows
    bad_files: list[str] = field(default_factory=list)  # relative paths of deliberately unreadable files
    duplicate_files: list[str] = field(default_factory=list)  # byte-identical re-deliveries (relative paths)
    duplicate_rows: int = 0  # channel events re-delivered identically in a later batch
    conflict_rows: int = 0  # channel events re-delivered with the same event_id and different content
    late_rows_by_source: dict[str, int] = field(default_factory=dict)  # rows delivered after their event day
    files_by_format: dict[str, int] = field(default_factory=dict)

    @property
    def dirty_rows(self) -> int:
        return sum(self.dirty_rows_by_rule.values())

    def dirty_share(self, source: str) -> float:
        """Dirty rows of `source` over its rows: about the quarantine share of a first run on these files. Above
        `dirty_rate` when a source has few rows, since every contract rule gets at least one dirty row."""
        rows = self.rows_by_source.get(source, 0)
        dirty = sum(n for k, n in self.dirty_rows_by_rule.items() if k.split(":", 1)[0] == source)
        return dirty / rows if rows else 0.0

    def describe(self) -> str:
        lines = [
            f"Generated synthetic landing data in {self.landing_dir}",
            f"  {self.customers:,} customers, {self.days} days ({self.start_date} .. {self.end_date}), seed {self.seed}, dirty rate {self.dirty_rate:g}",
            f"  {self.files_written:,} files written ("
            + ", ".join(f"{k} {v}" for k, v in sorted(self.files_by_format.items())) + ")",
        ]
        for s, n in self.rows_by_source.items():
            lines.append(f"  {s:<15} {n:>12,} rows ({self.late_rows_by_source.get(s, 0):,} late)")
        lines.append(f"  duplicates: {self.duplicate_rows:,} re-delivered events, {self.conflict_rows:,} conflicting, "
                     f"{len(self.duplicate_files)} re-delivered file(s)")
        lines.append(f"  dirty rows: {self.dirty_rows:,} over {len(self.dirty_rows_by_rule)} rules ("
                     + ", ".join(f"{s} {self.dirty_share(s):.1%}" for s in self.rows_by_source) + ")")
        if self.bad_files:
            lines.append("  bad files (rejected on purpose): " + ", ".join(self.bad_files))
        return "\n".join(lines)


def _batch_name(source: str, day: dt.date, ext: str, folder: bool) -> str:
    if folder:
        return f"{source}/dt={day.isoformat()}/part-0{ext}"
    return f"{source}/{source}_{day.strftime('%Y%m%d')}{ext}"


def generate(
    landing_dir: pathlib.Path,
    customers: int = 2000,
    days: int = 120,
    seed: int = 42,
    dirty_rate: float = 0.01,
    start_date: dt.date = dt.date(2024, 1, 1),
    *,
    replace: bool = True,
) -> GenerateSummary:
    """Write synthetic landing files under ``landing_dir/<source>/``; the same arguments give the same bytes.

    With ``replace`` (the default) the three source folders are emptied first, so a re-run leaves exactly
    this run's files.
    """
    if customers < 1:
        raise ValueError("customers must be at least 1")
    if days < 1:
        raise ValueError("days must be at least 1")
    if not 0 <= dirty_rate < MAX_DIRTY_RATE:
        raise ValueError(f"dirty_rate must be in [0, {MAX_DIRTY_RATE})")
    landing_dir = pathlib.Path(landing_dir)
    seeds = np.random.SeedSequence(seed).spawn(8)
    rng = [np.random.default_rng(s) for s in seeds]

    world = _model.make_world(rng[0], customers, days, start_date)
    plan = _model.plan_referrals(world, rng[1])
    tables = {"channel_events": _model.make_events(world, rng[2])}
    tables["orders"], first = _model.make_orders(world, rng[3], plan)
    tables["referrals"] = _model.make_referrals(world, rng[4], plan, first)

    summary = GenerateSummary(landing_dir, customers, days, seed, dirty_rate, start_date,
                              start_date + dt.timedelta(days=days - 1))
    for t in tables.values():
        n = len(t["_batch"])
        t["_dirty"] = np.full(n, -1, np.int16)
        t["_dup"] = np.zeros(n, np.int8)
        t.setdefault("_re", np.full(n, -1, np.int64))
        t.setdefault("_rr", np.full(n, -1, np.int64))
        t.setdefault("_rcm", np.full(n, -1, np.int8))

    # re-deliveries of channel events: identical, and a handful with different content
    ev = tables["channel_events"]
    r = rng[5]
    n = len(ev["_batch"])
    dup = np.flatnonzero(r.random(n) < 0.005)
    con = r.choice(n, size=min(n, max(3, n // 5000)), replace=False)
    parts = [ev]
    for idx, kind in ((dup, 1), (np.sort(con), 2)):
        d = {k: v[idx].copy() for k, v in ev.items()}
        d["_batch"] = d["_batch"] + r.integers(1, 11, len(idx)).astype(np.int32)
        keep = d["_batch"] <= world.end_day
        d = {k: v[keep] for k, v in d.items()}
        d["_dup"][:] = kind
        if kind == 2:
            d["campaign"] = ((np.maximum(d["campaign"], -1) + 1 + r.integers(0, 3, len(d["campaign"])))
                             % len(_model.CAMPAIGNS)).astype(np.int16)
            summary.conflict_rows = len(d["_batch"])
        else:
            summary.duplicate_rows = len(d["_batch"])
        parts.append(d)
    tables["channel_events"] = {k: np.concatenate([p[k] for p in parts]) for k in ev}

    if replace:
        for s in SOURCES:
            p = landing_dir / s
            if p.is_dir():
                shutil.rmtree(p)
    landing_dir.mkdir(parents=True, exist_ok=True)

    written: list[tuple[str, int]] = []
    first_csv: dict[str, tuple[str, dt.date]] = {}
    for source in SOURCES:
        tab = tables[source]
        days_present = np.unique(tab["_batch"])
        ordinal = np.searchsorted(days_present, tab["_batch"])
        fmt_of_ordinal = (np.arange(len(days_present)) + _SOURCE_OFFSET[source]) % len(_write.FORMATS)
        text = np.isin(fmt_of_ordinal[ordinal], list(_write.TEXT_FORMATS))
        next_seq = int(tab[CONTRACTS[source].key].max(initial=-1)) + 1 + 10**6
        dirty, counts = _dirty.inject(source, tab, text, dirty_rate, rng[6], world.start0, next_seq)
        summary.dirty_rows_by_rule.update(counts)
        if dirty is not None:
            tab = {k: np.concatenate([tab[k], dirty[k]]) for k in tab}
        order = np.lexsort((tab["_sort"], tab["_batch"]))
        tab = {k: v[order] for k, v in tab.items()}
        # late: delivered in a batch after the day of the row's latest timestamp
        ts_cols = CONTRACTS[source].timestamp_columns
        latest = np.max(np.stack([np.where(tab[c] == _model.ABSENT, 0, tab[c]) for c in ts_cols]), axis=0)
        clean = tab["_dirty"] < 0
        summary.late_rows_by_source[source] = int((clean & (tab["_batch"] > _model.day_of(world, latest))).sum())
        bounds = np.searchsorted(tab["_batch"], days_present, side="left").tolist() + [len(tab["_batch"])]
        rows = 0
        for k, day_idx in enumerate(days_present.tolist()):
            lo, hi = bounds[k], bounds[k + 1]
            fmt = int(fmt_of_ordinal[k])
            day = start_date + dt.timedelta(days=day_idx)
            rel = _batch_name(source, day, _write.FORMATS[fmt][1], folder=(k % 4 == 2))
            b = {key: v[lo:hi] for key, v in tab.items()}
            _write.write_batch(landing_dir / rel, fmt, source, world, b, tz_aware=(k // 6) % 2 == 0)
            written.append((rel, fmt))
            rows += hi - lo
            if source == "channel_events" and fmt == 0 and k % 4 != 2 and source not in first_csv:
                first_csv[source] = (rel, day)
        summary.rows_by_source[source] = rows

    # the same file delivered twice under another name: loaded once (content hash)
    if "channel_events" in first_csv:
        rel, day = first_csv["channel_events"]
        dup_rel = f"channel_events/channel_events_{day.strftime('%Y%m%d')}_resend.csv"
        shutil.copyfile(landing_dir / rel, landing_dir / dup_rel)
        written.append((dup_rel, 0))
        summary.duplicate_files.append(dup_rel)
        with open(landing_dir / rel, "rb") as f:
            summary.rows_by_source["channel_events"] += sum(1 for _ in f) - 1

    # whole files that cannot be read, only when dirt is asked for
    if dirty_rate > 0:
        end = summary.end_date.strftime("%Y%m%d")
        bad_x = f"orders/orders_{end}.xlsx"
        (landing_dir / bad_x).parent.mkdir(parents=True, exist_ok=True)
        (landing_dir / bad_x).write_bytes(b"PK\x03\x04" + rng[7].bytes(508))
        ev = tables["channel_events"]
        pick = np.flatnonzero((ev["_dup"] == 0) & (ev["_dirty"] < 0))[:20]
        b = {k: v[pick].copy() for k, v in ev.items()}
        b["event_id"] = np.arange(len(pick), dtype=np.int64) + int(ev["event_id"].max(initial=0)) + 5 * 10**6
        text_cols = _write.render_text("channel_events", world, b)
        cols = [c for c in CONTRACTS["channel_events"].column_names if c != "event_type"]
        mid = start_date + dt.timedelta(days=days // 2)
        bad_c = f"channel_events/channel_events_{mid.strftime('%Y%m%d')}_manual.csv"
        (landing_dir / bad_c).write_bytes(_write.csv_bytes(cols, text_cols).encode("utf-8"))
        summary.bad_files = [bad_x, bad_c]
        written += [(bad_x, -1), (bad_c, 0)]

    summary.files_written = len(written)
    for _, fmt in written:
        name = FORMAT_NAMES[fmt] if fmt >= 0 else "other"
        summary.files_by_format[name] = summary.files_by_format.get(name, 0) + 1
    return summary
