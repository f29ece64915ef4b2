"""Version ties and identical re-deliveries (SPEC §2: "the row with the latest `updated_at` per `order_id` is the
order's state (ties: the later batch, then the later row)"; referrals the same).

O3 is delivered paid on 9 January, refunded on 10 January and paid again on 11 January, every delivery with
the same (day-grain) updated_at. The 11 January row is identical to the 9 January one: staging keeps that version
once, but it was delivered last, so it is the order's state: paid, net revenue 80.00. R9 likewise: clicked,
registered, clicked again, all at the same updated_at: clicked. (The 11 January files bring another order and
referral too, so that they are not the 9 January files' content again.)

The three days' files reach the pipeline all at once (Y1), the last day's first (Y2), or the first two days' in
one run and the last day's in the next (Y3): the state is the same whatever the order of arrival, and an
incremental warehouse equals a --full-refresh of itself.
"""

from __future__ import annotations

import subprocess
import sys
from decimal import Decimal
from pathlib import Path

import duckdb
import pytest

from tests.test_crash_safety import snapshot

pytestmark = pytest.mark.slow

PRIVDOM = Path(sys.executable).with_name("privdom")
MODELLED_SCHEMAS = ("staging", "intermediate", "marts", "segments")

ORDERS_HEADER = ("order_id,updated_at,created_at,paid_at,status,channel,gross_amount,discount_amount,refund_amount,"
                 "points_redeemed,referral_code,openid,unionid,wecom_external_userid,phone,member_id\n")
REFERRALS_HEADER = ("referral_id,updated_at,invited_at,mechanism,status,referrer_member_id,referrer_unionid,"
                    "referrer_phone,referee_openid,referee_unionid,referee_phone,referee_member_id,order_id,"
                    "commission_amount\n")
PAID = "O3,2024-01-09,2024-01-09,2024-01-09,paid,wecom,80.00,0,0,0,,oC,,,,\n"
REFUNDED = "O3,2024-01-09,2024-01-09,2024-01-09,refunded,wecom,80.00,0,80.00,0,,oC,,,,\n"
CLICKED = "R9,2024-01-09,2024-01-09,share_link,clicked,,uR,,,uE,,,,0\n"
REGISTERED = "R9,2024-01-09,2024-01-09,share_link,registered,,uR,,,uE,,,,0\n"
FILES = {
    "0109": {"orders/orders_20240109.csv": ORDERS_HEADER + PAID,
             "referrals/referrals_20240109.csv": REFERRALS_HEADER + CLICKED},
    "0110": {"orders/orders_20240110.csv": ORDERS_HEADER + REFUNDED,
             "referrals/referrals_20240110.csv": REFERRALS_HEADER + REGISTERED},
    # with another row each: a file of the same content as an earlier one is not loaded (docs/DECISIONS.md,
    # "Re-delivered files")
    "0111": {"orders/orders_20240111.csv": ORDERS_HEADER + PAID + "O4,2024-01-10,2024-01-10,2024-01-10,paid,wecom,"
                                                                  "10.00,0,0,0,,oD,,,,\n",
             "referrals/referrals_20240111.csv": REFERRALS_HEADER + CLICKED + "R10,2024-01-10,2024-01-10,share_link,"
                                                                              "clicked,,uR,,,uF,,,,0\n"},
}
ARRIVALS = {
    "Y1": [["0109", "0110", "0111"]],  # all at once
    "Y2": [["0111"], ["0109", "0110"]],  # the last day's files first
    "Y3": [["0109", "0110"], ["0111"]],  # the last day's files in a later run
}


def _run(data_dir: Path, *extra: str) -> None:
    done = subprocess.run([str(PRIVDOM), "--data-dir", str(data_dir), "run", *extra],
                          capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr


def _query(data_dir: Path, sql: str) -> list[tuple]:
    con = duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True)
    try:
        return con.execute(sql).fetchall()
    finally:
        con.close()


def _modelled(data_dir: Path) -> dict[str, list]:
    return {name: rows for name, rows in snapshot(data_dir / "warehouse.duckdb").items()
            if name.split(".")[0] in MODELLED_SCHEMAS}


@pytest.fixture(scope="module", params=sorted(ARRIVALS))
def arrival(request, tmp_path_factory):
    """(name, data dir after the incremental runs, its modelled tables then, and after a --full-refresh)."""
    name = request.param
    data_dir = tmp_path_factory.mktemp(name)
    (data_dir / "privdom.toml").write_text("max_quarantine_share = 1.0\n", encoding="utf-8")
    for days in ARRIVALS[name]:
        for day in days:
            for rel, text in FILES[day].items():
                (data_dir / "landing" / rel).parent.mkdir(parents=True, exist_ok=True)
                (data_dir / "landing" / rel).write_text(text, encoding="utf-8")
        _run(data_dir)
    incremental = _modelled(data_dir)
    if len(ARRIVALS[name]) == 1:  # one run: its build was a full one (a --full-refresh would repeat it)
        return name, data_dir, incremental, incremental
    _run(data_dir, "--full-refresh")
    return name, data_dir, incremental, _modelled(data_dir)


def test_an_identical_redelivery_dates_its_version_by_its_latest_delivery(arrival):
    name, data_dir, _, _ = arrival
    assert _query(data_dir, "select status, net_revenue from marts.fct_orders where order_id = 'O3'") == [
        ("paid", Decimal("80.00"))], name
    assert _query(data_dir, "select status from marts.fct_referrals where referral_id = 'R9'") == [("clicked",)], name
    # two distinct versions each; the paid one keeps its first delivery's lineage (file, batch) and is dated by
    # its latest delivery, 11 January's file, whenever that came
    f0109, f0110, f0111 = (_file_id(data_dir, f"orders/orders_2024{day}.csv") for day in ("0109", "0110", "0111"))
    first = min(f0109, f0111)
    assert _query(data_dir, "select status, version_rank, file_id, batch_date, last_file_id, last_batch_date, "
                            "last_row_number from staging.stg_orders__versions where order_id = 'O3' "
                            "order by version_rank") == [
        ("paid", 1, first, _date("0109" if first == f0109 else "0111"), f0111, _date("0111"), 1),
        ("refunded", 2, f0110, _date("0110"), f0110, _date("0110"), 1),
    ], name
    assert _query(data_dir, "select status, version_rank from staging.stg_referrals__versions "
                            "where referral_id = 'R9' order by 2") == [
        ("clicked", 1), ("registered", 2)], name


def _file_id(data_dir: Path, path: str) -> int:
    return _query(data_dir, f"select file_id from raw.ingestion_ledger where file_path = '{path}'")[0][0]


def _date(day: str):
    import datetime as dt

    return dt.date(2024, int(day[:2]), int(day[2:]))


def test_incremental_runs_equal_a_full_refresh(arrival):
    name, _, incremental, full = arrival
    assert sorted(incremental) == sorted(full)
    for table in full:
        assert incremental[table] == full[table], (name, table)
