"""`privdom quarantine`: a steward gets the quarantined rows back as a CSV to correct, delivers it again, and
sees which rows a later delivery corrected (SPEC §2: quarantined rows can be corrected and re-delivered)."""

from __future__ import annotations

import csv

from orchestration.cli import main
from orchestration.ingest import ingest_source
from orchestration.quarantine import quarantined_rows, write_csv
from orchestration.warehouse import connect

HEADER = "order_id,updated_at,created_at,status,gross_amount,openid,paid_at\n"


def _ingest(settings, source, load_id):
    con = connect(settings.warehouse_path)
    try:
        return ingest_source(con, source, settings, load_id)
    finally:
        con.close()


def _rows(settings, **kw):
    con = connect(settings.warehouse_path, read_only=True)
    try:
        return quarantined_rows(con, **kw)
    finally:
        con.close()


def test_quarantined_rows_go_out_as_a_csv_come_back_corrected_and_are_no_longer_open(settings, land, tmp_path, capsys):
    land("orders/orders_20240131.csv", HEADER
         + "A1,2024-01-31 10:00:00,2024-01-31 09:00:00,paid,10.00,oA1,2024-01-31 10:00:00\n"
         + "A2,2024-01-31 11:00:00+08,2024-01-31 09:00:00,lost,12.50,oA2,2024-01-31 10:00:00\n"
         + "A3,2024-01-31 12:00:00,2024-01-31 09:00:00,paid,19.999,oA3,2024-01-31 10:00:00\n")
    land("channel_events/channel_events_20240131.csv",
         "event_id,occurred_at,channel,event_type,openid\nE1,2024-01-31 10:00:00,tiktok,opt_out,oA1\n")
    _ingest(settings, "orders", "run1")
    _ingest(settings, "channel_events", "run1")
    rows = _rows(settings)
    assert [(r.source, r.file_path, r.row_number, r.corrected_in) for r in rows] == [
        ("channel_events", "channel_events/channel_events_20240131.csv", 1, None),
        ("orders", "orders/orders_20240131.csv", 2, None),
        ("orders", "orders/orders_20240131.csv", 3, None)]

    # out as a CSV, with the contract's columns as delivered and the place of each row
    out = tmp_path / "fix.csv"
    assert write_csv(_rows(settings, source="orders"), out) == 2
    fixed = list(csv.DictReader(out.open(encoding="utf-8")))
    assert [(r["order_id"], r["updated_at"], r["status"], r["gross_amount"], r["_file"], r["_row_number"], r["_rules"])
            for r in fixed] == [("A2", "2024-01-31 11:00:00+08", "lost", "12.50", "orders/orders_20240131.csv", "2", "status.in_set"),
                                ("A3", "2024-01-31 12:00:00", "paid", "19.999", "orders/orders_20240131.csv", "3", "gross_amount.type")]
    # the steward corrects A2 only and delivers the file again under a new name: the extra columns are ignored
    fixed[0]["status"] = "paid"
    fixed = fixed[:1]
    with (settings.landing_dir / "orders" / "orders_fix_20240201.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.DictWriter(f, list(fixed[0]))
        w.writeheader()
        w.writerows(fixed)
    land("channel_events/channel_events_20240201.csv",
         "event_id,occurred_at,channel,event_type,openid\nE1,2024-01-31 10:00:00,wecom,opt_out,oA1\n")
    report = _ingest(settings, "orders", "run2")
    assert (report.rows_loaded, report.rows_quarantined) == (1, 0)
    _ingest(settings, "channel_events", "run2")

    assert [(r.file_path, r.row_number, r.corrected_in) for r in _rows(settings)] == [
        ("channel_events/channel_events_20240131.csv", 1, "channel_events/channel_events_20240201.csv"),
        ("orders/orders_20240131.csv", 2, "orders/orders_fix_20240201.csv"),
        ("orders/orders_20240131.csv", 3, None)]
    capsys.readouterr()
    assert main(["--data-dir", str(settings.data_dir), "quarantine", "--open"]) == 0
    printed = capsys.readouterr()
    assert printed.out == "orders/orders_20240131.csv\trow 3\tgross_amount.type\topen\n"
    assert "3 quarantined row(s), 1 open, 2 corrected by a later delivery" in printed.err


def test_a_header_spelt_otherwise_is_matched_and_written_under_the_contracts_names(settings, land, tmp_path):
    """Columns are matched by name whatever their case and surrounding spaces (docs/data-contract.md), and
    original_row keeps the file's spelling: the correction was never matched (the key looked up as `order_id`
    only), and the CSV had an empty `order_id` beside the `Order_ID` that held the value."""
    land("orders/orders_20240131.csv", "Order_ID, Updated_At ,created_at,status,gross_amount,openid\n"
         "B1,2024-01-31 10:00:00,2024-01-31 09:00:00,lost,10.00,oB1\n")
    _ingest(settings, "orders", "run1")
    out = tmp_path / "fix.csv"
    write_csv(_rows(settings, source="orders"), out)
    (row,) = list(csv.DictReader(out.open(encoding="utf-8")))
    assert (row["order_id"], row["updated_at"], row["status"]) == ("B1", "2024-01-31 10:00:00", "lost")
    assert "Order_ID" not in row and " Updated_At " not in row
    land("orders/orders_fix_20240201.csv", "order_id,updated_at,created_at,status,gross_amount,openid\n"
         "B1,2024-01-31 10:00:00,2024-01-31 09:00:00,created,10.00,oB1\n")
    _ingest(settings, "orders", "run2")
    assert [r.corrected_in for r in _rows(settings)] == ["orders/orders_fix_20240201.csv"]


def test_files_are_named_as_unload_takes_them_and_an_unknown_one_is_refused(settings, land, capsys, monkeypatch):
    path = land("orders/orders_20240131.csv", HEADER
                + "A2,2024-01-31 11:00:00+08,2024-01-31 09:00:00,lost,12.50,oA2,2024-01-31 10:00:00\n")
    _ingest(settings, "orders", "run1")
    data_dir = str(settings.data_dir)
    expected = "orders/orders_20240131.csv\trow 1\tstatus.in_set\topen\n"
    # by its path under landing/, by an absolute path, and by a path relative to the working directory
    monkeypatch.chdir(settings.data_dir)
    for name in ("orders/orders_20240131.csv", str(path), "landing/orders/orders_20240131.csv"):
        capsys.readouterr()
        assert main(["--data-dir", data_dir, "quarantine", name]) == 0, name
        assert capsys.readouterr().out == expected, name
    # a name the ledger does not know is a mistake, not "0 quarantined rows"
    capsys.readouterr()
    assert main(["--data-dir", data_dir, "quarantine", "orders/orders_20240132.csv"]) == 2
    printed = capsys.readouterr()
    assert printed.out == ""
    assert "no file orders/orders_20240132.csv in raw.ingestion_ledger" in printed.err


def test_a_csv_that_cannot_be_written_names_the_option(settings, land, tmp_path, capsys):
    land("orders/orders_20240131.csv", HEADER
         + "A2,2024-01-31 11:00:00+08,2024-01-31 09:00:00,lost,12.50,oA2,2024-01-31 10:00:00\n")
    _ingest(settings, "orders", "run1")
    capsys.readouterr()
    out = tmp_path / "no such folder" / "fix.csv"
    assert main(["--data-dir", str(settings.data_dir), "quarantine", "--source", "orders", "--csv", str(out)]) == 1
    err = capsys.readouterr().err
    assert err == f"privdom quarantine: --csv {out}: cannot be written (No such file or directory)\n", err


def test_before_any_load_nothing_is_quarantined_and_a_file_named_is_unknown(tmp_path, capsys):
    """A data directory with no warehouse yet lists 0 rows and exits 0, as one whose loads quarantined nothing
    (it exited 2, which a monitoring script took for a failure); a file named there is unknown, exit 2."""
    data_dir = tmp_path / "fresh"
    assert main(["--data-dir", str(data_dir), "quarantine", "--open"]) == 0
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == "0 quarantined row(s), 0 open, 0 corrected by a later delivery\n"
    assert main(["--data-dir", str(data_dir), "quarantine", "orders/orders_20240131.csv"]) == 2
    assert "no file orders/orders_20240131.csv in raw.ingestion_ledger" in capsys.readouterr().err
    assert not (data_dir / "warehouse.duckdb").exists()  # reading made no warehouse


def test_a_row_sent_again_unchanged_is_listed_once_at_its_latest_copy(settings, land, capsys):
    """A feed that sends the last days again each day quarantines a bad row once per file (the windowed
    re-delivery review: 7 lines for one row). Each original row is listed once, at its latest copy, with how
    often and where it came first; it is corrected once a file loaded after its first copy holds a row of its
    key (here the valid version beside the bad one, sent again), whatever copies came after."""
    bad_version = "A2,2024-01-31 11:00:00+08,2024-01-31 09:00:00,lost,12.50,oA2,2024-01-31 10:00:00\n"
    valid_version = "A2,2024-01-31 11:00:00+08,2024-01-31 09:00:00,paid,12.50,oA2,2024-01-31 10:00:00\n"
    no_key = ",2024-01-31 11:00:00+08,2024-01-31 09:00:00,paid,9.00,oA9,2024-01-31 10:00:00\n"
    day = HEADER + valid_version + bad_version + no_key
    land("orders/orders_20240131.csv", day)
    _ingest(settings, "orders", "run1")
    land("orders/orders_20240201.csv", day + "A3,2024-02-01 11:00:00+08,2024-02-01 09:00:00,paid,5.00,oA3,2024-02-01 10:00:00\n")
    _ingest(settings, "orders", "run2")
    # the window still holds the 31st (a file of the same content would be a duplicate, loaded once)
    land("orders/orders_20240202.csv", day + "A4,2024-02-02 11:00:00+08,2024-02-02 09:00:00,paid,5.00,oA4,2024-02-02 10:00:00\n")
    _ingest(settings, "orders", "run3")
    rows = _rows(settings)
    assert [(r.file_path, r.row_number, r.rules, r.corrected_in, r.copies, r.first_file) for r in rows] == [
        ("orders/orders_20240202.csv", 2, "status.in_set", "orders/orders_20240201.csv", 3, "orders/orders_20240131.csv"),
        ("orders/orders_20240202.csv", 3, "order_id.required", None, 3, "orders/orders_20240131.csv")]
    capsys.readouterr()
    assert main(["--data-dir", str(settings.data_dir), "quarantine", "--open"]) == 0
    printed = capsys.readouterr()
    assert printed.out == (
        "orders/orders_20240202.csv\trow 3\torder_id.required\topen (sent 3 times, first in orders/orders_20240131.csv)\n")
    assert printed.err == "2 quarantined row(s) (6 copies: rows sent again unchanged are listed once), 1 open, 1 corrected by a later delivery\n"
    # one file named: its own copies only
    assert [(r.file_path, r.copies) for r in _rows(settings, files=["orders/orders_20240131.csv"])] == [
        ("orders/orders_20240131.csv", 1), ("orders/orders_20240131.csv", 1)]


def test_a_correction_stays_one_while_the_feed_sends_the_bad_row_again(settings, land, capsys):
    """The steward corrects a bad row and delivers it; the feed's window sends the bad row once more the next day
    (the source system still holds it). The row stays corrected: it was listed open again, and `--open --csv`
    wrote it out to be corrected a second time (diff review)."""
    bad = "A2,2024-01-31 11:00:00+08,2024-01-31 09:00:00,lost,12.50,oA2,2024-01-31 10:00:00\n"
    land("orders/orders_20240131.csv", HEADER + bad)
    _ingest(settings, "orders", "run1")
    land("orders/orders_fix_20240201.csv", HEADER + bad.replace(",lost,", ",paid,"))
    _ingest(settings, "orders", "run2")
    land("orders/orders_20240201.csv", HEADER + bad + "A3,2024-02-01 11:00:00+08,2024-02-01 09:00:00,paid,5.00,oA3,2024-02-01 10:00:00\n")
    _ingest(settings, "orders", "run3")
    assert [(r.file_path, r.corrected_in, r.copies) for r in _rows(settings)] == [
        ("orders/orders_20240201.csv", "orders/orders_fix_20240201.csv", 2)]
    capsys.readouterr()
    assert main(["--data-dir", str(settings.data_dir), "quarantine", "--open"]) == 0
    assert capsys.readouterr().out == ""
