"""The landing sensor's listing (orchestration/landing.py): what it hands to a run, and what it leaves for later."""

from __future__ import annotations

import datetime as dt

from orchestration import landing

S = 1_000_000_000
NOW = 1_800_000_000 * S


def _stamp(size: int, mtime_ns: int, ctime_ns: int | None = None) -> landing.Stamp:
    return landing.Stamp(size, mtime_ns, mtime_ns if ctime_ns is None else ctime_ns)


def test_a_file_modified_within_the_settle_time_waits_for_a_later_tick():
    """A delivery still being copied in (crash review: a run started by the sensor read a CSV cut short): a
    new or changed file modified less than SETTLE_NS ago is left out of the run request and named in the cursor,
    so the next tick sees it as changed again and requests it once it has settled."""
    hour_ago = NOW - 3600 * S
    previous = landing.cursor_after({}, {"orders/orders_20240101.csv": _stamp(10, hour_ago),
                                         "orders/orders_20240102.csv": _stamp(10, hour_ago)}, None, hour_ago + S)
    current = {
        "orders/orders_20240101.csv": _stamp(10, hour_ago),  # unchanged
        "orders/orders_20240102.csv": _stamp(25, NOW - 5 * S),  # grown 5 s ago: still being written?
        "orders/orders_20240103.csv": _stamp(40, NOW - 31 * S),  # new, settled
        "orders/orders_20240104.csv": _stamp(7, NOW - 2 * S),  # new, just appeared
    }
    change = landing.changes(previous, current, now_ns=NOW, settle_ns=30 * S)
    assert change.paths == ("orders/orders_20240103.csv",) and change.batch_dates == (dt.date(2024, 1, 3),)
    assert change.waiting == ("orders/orders_20240102.csv", "orders/orders_20240104.csv")
    cursor = landing.cursor_after(previous, current, change, NOW)
    assert cursor["waiting"] == ["orders/orders_20240102.csv", "orders/orders_20240104.csv"]
    # the same listing a tick later: only the waiting files are news, and only once they have settled
    assert landing.changes(cursor, current, now_ns=NOW + S, settle_ns=30 * S).paths == ()
    later = landing.changes(cursor, current, now_ns=NOW + 60 * S, settle_ns=30 * S)
    assert later.paths == ("orders/orders_20240102.csv", "orders/orders_20240104.csv") and later.waiting == ()
    assert landing.changes(landing.cursor_after(cursor, current, later, NOW + 60 * S), current,
                           now_ns=NOW + 120 * S, settle_ns=30 * S) is None
    assert landing.SETTLE_NS == 30 * S


def test_the_cursor_stays_small_whatever_the_landing_zone_holds():
    """File-count review: the cursor was the whole listing (~78 bytes a file) and Dagster keeps a copy of it in
    every tick it records: 1.7 MB a tick at 21,000 files, once a minute, kept for ever for ticks that started a
    run. Now it holds a time, the stamps of files changed within CLOCK_MARGIN_NS of the listing and the files
    left waiting."""
    import json

    old = {f"channel_events/dt=2024-01-{d % 28 + 1:02d}/part-{i}.csv": _stamp(100, NOW - 86400 * S) for d in range(28)
           for i in range(1000)}
    first = landing.changes({}, old, now_ns=NOW, settle_ns=30 * S)
    assert len(first.paths) == 28_000 and len(first.batch_dates) == 28
    cursor = landing.cursor_after({}, old, first, NOW)
    assert len(json.dumps(cursor)) < 100 and cursor["seen"] == {}
    # one new file: one change, and the cursor holds that file's stamp (it changed within the margin) only
    current = {**old, "channel_events/dt=2024-01-29/part-0.csv": _stamp(100, NOW + 50 * S)}
    change = landing.changes(cursor, current, now_ns=NOW + 90 * S, settle_ns=30 * S)
    assert change.paths == ("channel_events/dt=2024-01-29/part-0.csv",)
    after = landing.cursor_after(cursor, current, change, NOW + 90 * S)
    assert list(after["seen"]) == ["channel_events/dt=2024-01-29/part-0.csv"] and len(json.dumps(after)) < 200
    assert landing.changes(after, current, now_ns=NOW + 150 * S, settle_ns=30 * S) is None


