"""Set-wise ingestion: one transaction per source run, files of different schemas judged together."""

from __future__ import annotations

import json

import pytest

import orchestration.ingest.core as core
from orchestration.ingest import ingest_source
from test_ingest_rules import GOOD, HEADERS


def test_run_is_one_transaction(con, settings, land, monkeypatch):
    land("orders/orders_20240131.csv", "\n".join([HEADERS["orders"], GOOD["orders"]]) + "\n")
    land("orders/orders_20240201.csv", "\n".join([HEADERS["orders"], GOOD["orders"].replace("g1,", "g2,")]) + "\n")
    land("orders/orders_20240202.xlsx", b"PK not really")

    def boom(*args, **kwargs):
        raise RuntimeError("crash after the inserts")

    monkeypatch.setattr(core, "_verify", boom)
    with pytest.raises(RuntimeError, match="crash"):
        ingest_source(con, "orders", settings, "run1")
    # nothing of the run is recorded: no raw rows, no ledger rows (not even the rejected file), no temp tables left
    assert con.execute("SELECT count(*) FROM raw.orders").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM raw.ingestion_ledger").fetchone()[0] == 0
    assert con.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE '_privdom_%'").fetchone()[0] == 0
    monkeypatch.undo()
    report = ingest_source(con, "orders", settings, "run2")
    assert [(f.status, f.file_id) for f in report.files] == [("loaded", 1), ("loaded", 2), ("rejected", 3)]
    assert con.execute("SELECT count(*) FROM raw.orders").fetchone()[0] == 2


def test_files_with_different_columns_keep_their_own_rows(con, settings, land):
    header = HEADERS["channel_events"].split(",")
    reordered = header[::-1]
    row = GOOD["channel_events"].split(",")
    bad = row.copy()
    bad[header.index("channel")] = "weibo"
    land("channel_events/a_20240131.csv", ",".join(header) + "\n" + ",".join(row) + "\n" + ",".join(bad) + "\n")
    land("channel_events/b_20240201.csv", ",".join(reordered) + "\n" + ",".join(bad[::-1]) + "\n" + ",".join(row[::-1]).replace("g1", "g2") + "\n")
    land("channel_events/c_20240202.csv", "event_id,occurred_at,channel,event_type,member_id\ng3,2024-02-04 10:00,wecom,follow,m3\n")
    report = ingest_source(con, "channel_events", settings, "t")
    assert [(f.rows_read, f.rows_loaded, f.rows_quarantined) for f in report.files] == [(2, 1, 1), (2, 1, 1), (1, 0, 1)]
    assert con.execute("SELECT event_id, _file_id, _batch_date::VARCHAR, _row_number FROM raw.channel_events ORDER BY 2").fetchall() == [
        ("g1", 1, "2024-01-31", 1), ("g2", 2, "2024-02-01", 2)]
    q = con.execute("SELECT file_id, row_number, rule, original_row FROM raw.quarantine ORDER BY file_id").fetchall()
    assert [(f, n, r) for f, n, r, _ in q] == [(1, 2, "channel.in_set"), (2, 1, "channel.in_set"), (3, 1, "timestamp.after_batch")]
    assert list(json.loads(q[0][3])) == header and list(json.loads(q[1][3])) == reordered
    frame = report.frame.to_pandas()
    assert frame["_file_id"].tolist() == [1, 1, 2, 2, 3] and frame["_row_number"].tolist() == [1, 2, 1, 2, 1]
