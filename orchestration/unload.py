"""Take loaded landing files back out of the warehouse (`privdom unload`): a file loaded by mistake (another
brand's, a test file, a wrong export).

Deleting a file from landing/ changes nothing, as raw keeps what was delivered (SPEC §2). `unload` deletes the
file's rows from `raw.<source>` and `raw.quarantine` in one transaction, marks its ledger row `unloaded` (the
row stays, as the record of the delivery, with what was taken out in `error`), and marks every dbt step's
incremental models as to be rebuilt from raw: the next `privdom run` rebuilds staging without the file, and the
identity graph builds in full (unload marks its state so: its checksum reads staging's first deliveries, and
an identical re-delivery of a tied version taken out changes none of them, yet re-ranks the tie). Customers the file had merged are split
again, the split-off ones under new keys (SPEC §3: a retired key is never used again).

A file is named by its path under landing/, as the ledger and the run summary print it; every content loaded
under that path is taken out. The file itself is not touched: left in landing/, it is not read again (its path
and content are in the ledger); delivered again under another name, it loads as a new file.
"""

from __future__ import annotations

import datetime as dt
import difflib
import os
import posixpath
from dataclasses import dataclass, field
from pathlib import Path

from orchestration.contract import SOURCES
from orchestration.settings import Settings, SettingsError

UNLOADED = "unloaded"


@dataclass(frozen=True)
class UnloadedFile:
    file_id: int
    source: str
    path: str
    batch_date: dt.date | None
    rows: int  # in raw.<source> before
    quarantined: int  # in raw.quarantine before
    # other landing paths recorded as `duplicate` of the same content: not loaded, and not read again either
    copies: tuple[str, ...] = ()


@dataclass
class UnloadReport:
    files: list[UnloadedFile] = field(default_factory=list)
    dry_run: bool = False

    def describe(self) -> str:
        from orchestration.ingest.files import shown

        verb = "would take out" if self.dry_run else "took out"
        lines = [f"privdom unload: {verb} {len(self.files)} loaded file(s)"]
        for f in self.files:
            lines.append(f"  {shown(f.path)} (file_id {f.file_id}, batch {f.batch_date or '-'}): {f.rows:,} rows of "
                         f"raw.{f.source}, {f.quarantined:,} of raw.quarantine")
            if f.copies:
                lines.append(f"    the same content was delivered as {', '.join(map(shown, f.copies))}, recorded as a "
                             "duplicate: it is not read again either (deliver it under a new name to load it)")
        if self.dry_run:
            lines.append("nothing was changed (--dry-run)")
        else:
            lines.append("their ledger rows say `unloaded`. The next `privdom run` rebuilds the models from raw and "
                         "the identity graph in full; the marts, BI copy and exports change only then.")
        return "\n".join(lines)


def ledger_path(settings: Settings, given: str) -> str:
    """The ledger's path (relative to landing/, posix) of a file named on the command line: as the ledger or the
    summary prints it (`orders/orders_20240530.csv`), or as a path to it under landing/ (relative to the working
    directory or absolute), which need no longer exist."""
    text = given
    if text.startswith('"') and text.endswith('"') and len(text) > 1:  # as the summary quotes an odd name
        import json

        try:
            text = json.loads(text)
        except ValueError:
            pass
    landing = Path(os.path.abspath(settings.landing_dir))
    candidate = Path(os.path.abspath(text))
    for base in (landing, Path(os.path.realpath(landing))):
        for path in (candidate, Path(os.path.realpath(candidate))):
            try:
                return path.relative_to(base).as_posix()
            except ValueError:
                continue
    text = posixpath.normpath(text) if text not in ("", ".") else text
    # `landing/orders/x.csv` from outside the data directory: the part after landing/, when it names a source
    head, sep, tail = text.rpartition("landing/")
    if sep and (not head or head.endswith("/")) and tail.split("/", 1)[0] in SOURCES:
        return tail
    return text


