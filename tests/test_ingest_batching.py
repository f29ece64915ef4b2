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


@pytest.mark.parametrize("small_file_rows", [1, 3, 4, 10**6],
                         ids=["each-file-its-own-input", "large-small-large", "small-small-large", "all-appended"])
def test_files_of_one_schema_keep_their_order_and_row_numbers(con, settings, land, monkeypatch, small_file_rows):
    """Files of the same schema are judged in one statement over all of them, whether each file is an input of
    its own, small ones are appended together, or both: every row keeps its own file, row number and place,
    and the GX frame's delivered event id (a string column: stored once) is the text."""
    monkeypatch.setattr(core, "SMALL_FILE_ROWS", small_file_rows)
    header = HEADERS["channel_events"]
    row = GOOD["channel_events"].split(",")

    def line(event_id: str, channel: str = "wecom") -> str:
        r = row.copy()
        r[0], r[2] = event_id, channel
        return ",".join(r)

    land("channel_events/a_20240131.csv", "\n".join([header, line("a1"), line("a2", "weibo"), line(" a3 ")]) + "\n")
    land("channel_events/b_20240131.csv", "\n".join([header, line("b1"), line("b2")]) + "\n")
    land("channel_events/c_20240131.csv", "\n".join([header, line("c1", "weibo"), line("c2"), line("c3"), line("c4")]) + "\n")
    report = ingest_source(con, "channel_events", settings, "t")
    assert [(f.file_id, f.rows_read, f.rows_loaded, f.rows_quarantined) for f in report.files] == [
        (1, 3, 2, 1), (2, 2, 2, 0), (3, 4, 3, 1)]
    # rows land in file and row order (the table's own order, not only when sorted)
    assert con.execute("SELECT event_id, _file_id, _row_number FROM raw.channel_events ORDER BY rowid").fetchall() == [
        ("a1", 1, 1), ("a3", 1, 3), ("b1", 2, 1), ("b2", 2, 2), ("c2", 3, 2), ("c3", 3, 3), ("c4", 3, 4)]
    assert con.execute("SELECT file_id, row_number, json_extract_string(original_row, '$.event_id') FROM raw.quarantine "
                       "ORDER BY file_id").fetchall() == [(1, 2, "a2"), (3, 1, "c1")]
    frame = report.frame.to_pandas()
    assert list(zip(frame["_file_id"], frame["_row_number"], frame["event_id__delivered"])) == [
        (1, 1, "a1"), (1, 2, "a2"), (1, 3, "a3"), (2, 1, "b1"), (2, 2, "b2"),
        (3, 1, "c1"), (3, 2, "c2"), (3, 3, "c3"), (3, 4, "c4")]
    assert frame["channel"].tolist() == ["wecom", "weibo", "wecom", "wecom", "wecom", "weibo", "wecom", "wecom", "wecom"]


@pytest.mark.parametrize("column", ["RowID", "__privdom_bl", "__PRIVDOM_FID", "__privdom_rn"])
@pytest.mark.parametrize("small_file_rows", [1, 10**6], ids=["own-input", "appended"])
@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_a_delivered_rowid_column_does_not_replace_the_row_number(con, settings, land, tmp_path, monkeypatch, fmt,
                                                                   small_file_rows, column):
    """An extra column named like DuckDB's row id or like a staging table's lineage column (any case, any type)
    is just an extra column: file ids, row numbers and the batch limit are the file's own, and the column's
    values stay in the quarantined original row."""
    monkeypatch.setattr(core, "SMALL_FILE_ROWS", small_file_rows)
    header = HEADERS["channel_events"] + "," + column
    good = GOOD["channel_events"]
    files = {  # two files of one schema: the second is appended to the first when both are small
        "x": [good + ",77", good.replace("wecom,", "weibo,").replace("g1", "g2") + ",78"],
        "y": [good.replace("g1", "g3") + ",5"],
    }
    for stem, rows in files.items():
        if fmt == "csv":
            land(f"channel_events/{stem}_20240131.csv", "\n".join([header, *rows]) + "\n")
        else:
            import duckdb

            csv = tmp_path / f"{stem}.csv"
            csv.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
            out = tmp_path / f"{stem}.parquet"
            duckdb.connect().execute(f"COPY (SELECT * REPLACE (CAST({column} AS INTEGER) AS {column}) FROM read_csv('{csv}', all_varchar = true)) "
                                     f"TO '{out}' (FORMAT parquet)")
            land(f"channel_events/{stem}_20240131.parquet", out.read_bytes())
    report = ingest_source(con, "channel_events", settings, "t")
    assert [(f.status, f.rows_read, f.rows_loaded, f.rows_quarantined) for f in report.files] == [
        ("loaded", 2, 1, 1), ("loaded", 1, 1, 0)]
    assert con.execute("SELECT event_id, _file_id, _row_number FROM raw.channel_events ORDER BY 2").fetchall() == [
        ("g1", 1, 1), ("g3", 2, 1)]
    number, original = con.execute("SELECT row_number, original_row FROM raw.quarantine").fetchone()
    assert number == 2 and json.loads(original)[column] == "78"
    # the batch limit is the files' own (batch date 2024-01-31 + 2 days, 00:00 Asia/Shanghai)
    frame = report.frame.to_pandas()
    assert {str(t) for t in frame["h__batch_limit"]} == {"2024-02-02 00:00:00+08:00"}
