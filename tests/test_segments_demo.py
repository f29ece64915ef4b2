"""On the demo data (`privdom demo`'s defaults), every default segment is non-empty, and its exported members
are exactly its rule recomputed here, independently, from marts.dim_customers."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.slow

PRIVDOM = Path(sys.executable).with_name("privdom")
DAY = dt.timedelta(days=1)


def _rules(end):
    """SPEC §5's table, in Python, with its time words measured back from the data end in 24-hour days."""
    return {
        "new_not_activated": lambda c: c["acquired_at"] >= end - 30 * DAY and c["paid_orders"] == 0,
        "one_time_buyers": lambda c: c["paid_orders"] == 1 and end - 60 * DAY <= c["last_paid_at"] <= end - 14 * DAY,
        "at_risk_high_value": lambda c: c["m_score"] in (4, 5) and c["last_paid_at"] < end - 60 * DAY,
        "champions_to_distributors": lambda c: c["rfm_segment"] in ("Champions", "Loyal") and c["customers_referred"] == 0 and c["referrals_converted"] == 0,
        "dormant_reachable": lambda c: c["last_activity_at"] < end - 90 * DAY,
        "top_referrers": lambda c: c["referrals_converted_12m"] >= 3,
    }


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    from orchestration.generate import generate
    from orchestration.settings import load_settings

    data_dir = tmp_path_factory.mktemp("segments_demo")
    s = load_settings(data_dir)
    generate(data_dir / "landing", customers=s.demo_customers, days=s.demo_days, seed=s.demo_seed, dirty_rate=s.demo_dirty_rate)
    (data_dir / "privdom.toml").write_text('[exports]\nformats = ["csv", "parquet", "jsonl"]\n', encoding="utf-8")
    run = subprocess.run([str(PRIVDOM), "--data-dir", str(data_dir), "run"], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stdout + run.stderr
    return data_dir


def _exported_keys(data_dir: Path, segment: str, fmt: str) -> list[str]:
    folder = data_dir / "exports" / segment / (data_dir / "exports" / segment / "LATEST").read_text(encoding="utf-8").strip()
    path = folder / f"{segment}.{fmt}"
    con = duckdb.connect()
    try:
        if fmt == "csv":
            return [r[0] for r in con.execute(f"select customer_key from read_csv('{path}', header = true, all_varchar = true)").fetchall()]
        if fmt == "parquet":
            return [r[0] for r in con.execute(f"select customer_key from read_parquet('{path}')").fetchall()]
        return [json.loads(line)["customer_key"] for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    finally:
        con.close()


def test_every_default_segment_is_non_empty_and_matches_its_rule(demo_run):
    con = duckdb.connect(str(demo_run / "warehouse.duckdb"), read_only=True)
    con.execute("set TimeZone = 'Asia/Shanghai'")
    try:
        cur = con.execute("select * from marts.dim_customers")
        names = [d[0] for d in cur.description]
        customers = [dict(zip(names, r)) for r in cur.fetchall()]
    finally:
        con.close()
    end = customers[0]["data_end_at"]
    suppressed = {c["customer_key"] for c in customers if c["opted_out"] or not c["is_reachable"]}
    assert suppressed, "the demo data has no opted-out or unreachable customers to suppress"
    for segment, rule in _rules(end).items():
        expected = {c["customer_key"] for c in customers if c["is_reachable"] and not c["opted_out"] and _safe(rule, c)}
        assert expected, f"{segment} is empty on the demo data"
        for fmt in ("csv", "parquet", "jsonl"):
            keys = _exported_keys(demo_run, segment, fmt)
            assert len(keys) == len(set(keys)), (segment, fmt)
            assert set(keys) == expected, (segment, fmt, sorted(set(keys) ^ expected)[:10])
            assert not set(keys) & suppressed


def _safe(rule, c):
    try:
        return bool(rule(c))
    except TypeError:  # a NULL (None) in a comparison: the customer does not match
        return False


def test_a_quarantine_spike_holds_back_every_export_and_the_summary_says_why(tmp_path):
    """The real raw quarantine check (ERROR above max_quarantine_share) gates the exports of that run."""
    from orchestration.generate import generate

    data_dir = tmp_path / "dirty"
    generate(data_dir / "landing", customers=150, days=20, seed=3, dirty_rate=0.2)
    run = subprocess.run([str(PRIVDOM), "--data-dir", str(data_dir), "run"], capture_output=True, text=True, timeout=1200)
    assert run.returncode == 1, run.stdout + run.stderr
    out = run.stdout
    assert "[ERROR] segments/segment_members · upstream_checks_passed: Exports and syncs wait:" in out, out
    assert ":quarantine_share (" in out and "above the 5.00% limit" in out
    assert "failed step: segment_membership" in out
    assert not (data_dir / "exports").exists() or not any((data_dir / "exports").rglob("LATEST"))
    # dbt still refreshed the marts with the good rows (the quarantine check does not stop dbt)
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        assert con.execute("select count(*) from marts.dim_customers").fetchone()[0] > 0
    finally:
        con.close()
