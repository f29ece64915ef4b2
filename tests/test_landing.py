"""The landing sensor's listing (orchestration/landing.py): what it hands to a run, and what it leaves for later."""

from __future__ import annotations

import datetime as dt

from orchestration import landing

S = 1_000_000_000
NOW = 1_800_000_000 * S


def test_a_file_modified_within_the_settle_time_waits_for_a_later_tick():
    """A delivery still being copied in (crash review: a run started by the sensor read a CSV cut short): a
    new or changed file modified less than SETTLE_NS ago is left out of the run request and out of the cursor,
    so the next tick sees it as changed again and requests it once it has settled."""
    previous = {"orders/orders_20240101.csv": f"10:{NOW - 3600 * S}", "orders/orders_20240102.csv": f"10:{NOW - 3600 * S}"}
    current = {
        "orders/orders_20240101.csv": f"10:{NOW - 3600 * S}",  # unchanged
        "orders/orders_20240102.csv": f"25:{NOW - 5 * S}",  # grown 5 s ago: still being written?
        "orders/orders_20240103.csv": f"40:{NOW - 31 * S}",  # new, settled
        "orders/orders_20240104.csv": f"7:{NOW - 2 * S}",  # new, just appeared
    }
    change = landing.changes(previous, current, now_ns=NOW, settle_ns=30 * S)
    assert change.paths == ("orders/orders_20240103.csv",) and change.batch_dates == (dt.date(2024, 1, 3),)
    assert change.waiting == ("orders/orders_20240102.csv", "orders/orders_20240104.csv")
    cursor = landing.cursor_after(previous, current, change)
    assert cursor == {"orders/orders_20240101.csv": previous["orders/orders_20240101.csv"],
                      "orders/orders_20240102.csv": previous["orders/orders_20240102.csv"],
                      "orders/orders_20240103.csv": current["orders/orders_20240103.csv"]}
    # a minute later both have settled: requested then, and nothing waits
    later = landing.changes(cursor, current, now_ns=NOW + 60 * S, settle_ns=30 * S)
    assert later.paths == ("orders/orders_20240102.csv", "orders/orders_20240104.csv") and later.waiting == ()
    assert landing.cursor_after(cursor, current, later) == current
    assert landing.SETTLE_NS == 30 * S


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
