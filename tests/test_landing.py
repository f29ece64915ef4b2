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