def test_a_file_renamed_into_place_with_an_old_mtime_is_new():
    """rsync -a and cp -p keep the source's mtime: the file's inode change time (set by the copy and the rename
    into place) is what says it is new, as a rewrite in place is told by it too."""
    cursor = landing.cursor_after({}, {}, None, NOW)
    year_ago = NOW - 365 * 86400 * S
    current = {"orders/orders_20231201.csv": _stamp(10, year_ago, NOW + 10 * S)}
    change = landing.changes(cursor, current, now_ns=NOW + 60 * S, settle_ns=30 * S)
    assert change.paths == ("orders/orders_20231201.csv",) and change.waiting == ()
    # rewritten in place to the same size, mtime set back: the ctime moved
    cursor = landing.cursor_after(cursor, current, change, NOW + 60 * S)
    rewritten = {"orders/orders_20231201.csv": _stamp(10, year_ago, NOW + 200 * S)}
    assert landing.changes(cursor, rewritten, now_ns=NOW + 300 * S, settle_ns=30 * S).paths == ("orders/orders_20231201.csv",)


def test_the_listing_cursor_of_an_earlier_privdom_is_read_once():
    """An upgraded sensor's first tick finds the old cursor, {path: "size:mtime"}: the files it names unchanged
    are no news, and the tick writes a cursor of the new form."""
    current = {"orders/orders_20240101.csv": _stamp(10, NOW - 3600 * S), "orders/orders_20240102.csv": _stamp(12, NOW - 600 * S)}
    legacy = {"orders/orders_20240101.csv": f"10:{NOW - 3600 * S}"}
    change = landing.changes(legacy, current, now_ns=NOW, settle_ns=30 * S)
    assert change.paths == ("orders/orders_20240102.csv",)
    cursor = landing.cursor_after(legacy, current, change, NOW)
    assert cursor == {"before": NOW - landing.CLOCK_MARGIN_NS, "listed_at": NOW, "seen": {}, "waiting": []}
    assert landing.changes(cursor, current, now_ns=NOW + 60 * S, settle_ns=30 * S) is None


def test_the_sensors_run_leaves_files_modified_after_its_cutoff_to_a_later_run(con, settings, land):
    """A file still being copied in may be of a date the sensor's run loads (diff review: the run loaded the
    file the sensor had set aside as waiting). The run carries the sensor's cutoff; its ingest steps neither read
    nor record a file modified after it, and a later run loads it."""
    import os
    import time

    from orchestration.defs.automation import run_request_for
    from orchestration.ingest import ingest_source

    header = "event_id,occurred_at,channel,event_type,openid,unionid,wecom_external_userid,phone,member_id,campaign,wecom_staff_userid\n"
    settled = land("channel_events/a_20240131.csv", header + "e1,2024-01-31T10:00:00+08:00,wecom,follow,o1,,,,,,\n")
    land("channel_events/b_20240131.csv", header + "e2,2024-01-31T10:00:00+08:00,wecom,follow,o2,,,,,,\n")
    now = time.time_ns()
    os.utime(settled, ns=(now - 60 * S, now - 60 * S))
    change = landing.LandingChange(paths=("channel_events/a_20240131.csv",), batch_dates=(dt.date(2024, 1, 31),), undated=0,
                                   waiting=("channel_events/b_20240131.csv",))
    request = run_request_for(change, now - 30 * S)
    assert request.partition_key == "2024-01-31" and request.tags[landing.SETTLED_BEFORE_TAG] == str(now - 30 * S)
    report = ingest_source(con, "channel_events", settings, "run1", modified_before_ns=now - 30 * S)
    assert [f.path for f in report.files] == ["channel_events/a_20240131.csv"]
    assert report.files_waiting == ["channel_events/b_20240131.csv"]
    assert con.execute("select count(*) from raw.ingestion_ledger").fetchone() == (1,)
    later = ingest_source(con, "channel_events", settings, "run2")
    assert [f.path for f in later.files] == ["channel_events/b_20240131.csv"] and later.files_waiting == []


def test_a_link_to_an_older_file_is_new_when_the_link_is(tmp_path):
    """A link to a file is a delivery (docs/data-contract.md), read as that file. The listing stamped it with the
    target's ctime: an archived file linked into landing/ more than CLOCK_MARGIN_NS after it was written was
    older than the cursor's time, and the sensor never requested it (the review's real-time run: a link made
    125 s after its target was in no tick's request)."""
    import os
    import time

    target = tmp_path / "archive" / "orders_20240105.csv"
    target.parent.mkdir()
    target.write_text("order_id\n1\n")
    (tmp_path / "landing" / "orders").mkdir(parents=True)
    time.sleep(0.05)
    link = tmp_path / "landing" / "orders" / "orders_20240105.csv"
    os.symlink(target, link)
    stamp = landing.snapshot(tmp_path / "landing")["orders/orders_20240105.csv"]
    assert stamp.ctime_ns == link.lstat().st_ctime_ns > target.stat().st_ctime_ns
    assert stamp.size == target.stat().st_size  # the target's size and mtime, as before
    # a tick between the target's write and the link: the link is new to the next one
    cursor = landing.cursor_after({}, {}, None, target.stat().st_ctime_ns + 1 + landing.CLOCK_MARGIN_NS)
    change = landing.changes(cursor, {"orders/orders_20240105.csv": stamp}, now_ns=stamp.mtime_ns + 60 * S)
    assert change is not None and change.paths == ("orders/orders_20240105.csv",)


