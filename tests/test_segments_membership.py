"""Membership of the default segments on hand-written customers, at the boundaries of SPEC §5's time words,
and suppression: opted-out and unreachable customers are never members."""

from __future__ import annotations

import datetime as dt

import pytest

from orchestration.segments import build_membership, load_segment_definitions, parse_definitions, suppression_violations
from orchestration.segments.membership import WarehouseShapeError
from orchestration.warehouse import connect
from tests.segments_helpers import DATA_END, customer, days_before_end, phone_sha, query, write_dim_customers

SECOND = dt.timedelta(seconds=1)
RECENT = days_before_end(10)

CUSTOMERS = [
    # new_not_activated: acquired_at >= now - 30 d, no paid order
    customer("N1", acquired_at=days_before_end(30), last_activity_at=days_before_end(30)),  # exactly 30 d: in
    customer("N2", acquired_at=days_before_end(30) - SECOND, last_activity_at=RECENT),  # a second earlier: out
    customer("N3", acquired_at=days_before_end(5), paid_orders=1, last_paid_at=days_before_end(4), last_activity_at=RECENT),
    customer("N4", acquired_at=days_before_end(5), last_activity_at=RECENT, opted_out=True, is_reachable=False),
    customer("N5", acquired_at=days_before_end(5), last_activity_at=RECENT, is_reachable=False, reachable_channels=None),
    # one_time_buyers: exactly one paid order, paid in [now - 60 d, now - 14 d]
    customer("O1", paid_orders=1, last_paid_at=days_before_end(14), last_activity_at=days_before_end(14)),
    customer("O2", paid_orders=1, last_paid_at=days_before_end(60), last_activity_at=days_before_end(60)),
    customer("O3", paid_orders=1, last_paid_at=days_before_end(14) + SECOND, last_activity_at=RECENT),
    customer("O4", paid_orders=1, last_paid_at=days_before_end(60) - SECOND, last_activity_at=RECENT),
    customer("O5", paid_orders=2, last_paid_at=days_before_end(30), last_activity_at=RECENT),
    # at_risk_high_value: m_score 4-5, last paid order before now - 60 d
    customer("A1", paid_orders=3, m_score=4, last_paid_at=days_before_end(61), last_activity_at=days_before_end(61)),
    customer("A2", paid_orders=3, m_score=5, last_paid_at=days_before_end(60), last_activity_at=RECENT),  # not *over* 60 d
    customer("A3", paid_orders=3, m_score=3, last_paid_at=days_before_end(100), last_activity_at=days_before_end(100)),
    # champions_to_distributors: Champions or Loyal, nobody acquired through them, no converted referral
    customer("H1", rfm_segment="Champions", last_activity_at=RECENT),
    customer("H2", rfm_segment="Loyal", customers_referred=1, last_activity_at=RECENT),
    customer("H3", rfm_segment="Loyal", referrals_converted=1, last_activity_at=RECENT),
    customer("H4", rfm_segment="Potential Loyalist", last_activity_at=RECENT),
    customer("H5", rfm_segment="Champions", last_activity_at=RECENT, opted_out=True),  # opted out, flag says reachable
    # dormant_reachable: last activity before now - 90 d
    customer("D1", last_activity_at=days_before_end(90) - SECOND),
    customer("D2", last_activity_at=days_before_end(90)),
    customer("D3", last_activity_at=days_before_end(300), is_reachable=False),
    # top_referrers: >= 3 referrals converted in the last 365 days
    customer("T1", referrals_converted=7, referrals_converted_12m=3, customers_referred=3, last_activity_at=RECENT),
    customer("T2", referrals_converted=9, referrals_converted_12m=2, customers_referred=9, last_activity_at=RECENT),
]
# Worked out by hand from the rows above.
EXPECTED = {
    "new_not_activated": {"N1"},
    "one_time_buyers": {"O1", "O2"},
    "at_risk_high_value": {"A1"},
    "champions_to_distributors": {"H1"},
    "dormant_reachable": {"D1", "A3"},
    "top_referrers": {"T1"},
}


@pytest.fixture
def warehouse(tmp_path):
    path = tmp_path / "warehouse.duckdb"
    write_dim_customers(path, CUSTOMERS)
    return path


def _build(warehouse, definitions):
    con = connect(warehouse)
    try:
        return build_membership(con, definitions, dt.datetime(2024, 7, 1, tzinfo=dt.UTC))
    finally:
        con.close()


