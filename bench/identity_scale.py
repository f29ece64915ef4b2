"""Scale smoke benchmark of the identity library (not a test).

    python bench/identity_scale.py [--customers 1000000] [--db path] [--threads N]

Synthesises staging tables directly in DuckDB (deterministic, hash-based "randomness"): customers with an
openid and some of unionid / phone / member_id / WeCom id, 1-3 channel events each naming the openid and one
other identifier, some customers whose identifiers only meet through a chain of rows, orders with 1-2
versions naming different identifiers, referrals (some converted), long chains of rows (long paths through
the graph) and clerk phones shared by hundreds of strangers. Then times build_identity_graph and
assign_customer_keys (twice: a first run, then an idempotent re-run).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb

from orchestration.identity.graph import build_identity_graph
from orchestration.identity.keys import assign_customer_keys


def synthesise(con, customers: int, chains: int = 200, chain_length: int = 200, clerks: int = 50) -> dict[str, int]:
    n = int(customers)
    con.execute("CREATE SCHEMA IF NOT EXISTS staging")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE bench_customers AS
        SELECT i,
               'o' || i AS openid,
               CASE WHEN hash(i, 'u') % 100 < 60 THEN 'u' || i END AS unionid,
               CASE WHEN hash(i, 'w') % 100 < 20 THEN 'w' || i END AS wecom_external_userid,
               CASE WHEN hash(i, 'p') % 100 < 50 THEN CAST(13000000000 + i AS VARCHAR) END AS phone,
               CASE WHEN hash(i, 'm') % 100 < 30 THEN 'M' || i END AS member_id,
               hash(i, 'chain') % 100 < 5 AS chained
        FROM range({n}) t(i)
        """
    )
    ts = "TIMESTAMPTZ '2024-01-01 00:00:00+08' + to_seconds(CAST(hash(k) % 10000000 AS BIGINT))"
    con.execute(
        f"""
        CREATE OR REPLACE TABLE staging.stg_channel_events AS
        WITH plain AS (
            -- 1-3 events per customer: the openid plus one other identifier (or none)
            SELECT 'e' || c.i || '_' || j AS event_id, c.*, hash(c.i, j) % 5 AS pick
            FROM bench_customers c, range(1 + CAST(hash(c.i, 'n') % 3 AS INTEGER)) r(j)
            WHERE NOT c.chained
        ),
        chain_rows AS (
            -- chained customers: (openid, unionid), (unionid, phone), (phone, member_id) on separate rows
            SELECT 'ec' || i || '_1' AS event_id, openid, 'uc' || i AS unionid, NULL AS wecom_external_userid,
                   NULL AS phone, NULL AS member_id FROM bench_customers WHERE chained
            UNION ALL
            SELECT 'ec' || i || '_2', NULL, 'uc' || i, NULL, CAST(15000000000 + i AS VARCHAR), NULL
            FROM bench_customers WHERE chained
            UNION ALL
            SELECT 'ec' || i || '_3', NULL, NULL, NULL, CAST(15000000000 + i AS VARCHAR), 'MC' || i
            FROM bench_customers WHERE chained
        ),
        long_chains AS (
            -- {chains} chains of {chain_length} rows: (openid k, member_id k+1) links a path of 2*length ids
            SELECT 'el' || c || '_' || k AS event_id, 'ol' || c || '_' || k AS openid, NULL AS unionid,
                   NULL AS wecom_external_userid, NULL AS phone, 'ml' || c || '_' || (k + 1) AS member_id
            FROM range({chains}) a(c), range({chain_length}) b(k)
            UNION ALL
            SELECT 'em' || c || '_' || k, 'ol' || c || '_' || k, NULL, NULL, NULL, 'ml' || c || '_' || k
            FROM range({chains}) a(c), range({chain_length}) b(k)
        ),
        clerk_rows AS (
            -- {clerks} clerk phones, each on ~300 rows of random strangers
            SELECT 'ek' || c || '_' || k AS event_id, 'o' || (hash(c, k) % {n}) AS openid, NULL AS unionid,
                   NULL AS wecom_external_userid, CAST(18800000000 + c AS VARCHAR) AS phone, NULL AS member_id
            FROM range({clerks}) a(c), range(300) b(k)
        ),
        all_rows AS (
            SELECT event_id, openid,
                   CASE WHEN pick = 0 THEN unionid END AS unionid,
                   CASE WHEN pick = 1 THEN wecom_external_userid END AS wecom_external_userid,
                   CASE WHEN pick = 2 THEN phone END AS phone,
                   CASE WHEN pick = 3 THEN member_id END AS member_id
            FROM plain
            UNION ALL SELECT * FROM chain_rows
            UNION ALL SELECT * FROM long_chains
            UNION ALL SELECT * FROM clerk_rows
        )
        SELECT event_id, {ts.replace('hash(k)', 'hash(event_id)')} AS occurred_at, 'wecom' AS channel,
               'engage' AS event_type, openid, unionid, wecom_external_userid, phone, member_id,
               NULL::VARCHAR AS campaign, NULL::VARCHAR AS wecom_staff_userid, 1::BIGINT AS file_id,
               DATE '2024-06-01' AS batch_date, TIMESTAMPTZ '2024-06-02 00:00:00+08' AS loaded_at
        FROM all_rows
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE staging.stg_orders__versions AS
        WITH orders AS (
            SELECT 'O' || k AS order_id, hash(k, 'buyer') % {n} AS i FROM range({n // 2}) t(k)
        ),
        versions AS (
            SELECT o.order_id, c.*, v AS version_rank
            FROM orders o JOIN bench_customers c USING (i), range(1, 3) r(v)
        )
        SELECT order_id, TIMESTAMPTZ '2024-03-01 00:00:00+08' AS updated_at,
               TIMESTAMPTZ '2024-03-01 00:00:00+08' AS created_at, NULL::TIMESTAMPTZ AS paid_at,
               'created' AS status, 'unknown' AS channel, 10.00::DECIMAL(18,2) AS gross_amount,
               0::DECIMAL(18,2) AS discount_amount, 0::DECIMAL(18,2) AS refund_amount, 0::BIGINT AS points_redeemed,
               NULL::VARCHAR AS referral_code,
               CASE WHEN version_rank = 2 THEN openid END AS openid,
               CASE WHEN version_rank = 1 THEN unionid END AS unionid,
               NULL::VARCHAR AS wecom_external_userid,
               CASE WHEN version_rank = 1 THEN phone END AS phone,
               CASE WHEN version_rank = 1 THEN member_id END AS member_id,
               version_rank::BIGINT AS version_rank, 1::BIGINT AS file_id, DATE '2024-06-01' AS batch_date,
               version_rank::BIGINT AS row_number_in_file, TIMESTAMPTZ '2024-06-02 00:00:00+08' AS loaded_at
        FROM versions
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE staging.stg_referrals__versions AS
        WITH refs AS (
            SELECT 'R' || k AS referral_id, hash(k, 'rr') % {n} AS a, hash(k, 're') % {n} AS b,
                   k % 4 = 0 AS converted, k FROM range({n // 10}) t(k)
        )
        SELECT r.referral_id, TIMESTAMPTZ '2024-04-01 00:00:00+08' AS updated_at,
               TIMESTAMPTZ '2024-04-01 00:00:00+08' AS invited_at, 'share_link' AS mechanism,
               CASE WHEN r.converted THEN 'converted' ELSE 'clicked' END AS status,
               ca.member_id AS referrer_member_id, ca.unionid AS referrer_unionid, ca.phone AS referrer_phone,
               cb.openid AS referee_openid, NULL::VARCHAR AS referee_unionid, NULL::VARCHAR AS referee_phone,
               NULL::VARCHAR AS referee_member_id,
               CASE WHEN r.converted THEN 'O' || (r.k * 2) END AS order_id, 0::DECIMAL(18,2) AS commission_amount,
               1::BIGINT AS version_rank, 1::BIGINT AS file_id, DATE '2024-06-01' AS batch_date,
               1::BIGINT AS row_number_in_file, TIMESTAMPTZ '2024-06-02 00:00:00+08' AS loaded_at
        FROM refs r JOIN bench_customers ca ON ca.i = r.a JOIN bench_customers cb ON cb.i = r.b
        """
    )
    con.execute("DROP TABLE bench_customers")
    return {
        t: con.execute(f"SELECT count(*) FROM staging.{t}").fetchone()[0]
        for t in ("stg_channel_events", "stg_orders__versions", "stg_referrals__versions")
    }


