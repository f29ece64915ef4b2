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


def test_preview_hides_a_phone_hash_and_masks_every_spelling():
    """Beside phone_masked (10,000 candidates) an unsalted phone hash is the phone, so a preview hides it whole,
    in phone_sha256 and in a contact handle that is one; dotted and full-width phones are masked too (the
    privacy review found both clear in raw and staging previews)."""
    import hashlib

    digest = hashlib.sha256(b"8613912345678").hexdigest()
    con = duckdb.connect()
    con.execute("create schema marts")
    con.execute("create table marts.t (customer_key varchar, phone_masked varchar, phone_sha256 varchar, "
                "contact_handle varchar, note varchar)")
    con.execute("insert into marts.t values (?, '139****5678', ?, ?, '139.1234.5601 / １３９１２３４５６０２')",
                ["C1", digest, digest])
    text = preview.preview_markdown(con, "marts", "t")
    assert text.splitlines()[2] == "| C1 | 139****5678 | (sha256) | (sha256) | 139****5601 / 139****5602 |"
    assert digest[:8] not in text
    # a file's content hash is not a person's: the ledger's stays visible (diff review)
    con.execute("create schema raw")
    con.execute("create table raw.ingestion_ledger as select 'orders/o_20240131.csv' as file_path, ? as content_sha256", [digest])
    assert digest[:39] in preview.preview_markdown(con, "raw", "ingestion_ledger")


def test_a_cell_from_outside_stays_one_cell_and_makes_no_link():
    """Text delivered from outside reaches the Dagster UI's Markdown: a campaign in a preview, a landing file's name
    in the ingest step's file table. A carriage return ended the table row (only LF was replaced), and
    `[text](url)` rendered as a link with text of the sender's choosing."""
    from markdown_it import MarkdownIt

    from orchestration.defs.ingest import _file_table

    render = MarkdownIt("commonmark").enable("table").render
    con = duckdb.connect()
    con.execute("create schema staging")
    con.execute("create table staging.t (event_id varchar, campaign varchar)")
    con.execute("insert into staging.t values ('e1', 'spring' || chr(13) || '| x | y |'), "
                "('e2', '[Verify account](https:evil.io)'), ('e3', '<b>bold</b> `code`')")
    html = render(preview.preview_markdown(con, "staging", "t"))
    assert html.count("<tr>") == 4 and html.count("<td") == 6  # a header and three rows of two cells
    assert "<a " not in html and "<code>" not in html and "<b>" not in html
    assert "[Verify account](https:evil.io)" in html and "spring | x | y |" in html

    class F:
        def __init__(self, path, error=None):
            self.path, self.error, self.status = path, error, "rejected" if error else "loaded"
            self.rows_read = self.rows_loaded = self.rows_quarantined = 0

    class Report:
        files = [F("orders/orders_20240115_a|b.csv"), F("orders/orders_20240115_[re-upload](https:evil.io).csv"),
                 F("orders/orders_20240115_x\nline.csv", "orders/orders_20240115_x\nline.csv: bad | worse")]

    html = render(_file_table(Report()))
    assert html.count("<tr>") == 4 and html.count("<td") == 18  # a header and three rows of six cells
    assert "<a " not in html and "orders/orders_20240115_a|b.csv" in html