def test_default_segments_select_exactly_the_hand_worked_members(warehouse, tmp_path):
    summaries = _build(warehouse, load_segment_definitions(tmp_path, {}))
    members = {}
    for segment, key in query(warehouse, "select segment, customer_key from segments.segment_members"):
        members.setdefault(segment, set()).add(key)
    assert members == EXPECTED
    by_name = {s.segment: s for s in summaries}
    # H5 (opted out) matches champions' rule and is suppressed; D3 (unreachable) matches dormant's.
    assert (by_name["champions_to_distributors"].matched, by_name["champions_to_distributors"].suppressed) == (2, 1)
    assert (by_name["dormant_reachable"].matched, by_name["dormant_reachable"].suppressed) == (3, 1)
    assert query(warehouse, "select count(*) from segments.segment_definitions")[0][0] == 6


def test_a_rule_that_selects_opted_out_and_unreachable_customers_gets_none_of_them(warehouse):
    defs = parse_definitions([("defaults", {}), ("privdom.toml", {
        "the_unreachable": {"version": 1, "purpose": "tries to reach the unreachable", "rule": {"any": [
            {"column": "opted_out", "op": "eq", "value": True},
            {"column": "is_reachable", "op": "eq", "value": False},
        ]}},
    })])
    (summary,) = _build(warehouse, defs)
    assert summary.matched == 4 and summary.members == 0 and summary.suppressed == 4  # N4, N5, H5, D3
    assert query(warehouse, "select count(*) from segments.segment_members")[0][0] == 0


def test_members_carry_contact_handles_by_precedence_and_no_clear_phone(tmp_path):
    warehouse = tmp_path / "w.duckdb"
    sha = phone_sha("13800138000")
    write_dim_customers(warehouse, [
        customer("W", wecom_external_userid="wmEXT1", wecom_staff_userid="zhangsan", phone_sha256=sha,
                 reachable_channels="official_account,wecom"),
        # a WeCom id is a contact only while the relationship is live: a former contact (or an id seen only on an
        # event) is reached by the next handle
        customer("W2", wecom_external_userid="wmGONE", wecom_staff_userid="zhangsan"),
        customer("W3", wecom_external_userid="wmGONE3", openid=None, openid_channel=None, phone_sha256=sha,
                 reachable_channels="member", is_member=True),
        customer("W4", wecom_external_userid="wmGONE4", openid=None, openid_channel=None, reachable_channels="member",
                 is_member=True),
        customer("O"),  # official-account openid
        customer("M", openid="oMini1", openid_channel="mini_program"),
        # an openid seen on a WeCom event, beside the id of a WeCom contact the customer removed: not `wecom`
        customer("W5", wecom_external_userid="wmGONE5", wecom_staff_userid="lisi", openid="oW5", openid_channel="wecom",
                 reachable_channels="community_group"),
        customer("U", openid="oU", openid_channel="unknown"),  # from an order naming no channel
        customer("P", openid=None, openid_channel=None, phone_sha256=sha, phone_masked="138****8000"),
        customer("X", openid=None, openid_channel=None, member_id="M001"),  # reachable member, no handle
    ])
    defs = parse_definitions([("d", {}), ("u", {"all_of_them": {"version": 1, "purpose": "p", "rule": [{"column": "paid_orders", "op": "eq", "value": 0}]}})])
    _build(warehouse, defs)
    rows = dict((r[0], r[1:]) for r in query(warehouse, "select customer_key, contact_channel, contact_handle, phone_sha256 from segments.segment_members"))
    assert rows["W"] == ("wecom", "wmEXT1", sha)
    assert rows["W2"] == ("official_account", "oAW2", None)
    assert rows["W3"] == ("phone_sha256", sha, sha)
    assert rows["W4"] == (None, None, None)
    assert rows["O"] == ("official_account", "oAO", None)
    assert rows["M"] == ("mini_program", "oMini1", None)
    assert rows["W5"] == ("openid", "oW5", None)
    assert rows["U"] == ("openid", "oU", None)
    assert rows["P"] == ("phone_sha256", sha, sha)
    assert rows["X"] == (None, None, None)
    columns = {r[0] for r in query(warehouse, "select column_name from information_schema.columns where table_name = 'segment_members'")}
    assert not columns & {"phone", "phone_masked", "member_id", "unionid"}