def first_touch_sql() -> str:
    """acquired_at per component: the earliest event of its records (a stand-in for the dbt model)."""
    return """
        CREATE OR REPLACE TABLE bench_first_touch AS
        SELECT r.component_id, min(e.occurred_at) AS acquired_at
        FROM intermediate.int_identity__records r
        LEFT JOIN staging.stg_channel_events e ON r.source = 'channel_events' AND e.event_id = r.record_id
        GROUP BY r.component_id
    """


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--customers", type=int, default=1_000_000)
    ap.add_argument("--db", default=None, help="DuckDB file (default: a temporary file)")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--max-degree", type=int, default=20)
    args = ap.parse_args(argv)
    tmp = None
    if args.db is None:
        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "bench.duckdb"
    else:
        path = Path(args.db)
    con = duckdb.connect(str(path))
    con.execute("SET TimeZone = 'Asia/Shanghai'")
    if args.threads:
        con.execute(f"SET threads = {int(args.threads)}")
    t0 = time.perf_counter()
    rows = synthesise(con, args.customers)
    print(f"synthesised in {time.perf_counter() - t0:.1f}s: {rows}")

    g = build_identity_graph(con, args.max_degree)
    print(f"build_identity_graph: {g.seconds:.1f}s, identifiers={g.identifiers}, "
          f"pseudo_nodes={g.pseudo_nodes}, links={g.links}, customers={g.components}, records={g.records}, "
          f"shared={g.shared_identifiers}")
    t1 = time.perf_counter()
    con.execute(first_touch_sql())
    print(f"(stand-in first touch: {time.perf_counter() - t1:.1f}s)")
    now = datetime(2024, 7, 1, tzinfo=timezone.utc)
    k1 = assign_customer_keys(con, "bench_first_touch", "bench-1", now)
    print(f"assign_customer_keys (first run): {k1.seconds:.1f}s, {k1.to_metadata()}")
    k2 = assign_customer_keys(con, "bench_first_touch", "bench-2", now)
    print(f"assign_customer_keys (re-run):    {k2.seconds:.1f}s, {k2.to_metadata()}")
    print(f"total graph + keys (first run): {g.seconds + k1.seconds:.1f}s")
    con.close()
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
