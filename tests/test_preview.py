"""Row counts and previews attached to materializations (orchestration/preview.py)."""

from __future__ import annotations

import duckdb

from orchestration import preview


def _con() -> duckdb.DuckDBPyConnection:
    con = duckdb.connect()
    con.execute("create schema intermediate")
    con.execute(
        "create table intermediate.t as select * from (values "
        "('C1', '13800138000', 'call 13912345678 now'), ('C2', null, 'no phone')) v(customer_key, phone, note)"
    )
    con.execute("create view intermediate.v as select * from intermediate.t")
    return con


def test_row_count_of_a_table_and_none_for_a_missing_table_or_a_view():
    con = _con()
    assert preview.row_count(con, "intermediate", "t") == 2
    assert preview.row_count(con, "intermediate", "missing") is None
    # a view is not counted: counting would compute it (int_touches__unioned: 11M rows at 1M customers)
    assert preview.row_count(con, "intermediate", "v") is None


def test_preview_masks_phones_and_skips_views():
    con = _con()
    text = preview.preview_markdown(con, "intermediate", "t")
    assert text.splitlines() == [
        "| customer_key | phone | note |",
        "|---|---|---|",
        "| C1 | 138****8000 | call 139****5678 now |",
        "| C2 |  | no phone |",
    ]
    assert preview.preview_markdown(con, "intermediate", "v") is None


def test_run_summary_counts_tables_and_leaves_views_out():
    from orchestration.ingest import ensure_raw_schema
    from orchestration.runner import _summary_queries

    con = _con()
    ensure_raw_schema(con)
    ledger, tables = _summary_queries(con)
    assert [row[0] for row in ledger] == ["channel_events", "orders", "referrals"]
    assert ("intermediate", "t", 2) in tables
    assert not [t for t in tables if t[1] == "v"]