def unload(con, settings: Settings, given: list[str], *, dry_run: bool = False,
           now: dt.datetime | None = None) -> UnloadReport:
    """Take out every file of `given` (see ledger_path); raises SettingsError, changing nothing, when one is no
    loaded file of the ledger."""
    from orchestration import dbt as dbt_runner
    from orchestration import warehouse
    from orchestration.identity.graph import invalidate_after_unload
    from orchestration.ingest.rules import q

    if not warehouse.table_exists(con, "raw.ingestion_ledger"):
        raise SettingsError(f"{settings.warehouse_path} has loaded no file yet: nothing to unload")
    paths = list(dict.fromkeys(ledger_path(settings, g) for g in given))
    rows = con.execute(
        "select file_id, source, file_path, batch_date, status, error from raw.ingestion_ledger "
        "where file_path in (select unnest(?::varchar[])) order by file_id", [paths]).fetchall()
    problems = []
    for path in paths:
        mine = [r for r in rows if r[2] == path]
        if any(r[4] == "loaded" for r in mine):
            continue
        problems.append(_not_loaded(con, path, mine))
    if problems:
        raise SettingsError("; ".join(problems) + ". Nothing was unloaded")
    loaded = [r for r in rows if r[4] == "loaded"]
    counts = {}
    for source in sorted({r[1] for r in loaded}):
        ids = [r[0] for r in loaded if r[1] == source]
        counts.update({(source, i): n for i, n in con.execute(
            f"select _file_id, count(*) from raw.{q(source)} where _file_id in (select unnest(?::bigint[])) group by 1",
            [ids]).fetchall()})
    quarantined = dict(con.execute(
        "select file_id, count(*) from raw.quarantine where file_id in (select unnest(?::bigint[])) group by 1",
        [[r[0] for r in loaded]]).fetchall()) if warehouse.table_exists(con, "raw.quarantine") else {}
    copies: dict[int, tuple[str, ...]] = {}
    for file_id, path in con.execute(
            "select l.file_id, d.file_path from raw.ingestion_ledger l join raw.ingestion_ledger d "
            "on d.source = l.source and d.content_sha256 = l.content_sha256 and d.status = 'duplicate' "
            "where l.file_id in (select unnest(?::bigint[])) order by d.file_path", [[r[0] for r in loaded]]).fetchall():
        copies[file_id] = (*copies.get(file_id, ()), path)
    report = UnloadReport(dry_run=dry_run, files=[
        UnloadedFile(file_id, source, path, batch_date, counts.get((source, file_id), 0), quarantined.get(file_id, 0),
                     copies.get(file_id, ()))
        for file_id, source, path, batch_date, *_ in loaded])
    if dry_run:
        return report
    stamp = (now or dt.datetime.now(dt.UTC)).astimezone(dt.UTC)
    with warehouse.transaction(con):
        for f in report.files:
            con.execute(f"delete from raw.{q(f.source)} where _file_id = ?", [f.file_id])
            if quarantined:
                con.execute("delete from raw.quarantine where file_id = ?", [f.file_id])
            con.execute(
                "update raw.ingestion_ledger set status = ?, error = ? where file_id = ?",
                [UNLOADED, f"unloaded at {stamp:%Y-%m-%d %H:%M:%S} UTC by privdom unload: {f.rows} rows taken out of "
                 f"raw.{f.source}, {f.quarantined} of raw.quarantine", f.file_id])
        # the incremental models hold the file's rows: the next build of every step rebuilds them from raw
        dbt_runner.invalidate_fingerprint(con, marker=dbt_runner.UNLOADED)
        # and the identity graph builds in full: its checksum does not see an identical re-delivery taken out
        invalidate_after_unload(con)
    return report


def _not_loaded(con, path: str, mine: list[tuple]) -> str:
    from orchestration.ingest.files import shown

    if mine:
        statuses = sorted({r[4] for r in mine})
        return f"{shown(path)} is not loaded (its ledger row{'s say' if len(mine) > 1 else ' says'} {', '.join(statuses)})"
    like = [p for (p,) in con.execute(
        "select distinct file_path from raw.ingestion_ledger where status = 'loaded'").fetchall()]
    inside = sorted(p for p in like if p.startswith(path.rstrip("/") + "/"))
    if inside:  # a folder: its files are named one by one, so that nothing is taken out unseen
        return (f"{shown(path)} is a folder: name its files ({len(inside):,} loaded under it, e.g. "
                f"{', '.join(map(shown, inside[:3]))})")
    close = difflib.get_close_matches(path, like, n=3, cutoff=0.6)
    where = f"; loaded files with a like name: {', '.join(map(shown, close))}" if close else ""
    if path.split("/", 1)[0] not in SOURCES:
        where += f" (name it by its path under landing/, beginning with its source: {', '.join(SOURCES)})"
    return f"no loaded file {shown(path)} in raw.ingestion_ledger{where}"
