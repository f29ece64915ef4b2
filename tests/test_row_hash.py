"""Raw rows' `_row_hash` (orchestration.ingest.rules.row_hash_expr, ROW_HASH_SCHEME): one function for every row
of a warehouse, whatever scheme or DuckDB version hashed the rows already loaded (docs/DECISIONS.md)."""

from __future__ import annotations

import re

import duckdb
import pytest

from orchestration.ingest import ensure_raw_schema, ingest_source
from orchestration.ingest import rules as R
from orchestration.ingest.core import rehash_raw_rows
from tests.test_ingest_files import CE_CSV, ORDERS_CSV

O1_PAID = "o1,2024-01-31 12:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,paid,mini_program,199.90,10.00,0,100,邀请码A,op1,,,,\n"
O1_DONE = "o1,2024-02-02 09:00:00,2024-01-31 10:00:00,2024-01-31 10:05:00,completed,mini_program,199.90,10.00,0,100,邀请码A,op1,,,,\n"
ORDERS_HEADER = ORDERS_CSV.splitlines(keepends=True)[0]


def _hashes(con, source: str, key: str) -> list[tuple]:
    return con.execute(f"SELECT {key}, _file_id, _row_number, _row_hash FROM raw.{source} ORDER BY ALL").fetchall()


def test_row_hash_is_a_bigint_and_the_judge_and_a_rehash_agree(con, settings, land):
    """The judge hashes typed values as it writes them (t__ columns); hashing the raw table again over its own
    columns gives every row the same value, so rows loaded before and after a rehash compare. The column is a
    signed BIGINT: DuckDB's unsigned 64-bit hash minus 2^63."""
    land("channel_events/ce_20240131.csv", CE_CSV)
    land("orders/orders_20240131.csv", ORDERS_CSV)
    for source in ("channel_events", "orders"):
        ingest_source(con, source, settings, "run1")
    before = {"channel_events": _hashes(con, "channel_events", "event_id"), "orders": _hashes(con, "orders", "order_id")}
    assert len(before["channel_events"]) == 3 and len(before["orders"]) == 2
    for source, rows in before.items():
        assert con.execute(f"SELECT DISTINCT typeof(_row_hash) FROM raw.{source}").fetchall() == [("BIGINT",)]
        assert all(isinstance(h, int) and -2**63 <= h < 2**63 for *_, h in rows), rows
        assert len({h for *_, h in rows}) == len(rows)  # different contents, different hashes
    # the unsigned hash, shifted down by 2^63 (same order, every value its own)
    from orchestration.contract import contract

    cols = ", ".join(R.q(col.name) for col in contract("orders").columns)
    assert con.execute(f"SELECT bool_and(CAST(hash({cols}) AS HUGEINT) - _row_hash = 9223372036854775808) FROM raw.orders").fetchone() == (True,)
    assert rehash_raw_rows(con) == {"channel_events": 3, "orders": 2, "referrals": 0}
    assert _hashes(con, "channel_events", "event_id") == before["channel_events"]
    assert _hashes(con, "orders", "order_id") == before["orders"]


def test_the_hash_covers_every_contract_column_and_tells_null_from_empty(con):
    """A row's hash changes with any one column's value, and a NULL differs from an empty text."""
    from orchestration.contract import contract

    c = contract("orders")
    expr = R.row_hash_expr(c, R.q)
    con.execute("CREATE SCHEMA raw")
    con.execute(R.raw_table_ddl(c))
    con.execute("INSERT INTO raw.orders (order_id, status) VALUES ('o1', 'paid')")
    base = con.execute(f"SELECT {expr} FROM raw.orders").fetchone()[0]
    seen = {base}
    for col in c.columns:
        if col.name == "order_id":
            continue
        value = {"string": "''", "enum": "''", "phone": "''", "timestamp": "TIMESTAMPTZ '2024-01-01 00:00:00+08'",
                 "decimal": "0", "integer": "0"}[col.type]
        if col.name == "status":
            value = "NULL"
        h = con.execute(f"SELECT {expr} FROM (SELECT * REPLACE ({value} AS {R.q(col.name)}) FROM raw.orders) AS orders").fetchone()[0]
        assert h not in seen, col.name
        seen.add(h)


@pytest.mark.parametrize("scheme", ["md5", "hash64-typed-v1"])
def test_a_warehouse_hashed_by_an_older_scheme_is_hashed_again_before_a_run_loads(con, settings, land, scheme):
    """A warehouse whose rows carry text hashes (md5 of the typed row as JSON, from before raw.row_hash_scheme
    existed; or scheme v1's DuckDB hash as 16 hex digits): the next ingestion makes the column BIGINT and hashes
    the rows again first (reported per source), so an identical re-delivery of an order version shares its
    first delivery's hash and staging keeps one version of it."""
    land("orders/orders_20240131.csv", ORDERS_HEADER + O1_PAID)
    ingest_source(con, "orders", settings, "run1")
    current = con.execute("SELECT _row_hash FROM raw.orders").fetchone()[0]
    # the warehouse as the older scheme left it
    con.execute("ALTER TABLE raw.orders ALTER COLUMN _row_hash SET DATA TYPE VARCHAR")
    if scheme == "md5":  # no scheme recorded
        con.execute("UPDATE raw.orders SET _row_hash = md5(CAST(to_json(struct_pack(order_id, updated_at, status)) AS VARCHAR))")
        con.execute("DROP TABLE raw.row_hash_scheme")
        assert len(con.execute("SELECT _row_hash FROM raw.orders").fetchone()[0]) == 32
    else:
        from orchestration.contract import contract

        cols = ", ".join(R.q(col.name) for col in contract("orders").columns)
        con.execute(f"UPDATE raw.orders SET _row_hash = printf('%016x', hash({cols}))")
        con.execute("UPDATE raw.row_hash_scheme SET scheme = 'hash64-typed-v1'")
        assert re.fullmatch(r"[0-9a-f]{16}", con.execute("SELECT _row_hash FROM raw.orders").fetchone()[0])

    land("orders/orders_20240202.csv", ORDERS_HEADER + O1_PAID + O1_DONE)  # the paid version again, and a new one
    report = ingest_source(con, "orders", settings, "run2")
    assert report.rows_rehashed == {"orders": 1}
    assert con.execute("SELECT DISTINCT typeof(_row_hash) FROM raw.orders").fetchall() == [("BIGINT",)]
    rows = con.execute("SELECT _file_id, status, _row_hash FROM raw.orders ORDER BY _file_id, _row_number").fetchall()
    assert [(f, s) for f, s, _ in rows] == [(1, "paid"), (2, "paid"), (2, "completed")]
    assert current == rows[0][2] == rows[1][2] != rows[2][2]
    assert con.execute("SELECT scheme, duckdb_version FROM raw.row_hash_scheme").fetchall() == [
        (R.ROW_HASH_SCHEME, duckdb.__version__)]
    # nothing to do the next time
    assert ingest_source(con, "orders", settings, "run3").rows_rehashed == {}


