"""Scale benchmark of segments (not a test): membership, file exports and a sync plan at design size.

    python bench/segments_scale.py [--customers 1000000] [--formats csv,parquet,jsonl] [--dir DIR]

Synthesises marts.dim_customers directly in DuckDB (deterministic, hash-based values spread so that every
default segment has members), then times build_membership for the six defaults, a first export of every
segment (all adds), a second export (diff against the first), and the plan of a first and a second sync to
a webhook (no HTTP is sent: the plan is what scales with the warehouse).
"""

from __future__ import annotations

import argparse
import datetime as dt
import resource
import shutil
import tempfile
import time
from pathlib import Path

from orchestration.segments import ExportOptions, build_membership, ensure_sync_tables, export_segment, load_segment_definitions, parse_destinations
from orchestration.segments.sync import plan_adds, plan_removes
from orchestration.warehouse import connect


def synthesise(con, customers: int) -> None:
    con.execute("create schema if not exists marts")
    con.execute(
        f"""
        create or replace table marts.dim_customers as
        with base as (
            select i,
                   timestamptz '2024-12-31 23:00:00+08' as data_end_at,
                   hash(i, 'paid') % 100 as p, hash(i, 'age') % 400 as age_days, hash(i, 'act') % 400 as act_days,
                   hash(i, 'ref') % 100 as r
            from range({customers}) t(i)
        )
        select
            'C' || lpad(cast(i as varchar), 9, '0') as customer_key,
            'oA' || i as openid, 'official_account' as openid_channel, null::varchar as unionid,
            case when i % 3 = 0 then 'wm' || i end as wecom_external_userid,
            case when i % 3 = 0 then 'staff' || (i % 50) end as wecom_staff_userid,
            null::varchar as member_id, null::varchar as phone_masked,
            case when i % 2 = 0 then sha256('86' || cast(13000000000 + i as varchar)) end as phone_sha256,
            data_end_at - to_microseconds(cast(age_days as bigint) * 86400000000) as acquired_at,
            'official_account' as acquisition_channel, null::varchar as acquisition_referrer_key,
            'campaign ' || (i % 40) as acquisition_campaign,
            case when p < 60 then data_end_at - to_microseconds(cast(act_days as bigint) * 86400000000) end as first_paid_at,
            null::varchar as first_paid_order_id,
            case when p < 60 then data_end_at - to_microseconds(cast(act_days as bigint) * 86400000000) end as last_paid_at,
            cast(case when p < 60 then 1 + p % 4 else 0 end as bigint) as paid_orders,
            cast(case when p < 60 then (p * 37) % 2000 else 0 end as decimal(18, 2)) as net_revenue,
            cast(0 as hugeint) as points_redeemed,
            i % 10 <> 0 as is_reachable, case when i % 10 <> 0 then 'official_account' end as reachable_channels,
            i % 20 = 0 as opted_out, false as is_member, p < 60 as is_activated, false as is_retained,
            false as is_repurchased, r < 5 as is_referrer, cast(case when r < 5 then 1 + r else 0 end as bigint) as customers_referred,
            data_end_at - to_microseconds(cast(least(act_days, age_days) as bigint) * 86400000000) as last_activity_at,
            cast(case when r < 5 then r else 0 end as bigint) as referrals_converted,
            cast(case when r < 5 then r else 0 end as hugeint) as referrals_converted_12m,
            case when p < 60 then cast(1 + p % 5 as integer) end as r_score,
            case when p < 60 then cast(1 + (p / 5) % 5 as integer) end as f_score,
            case when p < 60 then cast(1 + (p / 3) % 5 as integer) end as m_score,
            case when p >= 60 then 'No Purchase' when p % 7 = 0 then 'Champions' when p % 7 = 1 then 'Loyal' else 'Hibernating' end as rfm_segment,
            'active' as lifecycle_stage,
            data_end_at
        from base
        """
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--customers", type=int, default=1_000_000)
    parser.add_argument("--formats", default="csv,parquet,jsonl")
    parser.add_argument("--dir", default=None)
    args = parser.parse_args()
    root = Path(args.dir or tempfile.mkdtemp(prefix="privdom-segments-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    warehouse, exports = root / "warehouse.duckdb", root / "exports"
    shutil.rmtree(exports, ignore_errors=True)
    con = connect(warehouse)
    timings: list[tuple[str, float]] = []

    def timed(label, fn):
        started = time.perf_counter()
        out = fn()
        timings.append((label, time.perf_counter() - started))
        return out

    timed("synthesise dim_customers", lambda: synthesise(con, args.customers))
    definitions = load_segment_definitions(root, {})
    summaries = timed("build_membership (6 defaults)", lambda: build_membership(con, definitions, dt.datetime.now(dt.UTC)))
    options = ExportOptions(formats=tuple(args.formats.split(",")))
    for round_ in ("first", "second"):
        timed(f"export all segments ({round_}, {args.formats})", lambda: [export_segment(con, exports, d, options) for d in definitions])
    (destination,) = parse_destinations(
        {"bench": {"type": "webhook", "url": "https://example.com/x", "secret_env": "BENCH_SECRET", "segments": [d.name for d in definitions]}},
        [d.name for d in definitions],
    )
    ensure_sync_tables(con)
    adds = timed("sync plan, first (all adds)", lambda: sum(len(plan_adds(con, destination, d.name)) for d in definitions))
    timed("sync plan, first (removes: none yet)", lambda: sum(len(plan_removes(con, destination, d.name)) for d in definitions))
    con.close()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"customers: {args.customers:,}; members per segment: " + ", ".join(f"{s.segment} {s.members:,}" for s in summaries))
    print(f"sync plan rows: {adds:,}; peak RSS {peak:,.0f} MB; data in {root}")
    for label, seconds in timings:
        print(f"  {label:<50} {seconds:8.1f} s")


if __name__ == "__main__":
    main()