def test_suppression_check_finds_a_member_that_should_not_be_there(warehouse, tmp_path):
    _build(warehouse, load_segment_definitions(tmp_path, {}))
    con = connect(warehouse)
    try:
        assert suppression_violations(con) == (0, [])
        con.execute("insert into segments.segment_members (segment, segment_version, customer_key) values ('top_referrers', 1, 'N4'), ('top_referrers', 1, 'GONE')")
        count, examples = suppression_violations(con)
    finally:
        con.close()
    assert count == 2
    assert ("top_referrers", "GONE", "not in dim_customers") in examples and ("top_referrers", "N4", "opted out") in examples


def test_rebuilding_replaces_membership(warehouse, tmp_path):
    defs = load_segment_definitions(tmp_path, {})
    _build(warehouse, defs)
    con = connect(warehouse)
    con.execute("update marts.dim_customers set referrals_converted_12m = 5 where customer_key = 'T2'")
    con.close()
    _build(warehouse, defs)
    keys = {r[0] for r in query(warehouse, "select customer_key from segments.segment_members where segment = 'top_referrers'")}
    assert keys == {"T1", "T2"}


def test_a_missing_or_retyped_column_is_a_clear_error(warehouse, tmp_path):
    con = connect(warehouse)
    con.execute("alter table marts.dim_customers drop column m_score")
    with pytest.raises(WarehouseShapeError, match="m_score is missing"):
        build_membership(con, load_segment_definitions(tmp_path, {}), DATA_END)
    con.close()


def test_a_large_rebuild_reads_back_correctly_in_the_same_connection(tmp_path):
    """Regression: DuckDB 2.0.0 returns no rows for grouped/filtered scans of a table created and filled with
    more than a row group (~123k rows) in one transaction, until a checkpoint. The suppression check runs on
    the same connection right after the rebuild, so membership must never be built that way."""
    from tests.segments_helpers import DIM_DDL

    warehouse = tmp_path / "w.duckdb"
    con = connect(warehouse)
    try:
        con.execute(DIM_DDL)
        con.execute(
            """insert into marts.dim_customers (customer_key, acquired_at, paid_orders, net_revenue, points_redeemed,
                   is_reachable, opted_out, is_member, is_activated, is_retained, is_repurchased, is_referrer,
                   customers_referred, last_activity_at, referrals_converted, referrals_converted_12m, rfm_segment,
                   lifecycle_stage, data_end_at)
               select 'C' || range, ?, 1, 10, 0, range % 10 <> 0, false, false, true, false, false, false, 0, ?, 0, 0,
                      'Hibernating', 'active', ?
               from range(150000)""",
            [days_before_end(200), days_before_end(5), DATA_END],
        )
        defs = parse_definitions([("d", {}), ("u", {"buyers": {"version": 1, "purpose": "p", "rule": [{"column": "paid_orders", "op": "gte", "value": 1}]}})])
        for _ in range(2):
            (summary,) = build_membership(con, defs, DATA_END)
            assert summary.members == 135000
            assert con.execute("select segment, count(*) from segments.segment_members group by 1").fetchall() == [("buyers", 135000)]
            con.execute("update segments.segment_members set customer_key = 'C10' where customer_key = 'C11'")  # C10 is unreachable
            assert suppression_violations(con)[0] == 1
    finally:
        con.close()


def test_a_rule_changed_under_the_same_version_is_named(warehouse):
    """Marketer review: a rule edited from gte 3 to gte 4 without a new version gave two exports with different
    rules and the same definition_version. The segments whose rule changed since the last build under the same
    version are named; a new version, an unchanged rule and a new segment are not."""
    from orchestration.segments.membership import changed_without_new_version

    def defs(**rules):
        layers = [("defaults", {}), ("privdom.toml", {
            name: {"version": version, "purpose": "p", "rule": [{"column": "paid_orders", "op": "gte", "value": value}]}
            for name, (version, value) in rules.items()})]
        return [d for d in parse_definitions(layers) if d.name in rules]

    con = connect(warehouse)
    try:
        assert changed_without_new_version(con, defs(vip=(1, 3))) == []  # first build: nothing to compare
        build_membership(con, defs(vip=(1, 3), loyal=(1, 2), steady=(1, 5)), dt.datetime(2024, 7, 1, tzinfo=dt.UTC))
        now = defs(vip=(1, 4), loyal=(2, 3), steady=(1, 5), fresh=(1, 1))
        assert changed_without_new_version(con, now) == ["vip"]
    finally:
        con.close()