def test_another_duckdb_version_hashes_again_once(con, settings, land):
    """DuckDB does not promise its `hash` across versions: a warehouse last hashed by another version is hashed
    again (every source), and only once."""
    land("channel_events/ce_20240131.csv", CE_CSV)
    ingest_source(con, "channel_events", settings, "run1")
    assert ensure_raw_schema(con) is None
    before = _hashes(con, "channel_events", "event_id")
    con.execute("UPDATE raw.channel_events SET _row_hash = 0")
    con.execute("UPDATE raw.row_hash_scheme SET duckdb_version = '0.0.1'")
    assert ensure_raw_schema(con) == {"channel_events": 3, "orders": 0, "referrals": 0}
    assert _hashes(con, "channel_events", "event_id") == before
    assert ensure_raw_schema(con) is None
    assert con.execute("SELECT count(*) FROM raw.row_hash_scheme").fetchone()[0] == 1


def test_a_failed_raw_insert_raises_its_own_error_and_leaves_the_connection_as_it_was(con, settings, land):
    """The raw insert runs with `preserve_insertion_order` off for its statement only: when it fails, its own
    error comes out (not the aborted transaction's refusal to reset the setting), nothing is loaded, and the
    connection has its default again."""
    from orchestration.contract import contract

    ddl = R.raw_table_ddl(contract("channel_events"))
    con.execute("CREATE SCHEMA raw")
    con.execute(ddl[: ddl.rindex(")")] + ",\n    CHECK (event_id <> 'e2'))")  # kept by ensure_raw_schema
    land("channel_events/ce_20240131.csv", CE_CSV)
    with pytest.raises(duckdb.ConstraintException):
        ingest_source(con, "channel_events", settings, "run1")
    assert con.execute("SELECT current_setting('preserve_insertion_order')").fetchone() == (True,)
    assert con.execute("SELECT count(*) FROM raw.channel_events").fetchone() == (0,)
    assert con.execute("SELECT count(*) FROM raw.ingestion_ledger").fetchone() == (0,)


_CRASH_AFTER_REHASH = """
import os, sys
import duckdb
from orchestration.ingest.core import ensure_raw_schema
con = duckdb.connect(sys.argv[1])
con.execute("PRAGMA disable_checkpoint_on_shutdown")
con.execute("SET checkpoint_threshold = '10GB'")  # the retyped rows stay in the write-ahead log
print(ensure_raw_schema(con), flush=True)
os._exit(0)  # killed before any checkpoint
"""


def test_a_warehouse_retyped_by_the_rehash_opens_after_a_crash(tmp_path):
    """The rehash of a text `_row_hash` column is committed to DuckDB's write-ahead log; a process killed before
    the next checkpoint leaves that log to be replayed when the file is opened again. It must replay offline
    (a retype `USING` the hash would make DuckDB try to install the extension `hash` comes from)."""
    import subprocess
    import sys
    from pathlib import Path

    from orchestration import warehouse

    path = tmp_path / "warehouse.duckdb"
    con = duckdb.connect(str(path))
    ensure_raw_schema(con)
    con.execute("INSERT INTO raw.orders (order_id, status) SELECT 'o' || i, 'paid' FROM range(1000) t(i)")
    con.execute("ALTER TABLE raw.orders ALTER COLUMN _row_hash SET DATA TYPE VARCHAR")  # scheme v1's column
    con.execute("UPDATE raw.row_hash_scheme SET scheme = 'hash64-typed-v1'")
    con.close()
    repo = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", _CRASH_AFTER_REHASH, str(path)], cwd=repo, capture_output=True,
                          text=True, timeout=120, env={**__import__("os").environ, "PYTHONPATH": str(repo)})
    assert done.returncode == 0, done.stderr
    assert "'orders': 1000" in done.stdout
    assert path.with_name(path.name + ".wal").exists()  # nothing was checkpointed

    with warehouse.connection(path) as con:
        assert con.execute("SELECT DISTINCT typeof(_row_hash) FROM raw.orders").fetchall() == [("BIGINT",)]
        assert con.execute("SELECT count(DISTINCT _row_hash) FROM raw.orders").fetchone() == (1000,)
        assert ensure_raw_schema(con) is None  # the scheme was recorded with the rows