def test_a_file_delivered_again_under_its_name_gets_a_new_run_key():
    """The run key was a digest of the paths alone, and Dagster launches one run per run key of a sensor
    (dagster/_daemon/sensor.py, _get_or_create_sensor_run: a request whose key has a run is skipped): a file
    delivered again, corrected, under its name (what the quarantine check's message suggests) was changed to the
    sensor and requested, and the request dropped as a duplicate, until the daily run."""
    cursor = landing.cursor_after({}, {}, None, NOW)
    first = {"orders/orders_20240105.csv": _stamp(10, NOW + 10 * S)}
    a = landing.changes(cursor, first, now_ns=NOW + 60 * S, settle_ns=30 * S)
    cursor = landing.cursor_after(cursor, first, a, NOW + 60 * S)
    again = {"orders/orders_20240105.csv": _stamp(12, NOW + 300 * S)}
    b = landing.changes(cursor, again, now_ns=NOW + 400 * S, settle_ns=30 * S)
    assert a.paths == b.paths == ("orders/orders_20240105.csv",)
    assert a.digest != b.digest


def test_a_folder_renamed_into_place_makes_its_files_new(tmp_path):
    """data-contract.md: write under a `_` name, rename into place when complete. A `dt=` folder so delivered (a
    Spark or Hive job commits a partition folder so) kept its files' ctimes, those of their writing: written
    more than CLOCK_MARGIN_NS before the rename, they were older than the cursor's time and never requested
    (the review's real-time run: a folder renamed in 125 s after its file was written, in no tick's request).
    A file added to the source's own folder does not make the others new."""
    import os
    import time

    orders = tmp_path / "landing" / "orders"
    (orders / "_dt=2024-01-06").mkdir(parents=True)
    (orders / "_dt=2024-01-06" / "part-0.csv").write_text("order_id\n1\n")
    (orders / "orders_20240101.csv").write_text("order_id\n2\n")
    written = (orders / "_dt=2024-01-06" / "part-0.csv").stat().st_ctime_ns
    time.sleep(0.05)
    os.rename(orders / "_dt=2024-01-06", orders / "dt=2024-01-06")
    current = landing.snapshot(tmp_path / "landing")
    stamp = current["orders/dt=2024-01-06/part-0.csv"]
    assert stamp.ctime_ns == (orders / "dt=2024-01-06").stat().st_ctime_ns > written
    # a tick between the write and the rename: the file is new to the next one
    cursor = landing.cursor_after({}, {}, None, written + 1 + landing.CLOCK_MARGIN_NS)
    change = landing.changes(cursor, {"orders/dt=2024-01-06/part-0.csv": stamp}, now_ns=stamp.mtime_ns + 60 * S)
    assert change is not None and change.paths == ("orders/dt=2024-01-06/part-0.csv",)
    # the flat file's stamp is its own: the source folder's ctime (changed by the rename) is not counted
    assert current["orders/orders_20240101.csv"].ctime_ns == (orders / "orders_20240101.csv").stat().st_ctime_ns


def test_after_the_clock_went_back_every_file_is_looked_at_again():
    """Diff review: `before` only moved forward, so after the host's clock stepped back (an NTP step, a restored
    VM) the files written until it caught up had ctimes at or before it and were never requested. A tick whose
    clock reads earlier than the last one's looks at every file once (one run over all dates; ingestion loads
    nothing twice) and starts its time afresh."""
    old = {"orders/orders_20240101.csv": _stamp(10, NOW - 3600 * S)}
    cursor = landing.cursor_after({}, old, landing.changes({}, old, now_ns=NOW, settle_ns=30 * S), NOW)
    stepped = NOW - 600 * S  # the clock went back ten minutes
    current = {**old, "orders/orders_20240102.csv": _stamp(12, stepped - 60 * S)}  # written after the step
    change = landing.changes(cursor, current, now_ns=stepped, settle_ns=30 * S)
    assert change.paths == ("orders/orders_20240101.csv", "orders/orders_20240102.csv")
    after = landing.cursor_after(cursor, current, change, stepped)
    assert after["before"] == stepped - landing.CLOCK_MARGIN_NS
    newer = {**current, "orders/orders_20240103.csv": _stamp(9, stepped + 30 * S)}
    assert landing.changes(after, newer, now_ns=stepped + 90 * S, settle_ns=30 * S).paths == ("orders/orders_20240103.csv",)
