"""Identity graph and stable customer keys (SPEC §3), on hand-made staging tables.

Every expected answer below is worked out by hand from the rows of its test.
"""

from __future__ import annotations

import hashlib
from datetime import datetime, timezone

import duckdb
import pytest

from orchestration.identity.graph import build_identity_graph
from orchestration.identity.keys import assign_customer_keys


# ------------------------------------------------------------------------------------------------ helpers
IDS = ("openid", "unionid", "wecom_external_userid", "phone", "member_id")

EVENT_COLUMNS = {
    "event_id": "VARCHAR", "occurred_at": "TIMESTAMPTZ", "channel": "VARCHAR", "event_type": "VARCHAR",
    **{c: "VARCHAR" for c in IDS},
    "campaign": "VARCHAR", "wecom_staff_userid": "VARCHAR", "file_id": "BIGINT", "batch_date": "DATE",
    "loaded_at": "TIMESTAMPTZ",
}
ORDER_COLUMNS = {
    "order_id": "VARCHAR", "updated_at": "TIMESTAMPTZ", "created_at": "TIMESTAMPTZ", "paid_at": "TIMESTAMPTZ",
    "status": "VARCHAR", "channel": "VARCHAR", "gross_amount": "DECIMAL(18,2)", "discount_amount": "DECIMAL(18,2)",
    "refund_amount": "DECIMAL(18,2)", "points_redeemed": "BIGINT", "referral_code": "VARCHAR",
    **{c: "VARCHAR" for c in IDS},
    "version_rank": "BIGINT", "file_id": "BIGINT", "batch_date": "DATE", "row_number_in_file": "BIGINT",
    "loaded_at": "TIMESTAMPTZ", "last_batch_date": "DATE", "last_file_id": "BIGINT", "last_row_number": "BIGINT",
}
REFERRAL_COLUMNS = {
    "referral_id": "VARCHAR", "updated_at": "TIMESTAMPTZ", "invited_at": "TIMESTAMPTZ", "mechanism": "VARCHAR",
    "status": "VARCHAR", "referrer_member_id": "VARCHAR", "referrer_unionid": "VARCHAR",
    "referrer_phone": "VARCHAR", "referee_openid": "VARCHAR", "referee_unionid": "VARCHAR",
    "referee_phone": "VARCHAR", "referee_member_id": "VARCHAR", "order_id": "VARCHAR",
    "commission_amount": "DECIMAL(18,2)", "version_rank": "BIGINT", "file_id": "BIGINT", "batch_date": "DATE",
    "row_number_in_file": "BIGINT", "loaded_at": "TIMESTAMPTZ", "last_batch_date": "DATE", "last_file_id": "BIGINT",
    "last_row_number": "BIGINT",
}
DEFAULTS = {
    "occurred_at": "2024-01-01 10:00:00", "updated_at": "2024-01-01 10:00:00", "created_at": "2024-01-01 09:00:00",
    "invited_at": "2024-01-01 09:00:00", "channel": "wecom", "event_type": "engage", "status": "created",
    "mechanism": "share_link", "gross_amount": "10.00", "discount_amount": "0", "refund_amount": "0",
    "commission_amount": "0", "points_redeemed": 0, "version_rank": 1, "file_id": 1, "batch_date": "2024-01-01",
    "loaded_at": "2024-01-02 00:00:00",
}


def _create(con, table: str, columns: dict[str, str], rows: list[dict]) -> None:
    unknown = {k for r in rows for k in r} - set(columns)
    assert not unknown, f"not a column of {table}: {unknown}"
    con.execute(f"CREATE OR REPLACE TABLE {table} ({', '.join(f'{c} {t}' for c, t in columns.items())})")
    for r in rows:
        # a version delivered once was last delivered by its first delivery
        first = {"last_batch_date": "batch_date", "last_file_id": "file_id", "last_row_number": "row_number_in_file"}
        values = [r.get(c, r.get(first[c], DEFAULTS.get(first[c])) if c in first else DEFAULTS.get(c)) for c in columns]
        con.execute(f"INSERT INTO {table} VALUES ({', '.join('?' for _ in columns)})", values)


def stage(con, events=(), orders=(), referrals=()) -> None:
    """Create staging.stg_channel_events / stg_orders__versions / stg_referrals__versions from dicts."""
    con.execute("CREATE SCHEMA IF NOT EXISTS staging")
    _create(con, "staging.stg_channel_events", EVENT_COLUMNS, list(events))
    _create(con, "staging.stg_orders__versions", ORDER_COLUMNS, list(orders))
    _create(con, "staging.stg_referrals__versions", REFERRAL_COLUMNS, list(referrals))


def md5_id(typ: str, value: str) -> int:
    """A node's id as the graph defines it (orchestration.identity.graph.node_id_sql), computed independently."""
    return int.from_bytes(hashlib.md5(f"{typ}\0{value}".encode()).digest(), "little") >> 65


def ev(event_id, **ids):
    return {"event_id": event_id, **ids}


@pytest.fixture
def db(tmp_path):
    c = duckdb.connect(str(tmp_path / "warehouse.duckdb"))
    c.execute("SET TimeZone = 'Asia/Shanghai'")
    yield c
    c.close()


def comp(con, typ, value):
    row = con.execute(
        "SELECT component_id FROM intermediate.int_identity__identifiers WHERE identifier_type = ? AND identifier_value = ?",
        [typ, value],
    ).fetchone()
    assert row, f"no identifier {typ} {value}"
    return row[0]


def rec(con, source, record_id, role):
    rows = con.execute(
        "SELECT component_id FROM intermediate.int_identity__records WHERE source = ? AND record_id = ? AND role = ?",
        [source, record_id, role],
    ).fetchall()
    assert len(rows) <= 1
    return rows[0][0] if rows else None


def n_customers(con):
    return con.execute("SELECT count(DISTINCT component_id) FROM intermediate.int_identity__records").fetchone()[0]


# first touches are given per identifier; a component's acquired_at is the earliest of its identifiers'
def keys_run(con, run_id, touches: dict[tuple[str, str], str], now="2024-07-01 00:00:00", max_degree=20):
    build_identity_graph(con, max_degree)
    con.execute("CREATE OR REPLACE TABLE touch_input (identifier_type VARCHAR, identifier_value VARCHAR, acquired_at TIMESTAMPTZ)")
    con.executemany("INSERT INTO touch_input VALUES (?, ?, ?)", [(t, v, at) for (t, v), at in touches.items()])
    con.execute(
        """
        CREATE OR REPLACE TABLE first_touch AS
        SELECT i.component_id, min(t.acquired_at) AS acquired_at
        FROM intermediate.int_identity__identifiers i JOIN touch_input t USING (identifier_type, identifier_value)
        GROUP BY 1
        """
    )
    return assign_customer_keys(con, "first_touch", run_id, datetime.fromisoformat(now).replace(tzinfo=timezone.utc))


def key_of(con, typ, value):
    row = con.execute(
        """
        SELECT k.customer_key FROM intermediate.int_identity__identifiers i
        JOIN intermediate.int_customer_keys k USING (component_id)
        WHERE i.identifier_type = ? AND i.identifier_value = ?
        """,
        [typ, value],
    ).fetchone()
    return row[0] if row else None


def state_snapshot(con):
    return {
        t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall()
        for t in (
            "identity_state.customer_keys", "identity_state.identifier_keys", "identity_state.customer_key_merges",
            "identity_state.customer_key_splits", "intermediate.int_customer_keys",
        )
    }


# ------------------------------------------------------------------------------------------------ the graph
def test_chain_across_identifier_types_is_one_customer(db):
    stage(
        db,
        events=[
            ev("e1", openid="oA", unionid="uA"),
            ev("e2", unionid="uA", phone="13800000001"),
            ev("e3", phone="13800000001", member_id="M1"),
            ev("e4", openid="oZ"),
        ],
    )
    report = build_identity_graph(db, 20)
    a = comp(db, "openid", "oA")
    assert comp(db, "unionid", "uA") == a
    assert comp(db, "phone", "13800000001") == a
    assert comp(db, "member_id", "M1") == a
    assert comp(db, "openid", "oZ") != a
    assert {rec(db, "channel_events", e, "person") for e in ("e1", "e2", "e3")} == {a}
    assert n_customers(db) == 2
    assert report.components == 2 and report.identifiers == 5 and report.shared_identifiers == 0
    # star links: e1 1, e2 1, e3 1, e4 none
    assert report.links == 3


def test_shared_clerk_phone_does_not_merge_strangers(db):
    clerk = "13800008000"
    events = [ev(f"e{i}", openid=f"o{i}", phone=clerk) for i in range(30)]
    events += [ev("only1", phone=clerk), ev("only2", phone=clerk)]
    stage(db, events=events)
    report = build_identity_graph(db, 20)
    # 30 strangers + the clerk's singleton (it holds the two rows naming only the phone)
    assert n_customers(db) == 31
    assert len({comp(db, "openid", f"o{i}") for i in range(30)}) == 30
    p = comp(db, "phone", clerk)
    assert p not in {comp(db, "openid", f"o{i}") for i in range(30)}
    assert rec(db, "channel_events", "only1", "person") == p
    assert rec(db, "channel_events", "only2", "person") == p
    assert rec(db, "channel_events", "e3", "person") == comp(db, "openid", "o3")
    shared = db.execute("SELECT * FROM intermediate.int_identity__shared_identifiers").fetchall()
    assert shared == [("phone", clerk, 30, "openid:30", 32)]
    ident = db.execute(
        "SELECT degree, is_shared FROM intermediate.int_identity__identifiers WHERE identifier_value = ?", [clerk]
    ).fetchone()
    assert ident == (30, True)
    assert db.execute(
        "SELECT max(degree), bool_or(is_shared) FROM intermediate.int_identity__identifiers WHERE identifier_type = 'openid'"
    ).fetchone() == (1, False)
    assert report.shared_identifiers == 1
    assert report.top_shared == [{"identifier_type": "phone", "masked_value": "138****8000", "degree": 30}]
    assert report.to_metadata()["top_shared"] == ["phone 138****8000 (degree 30)"]
    assert report.links == 0
    # at max_degree 30 the phone is not shared: one customer
    build_identity_graph(db, 30)
    assert n_customers(db) == 1


def test_referral_never_links_referrer_to_referee(db):
    stage(
        db,
        referrals=[
            # one referral, three versions: referrer ids link across versions, referee ids too
            {"referral_id": "r1", "version_rank": 3, "status": "invited", "referrer_member_id": "M_A",
             "referrer_phone": "13800000001"},
            {"referral_id": "r1", "version_rank": 2, "status": "clicked", "referrer_unionid": "uA",
             "referee_openid": "oB"},
            {"referral_id": "r1", "version_rank": 1, "status": "registered", "referee_phone": "13900000002"},
            # invited, no referee yet
            {"referral_id": "r2", "status": "invited", "referrer_unionid": "uA"},
        ],
    )
    build_identity_graph(db, 20)
    a = comp(db, "member_id", "M_A")
    b = comp(db, "openid", "oB")
    assert a != b
    assert comp(db, "phone", "13800000001") == a and comp(db, "unionid", "uA") == a
    assert comp(db, "phone", "13900000002") == b
    assert rec(db, "referrals", "r1", "referrer") == a
    assert rec(db, "referrals", "r1", "referee") == b
    assert rec(db, "referrals", "r2", "referrer") == a
    assert rec(db, "referrals", "r2", "referee") is None
    assert n_customers(db) == 2


def test_all_versions_of_an_order_name_one_buyer(db):
    stage(
        db,
        orders=[
            {"order_id": "O1", "version_rank": 2, "status": "created", "openid": "oX"},
            {"order_id": "O1", "version_rank": 1, "status": "paid", "paid_at": "2024-01-01 09:30:00",
             "phone": "13700000007"},
            {"order_id": "O2", "openid": "oY"},
        ],
    )
    build_identity_graph(db, 20)
    x = comp(db, "openid", "oX")
    assert comp(db, "phone", "13700000007") == x
    assert rec(db, "orders", "O1", "buyer") == x
    assert rec(db, "orders", "O2", "buyer") == comp(db, "openid", "oY") != x
    assert n_customers(db) == 2


def test_converted_referral_referee_is_the_buyer_of_its_order(db):
    stage(
        db,
        orders=[{"order_id": "O9", "openid": "oBuyer"}],
        referrals=[
            {"referral_id": "r1", "version_rank": 2, "status": "clicked", "referrer_member_id": "M_R",
             "referee_unionid": "uRef"},
            {"referral_id": "r1", "version_rank": 1, "status": "converted", "referrer_member_id": "M_R",
             "referee_unionid": "uRef", "order_id": "O9"},
        ],
    )
    build_identity_graph(db, 20)
    buyer = comp(db, "openid", "oBuyer")
    assert comp(db, "unionid", "uRef") == buyer
    assert rec(db, "referrals", "r1", "referee") == buyer == rec(db, "orders", "O9", "buyer")
    assert rec(db, "referrals", "r1", "referrer") == comp(db, "member_id", "M_R") != buyer
    assert n_customers(db) == 2


def test_a_converted_referee_is_the_buyer_of_its_order_when_both_sides_name_only_shared_ids(db):
    """SPEC §3: a converted referral's referee is the buyer of its order_id, also when the order's buyer and the
    referee are named only by shared identifiers (identity review's oracle, 2 of 9 random histories at small
    max degrees): the order went to its phone's customer and the referee to its unionid's, a customer of its
    own acquired by a referral and without the order."""
    stage(
        db,
        events=[ev("e1", openid="o1", phone="13800138001"), ev("e2", openid="o2", phone="13800138001"),
                ev("e3", unionid="u9", member_id="m1"), ev("e4", unionid="u9", member_id="m2")],
        orders=[{"order_id": "ordA", "phone": "13800138001"}],
        referrals=[{"referral_id": "refA", "status": "converted", "referrer_member_id": "m7",
                    "referee_unionid": "u9", "order_id": "ordA"}],
    )
    build_identity_graph(db, 1)
    phone = comp(db, "phone", "13800138001")
    assert rec(db, "orders", "ordA", "buyer") == phone
    assert rec(db, "referrals", "refA", "referee") == phone != comp(db, "unionid", "u9")
    assert rec(db, "referrals", "refA", "referrer") == comp(db, "member_id", "m7")


def test_a_shared_ids_only_referee_is_the_buyer_of_its_own_order_not_of_another_in_its_component(db):
    """R1's versions name orders X then Y, which puts both in one component; R2 names only Y. Every id is shared
    (max degree 1): R2's referee is Y's buyer (SPEC §3: the buyer of its order_id), not X's (diff review: one
    buyer was chosen per component)."""
    stage(
        db,
        events=[ev("e1", openid="o1", phone="13800138001"), ev("e2", openid="o2", phone="13800138001"),
                ev("e3", openid="o3", phone="13800138002"), ev("e4", openid="o4", phone="13800138002"),
                ev("e5", unionid="u8", member_id="m1"), ev("e6", unionid="u8", member_id="m2"),
                ev("e7", unionid="u9", member_id="m3"), ev("e8", unionid="u9", member_id="m4")],
        orders=[{"order_id": "ordX", "phone": "13800138001", "version_rank": 1},
                {"order_id": "ordY", "phone": "13800138002", "version_rank": 1}],
        referrals=[
            {"referral_id": "R1", "status": "converted", "referrer_member_id": "m7", "referee_unionid": "u8",
             "order_id": "ordY", "version_rank": 1},
            {"referral_id": "R1", "status": "converted", "referrer_member_id": "m7", "referee_unionid": "u8",
             "order_id": "ordX", "version_rank": 2},
            {"referral_id": "R2", "status": "converted", "referrer_member_id": "m6", "referee_unionid": "u9",
             "order_id": "ordY", "version_rank": 1},
        ],
    )
    build_identity_graph(db, 1)
    x, y = rec(db, "orders", "ordX", "buyer"), rec(db, "orders", "ordY", "buyer")
    assert x == comp(db, "phone", "13800138001") != y == comp(db, "phone", "13800138002")
    assert rec(db, "referrals", "R2", "referee") == y
    # R1's versions name two orders: the smaller order id's buyer (docs/DECISIONS.md)
    assert rec(db, "referrals", "R1", "referee") == x


def test_a_referee_id_links_to_the_buyer_ids_of_its_order_for_its_degree(db):
    """SPEC §3: a converted referral's referee ids and the ids of its order's buyer link, so they count toward
    each other's degree. A clerk's phone on three customers' events and, as the referee of a converted
    referral, across from a fourth customer's order links to four openids: shared at max_degree 3, so it
    merges nobody (counting only the rows it is on, it had three and glued the four customers into one)."""
    clerk = "13900000001"
    stage(
        db,
        events=[ev(f"e{i}", openid=f"o{i}", phone=clerk) for i in (1, 2, 3)],
        orders=[{"order_id": "O1", "openid": "o4"}],
        referrals=[{"referral_id": "R1", "status": "converted", "referrer_member_id": "mR", "referee_phone": clerk,
                    "order_id": "O1"}],
    )
    build_identity_graph(db, 3)
    assert db.execute(
        "SELECT degree, is_shared FROM intermediate.int_identity__identifiers WHERE identifier_value = ?", [clerk]
    ).fetchone() == (4, True)
    assert db.execute("SELECT identifier_value, degree_by_type FROM intermediate.int_identity__shared_identifiers").fetchall() == [
        (clerk, "openid:4")]
    assert len({comp(db, "openid", f"o{i}") for i in (1, 2, 3, 4)}) == 4
    # the buyer's openid counts the referee's phone (degree 1): across the conversion, the other way round
    assert db.execute(
        "SELECT degree FROM intermediate.int_identity__identifiers WHERE identifier_value = 'o4'"
    ).fetchone() == (1,)
    # at max_degree 4 the phone is not shared: one customer, the order's and the referral's referee included
    build_identity_graph(db, 4)
    assert len({comp(db, "openid", f"o{i}") for i in (1, 2, 3, 4)}) == 1
    assert rec(db, "referrals", "R1", "referee") == rec(db, "orders", "O1", "buyer") == comp(db, "openid", "o1")


def test_an_order_id_on_a_referral_that_is_not_converted_links_nothing(db):
    # SPEC §3: only a *converted* referral's referee is the buyer of its order_id. r2 is `registered` and carries
    # an order id anyway (optional then, SPEC §2): its referee uRef2 and O8's buyer oOther stay two customers.
    stage(
        db,
        orders=[{"order_id": "O8", "openid": "oOther"}],
        referrals=[{"referral_id": "r2", "status": "registered", "referrer_member_id": "M_R", "referee_unionid": "uRef2",
                    "order_id": "O8"}],
    )
    build_identity_graph(db, 20)
    assert comp(db, "unionid", "uRef2") != comp(db, "openid", "oOther")
    assert rec(db, "referrals", "r2", "referee") == comp(db, "unionid", "uRef2")
    assert n_customers(db) == 3


def test_record_with_only_shared_identifiers_goes_to_first_shared_in_column_order(db):
    # unionid U and phone P are both shared (3 openids each, max_degree 2); row 'both' names only U and P
    events = [ev(f"u{i}", openid=f"ou{i}", unionid="U") for i in range(3)]
    events += [ev(f"p{i}", openid=f"op{i}", phone="13600000006") for i in range(3)]
    events += [ev("both", phone="13600000006", unionid="U")]
    stage(db, events=events)
    build_identity_graph(db, 2)
    assert rec(db, "channel_events", "both", "person") == comp(db, "unionid", "U")
    assert comp(db, "unionid", "U") != comp(db, "phone", "13600000006")
    assert n_customers(db) == 7


def test_record_with_a_shared_and_an_own_identifier_belongs_to_its_own(db):
    # unionid U is shared (3 openids, max_degree 2). Row 'mine' names U (column 2) and member M9 (column 5), which
    # is not shared: the row is M9's customer's (SPEC §3: only a row whose *only* identifiers are shared goes to its
    # first shared one); so is order 'o1', whose buyer is named by U and M9 as well.
    events = [ev(f"u{i}", openid=f"ou{i}", unionid="U") for i in range(3)]
    events += [ev("mine", unionid="U", member_id="M9")]
    stage(db, events=events, orders=[{"order_id": "o1", "unionid": "U", "member_id": "M9"}])
    build_identity_graph(db, 2)
    assert rec(db, "channel_events", "mine", "person") == comp(db, "member_id", "M9")
    assert rec(db, "orders", "o1", "buyer") == comp(db, "member_id", "M9")
    assert comp(db, "member_id", "M9") != comp(db, "unionid", "U")
    assert n_customers(db) == 4  # ou0, ou1, ou2 (each with its row) and M9


def test_a_long_chain_of_rows_is_one_customer_and_its_smallest_node_labels_it(db):
    # 400 rows: e_i names o_i and m_{i+1}, f_i names m_i and o_i, so m000-o000-m001-...-o199-m200 is one path of
    # 400 links through 401 identifiers; a separate row names ox and ux.
    # A node's id is the MD5 of "type NUL value" read as a little-endian 128-bit integer, its top 63 bits
    # (computed here with hashlib, not with the SQL under test); a component's id is its smallest node id.
    n = 200
    stage(db, events=[ev(f"e{i}", openid=f"o{i:03d}", member_id=f"m{i + 1:03d}") for i in range(n)]
          + [ev(f"f{i}", member_id=f"m{i:03d}", openid=f"o{i:03d}") for i in range(n)]
          + [ev("x", openid="ox", unionid="ux")])
    build_identity_graph(db, 20)
    assert n_customers(db) == 2
    chain = db.execute(
        "SELECT count(*), count(DISTINCT component_id), min(component_id) FROM intermediate.int_identity__identifiers "
        "WHERE identifier_value NOT IN ('ox', 'ux')"
    ).fetchone()
    chain_ids = [md5_id("member_id", f"m{i:03d}") for i in range(n + 1)] + [md5_id("openid", f"o{i:03d}") for i in range(n)]
    assert chain == (401, 1, min(chain_ids))
    assert comp(db, "openid", "ox") == comp(db, "unionid", "ux") == min(md5_id("openid", "ox"), md5_id("unionid", "ux"))


# ------------------------------------------------------------------------------------------------ stable keys
def test_keys_merge_keeps_the_earlier_customer_and_records_the_bridge(db):
    base = [ev("a1", openid="oA"), ev("c1", openid="oC", member_id="MC")]
    touches = {("openid", "oA"): "2024-03-01 00:00:00+08", ("openid", "oC"): "2024-04-01 00:00:00+08"}
    # run 1: A (acquired March) and C (April) -> keys in acquired_at order
    stage(db, events=base)
    r1 = keys_run(db, "run1", touches)
    assert (r1.customers, r1.new_keys) == (2, 2)
    assert key_of(db, "openid", "oA") == "C000000001"
    assert key_of(db, "openid", "oC") == "C000000002"

    # run 2: late data brings B, acquired in January: a new key, although B is older than A
    base += [ev("b1", openid="oB", phone="13800000002")]
    touches[("openid", "oB")] = "2024-01-01 00:00:00+08"
    stage(db, events=base)
    keys_run(db, "run2", touches)
    assert key_of(db, "openid", "oB") == "C000000003"
    assert key_of(db, "openid", "oA") == "C000000001"

    # run 3: a new phone bridges A and B; B (January) is older, so B's key survives and A's is merged
    base += [ev("x1", openid="oA", phone="13900000009"), ev("x2", phone="13900000009", openid="oB")]
    stage(db, events=base)
    r3 = keys_run(db, "run3", touches, now="2024-07-03 00:00:00")
    assert (r3.customers, r3.new_keys, r3.merges, r3.splits) == (2, 0, 1, 0)
    assert key_of(db, "openid", "oA") == key_of(db, "openid", "oB") == "C000000003"
    assert key_of(db, "openid", "oC") == "C000000002"  # unrelated: unchanged
    assert db.execute(
        "SELECT merged_key, surviving_key, run_id, via_identifier_type, via_identifier_value "
        "FROM identity_state.customer_key_merges"
    ).fetchall() == [("C000000001", "C000000003", "run3", "phone", "139****0009")]
    assert db.execute(
        "SELECT customer_key, status, merged_into FROM identity_state.customer_keys ORDER BY 1"
    ).fetchall() == [
        ("C000000001", "merged", "C000000003"),
        ("C000000002", "active", None),
        ("C000000003", "active", None),
    ]

    # run 4: the same data again changes nothing
    before = state_snapshot(db)
    r4 = keys_run(db, "run4", touches, now="2024-07-04 00:00:00")
    assert (r4.new_keys, r4.merges, r4.splits, r4.retired) == (0, 0, 0, 0)
    assert state_snapshot(db) == before


def test_merges_through_an_order_and_a_referral_record_their_bridges(db):
    """The merge's via identifier is found in orders and referral sides too (the identity graph's memberships
    hold the groups of every staging table): a new identifier in the bridging group first, else the merged
    customer's own identifier that met another customer's."""
    base = [ev("a", openid="oA"), ev("b", openid="oB"), ev("c", unionid="uC", member_id="M3"), ev("d", unionid="uD")]
    touches = {("openid", "oA"): "2024-01-01 00:00:00+08", ("openid", "oB"): "2024-02-01 00:00:00+08",
               ("member_id", "M3"): "2024-03-01 00:00:00+08", ("unionid", "uD"): "2024-04-01 00:00:00+08"}
    stage(db, events=base)
    keys_run(db, "run1", touches)
    assert [key_of(db, *i) for i in (("openid", "oA"), ("openid", "oB"), ("member_id", "M3"), ("unionid", "uD"))] == [
        "C000000001", "C000000002", "C000000003", "C000000004"]
    # an order bridges B (February) and C (March); a referral's referee side bridges A (January) and D (April)
    # and brings a new phone; the referrer side names C again (a group of its own: it bridges nothing)
    stage(db, events=base, orders=[{"order_id": "O1", "openid": "oB", "member_id": "M3"}],
          referrals=[{"referral_id": "R1", "referee_openid": "oA", "referee_unionid": "uD",
                      "referee_phone": "13900000001", "referrer_member_id": "M3"}])
    r2 = keys_run(db, "run2", touches)
    assert (r2.merges, r2.new_keys, r2.splits) == (2, 0, 0)
    assert db.execute(
        "SELECT merged_key, surviving_key, via_identifier_type, via_identifier_value "
        "FROM identity_state.customer_key_merges ORDER BY 1"
    ).fetchall() == [
        ("C000000003", "C000000002", "member_id", "M3"),  # no new identifier in the order: C's own that met B's
        ("C000000004", "C000000001", "phone", "139****0001"),  # the new phone beside D's unionid
    ]


def test_merges_without_the_graphs_state_ask_for_the_graph_first(db, monkeypatch):
    """The via identifiers come from the identity graph's memberships: without them (a graph last built by a
    privdom that kept no state) the keys say what to materialize instead of failing on a missing table."""
    stage(db, events=[ev("a", openid="oA"), ev("b", openid="oB")])
    touches = {("openid", "oA"): "2024-01-01 00:00:00+08", ("openid", "oB"): "2024-02-01 00:00:00+08"}
    keys_run(db, "r1", touches)
    stage(db, events=[ev("a", openid="oA"), ev("b", openid="oB"), ev("ab", openid="oA", unionid="uAB"),
                      ev("ba", unionid="uAB", openid="oB")])
    build_identity_graph(db, 20)
    db.execute("DROP TABLE identity_state.graph_memberships")
    before = state_snapshot(db)
    monkeypatch.setitem(keys_run.__globals__, "build_identity_graph", lambda con, max_degree: None)  # keep it as it is
    with pytest.raises(RuntimeError, match="graph_memberships is missing.*Materialize the identity graph"):
        keys_run(db, "r2", touches)
    assert state_snapshot(db) == before  # nothing of the registry or the keys written


def test_merge_tie_on_acquired_at_keeps_the_smaller_key(db):
    stage(db, events=[ev("a", openid="oA"), ev("b", openid="oB")])
    touches = {("openid", "oA"): "2024-01-01 00:00:00+08", ("openid", "oB"): "2024-01-01 00:00:00+08"}
    keys_run(db, "r1", touches)
    ka, kb = key_of(db, "openid", "oA"), key_of(db, "openid", "oB")
    stage(db, events=[ev("a", openid="oA"), ev("b", openid="oB"), ev("ab", openid="oA", unionid="uAB"),
                      ev("ba", unionid="uAB", openid="oB")])
    keys_run(db, "r2", touches)
    assert key_of(db, "openid", "oA") == key_of(db, "openid", "oB") == min(ka, kb)
    assert db.execute("SELECT via_identifier_type, via_identifier_value FROM identity_state.customer_key_merges").fetchall() == [
        ("unionid", "uAB")
    ]


def test_split_when_an_identifier_becomes_shared(db):
    clerk = "13800008000"
    first = [ev(f"e{i}", openid=f"o{i:02d}", phone=clerk) for i in range(1, 16)] + [ev("z", openid="oZ")]
    touches = {("openid", f"o{i:02d}"): f"2024-03-{i:02d} 00:00:00+08" for i in range(1, 31)}
    touches[("openid", "o07")] = "2023-12-01 00:00:00+08"  # o07 holds the earliest first touch
    touches[("openid", "oZ")] = "2024-06-01 00:00:00+08"
    stage(db, events=first)
    keys_run(db, "run1", touches)
    # run 1: 15 openids share the phone (degree 15 <= 20): one customer
    assert {key_of(db, "openid", f"o{i:02d}") for i in range(1, 16)} == {"C000000001"}
    assert key_of(db, "openid", "oZ") == "C000000002"

    # run 2: 15 more strangers use the clerk's phone: degree 30 > 20, the phone is shared, the customer splits
    stage(db, events=first + [ev(f"e{i}", openid=f"o{i:02d}", phone=clerk) for i in range(16, 31)])
    r2 = keys_run(db, "run2", touches)
    assert (r2.customers, r2.new_keys, r2.kept_keys, r2.splits, r2.merges) == (31, 29, 2, 14, 0)
    assert key_of(db, "openid", "o07") == "C000000001"  # the part holding the earliest first touch
    assert key_of(db, "openid", "oZ") == "C000000002"  # unrelated: unchanged
    # new keys in acquired_at order: o01 (March 1) first, o02 next, ..., o30 last
    assert key_of(db, "openid", "o01") == "C000000003"
    assert key_of(db, "openid", "o02") == "C000000004"
    assert key_of(db, "openid", "o30") == "C000000031"
    splits = db.execute(
        "SELECT DISTINCT split_key, via_identifier_type, via_identifier_value FROM identity_state.customer_key_splits"
    ).fetchall()
    assert splits == [("C000000001", "phone", "138****8000")]
    assert db.execute("SELECT count(*) FROM identity_state.customer_key_splits").fetchone()[0] == 14
    assert db.execute("SELECT count(*) FROM identity_state.customer_keys WHERE status = 'active'").fetchone()[0] == 31
    # the phone's singleton holds no row: not a customer, so it has no key
    assert key_of(db, "phone", clerk) is None

    before = state_snapshot(db)
    keys_run(db, "run3", touches)
    assert state_snapshot(db) == before


def test_graph_tables_change_together_or_not_at_all(db, monkeypatch):
    # a failure after the first output table is written leaves all three as the last good build left them
    stage(db, events=[ev("e1", openid="oA", unionid="uA"), ev("e2", openid="oB")])
    build_identity_graph(db, 20)
    before = {t: db.execute(f"SELECT * FROM intermediate.{t} ORDER BY ALL").fetchall()
              for t in ("int_identity__identifiers", "int_identity__records", "int_identity__shared_identifiers")}
    stage(db, events=[ev("e1", openid="oA", unionid="uA"), ev("e2", openid="oB", unionid="uA"), ev("e3", phone="13800000001")])

    class FailOnRecords:
        def __init__(self, con):
            self.con = con

        def execute(self, sql, *args):
            if "CREATE OR REPLACE TABLE intermediate.int_identity__records" in sql:
                raise RuntimeError("disk full")
            return self.con.execute(sql, *args)

        def __getattr__(self, name):
            return getattr(self.con, name)

    with pytest.raises(RuntimeError, match="disk full"):
        build_identity_graph(FailOnRecords(db), 20)
    after = {t: db.execute(f"SELECT * FROM intermediate.{t} ORDER BY ALL").fetchall() for t in before}
    assert after == before
    # and the next build goes through: e1 and e2 now share uA
    build_identity_graph(db, 20)
    assert rec(db, "channel_events", "e1", "person") == rec(db, "channel_events", "e2", "person")
    assert n_customers(db) == 2


def test_events_keep_their_component_after_deletes_and_appends(db):
    # deleted rows and later appends must not shift one event's identifiers onto another event
    stage(db, events=[ev(f"e{i}", openid=f"o{i}") for i in range(6)])
    db.execute("DELETE FROM staging.stg_channel_events WHERE event_id IN ('e1', 'e3')")
    db.execute("INSERT INTO staging.stg_channel_events (event_id, occurred_at, channel, event_type, openid, member_id) "
               "VALUES ('e9', TIMESTAMPTZ '2024-01-01 10:00:00+08', 'wecom', 'engage', 'o9', 'M5')")
    build_identity_graph(db, 20)
    for i in (0, 2, 4, 5, 9):
        assert rec(db, "channel_events", f"e{i}", "person") == comp(db, "openid", f"o{i}"), i
    assert rec(db, "channel_events", "e1", "person") is None
    assert comp(db, "member_id", "M5") == comp(db, "openid", "o9")
    assert n_customers(db) == 5


def test_channel_events_missing_says_build_staging_first(db):
    stage(db)
    db.execute("DROP TABLE staging.stg_channel_events")
    with pytest.raises(RuntimeError, match="staging.stg_channel_events does not exist: build the dbt staging models first"):
        build_identity_graph(db, 20)


def test_channel_events_may_be_a_view(db):
    stage(db, events=[ev("e1", openid="oA", phone="13700000001"), ev("e2", phone="13700000001")])
    db.execute("ALTER TABLE staging.stg_channel_events RENAME TO stg_channel_events_t")
    db.execute("CREATE VIEW staging.stg_channel_events AS SELECT * FROM staging.stg_channel_events_t")
    build_identity_graph(db, 20)
    assert rec(db, "channel_events", "e1", "person") == rec(db, "channel_events", "e2", "person") == comp(db, "openid", "oA")
    assert n_customers(db) == 1


def test_events_with_the_same_identifiers_share_a_group_and_each_keeps_its_record(db):
    """Channel events are grouped by their tuple of identifiers (NULL equal to NULL). Worked by hand:
    e1 and e2 carry (openid oA, phone P): one group, linking oA and P; e3 carries oA alone, e5 P alone: both
    join that component through their identifier. e4 carries unionid "oA": the same text as e1's openid but
    another type, so another node and another customer. e6 and e7 carry nothing but member M7: a second
    tuple seen twice, a third customer. Every event has exactly one record."""
    p = "13700000001"
    stage(db, events=[
        ev("e1", openid="oA", phone=p), ev("e2", openid="oA", phone=p), ev("e3", openid="oA"),
        ev("e4", unionid="oA"), ev("e5", phone=p), ev("e6", member_id="M7"), ev("e7", member_id="M7"),
    ])
    build_identity_graph(db, 20)
    a = comp(db, "openid", "oA")
    assert comp(db, "phone", p) == a
    for e in ("e1", "e2", "e3", "e5"):
        assert rec(db, "channel_events", e, "person") == a, e
    assert rec(db, "channel_events", "e4", "person") == comp(db, "unionid", "oA") != a
    assert rec(db, "channel_events", "e6", "person") == rec(db, "channel_events", "e7", "person") == comp(db, "member_id", "M7")
    assert db.execute(
        "SELECT count(*), count(DISTINCT record_id) FROM intermediate.int_identity__records WHERE source = 'channel_events'"
    ).fetchone() == (7, 7)
    assert n_customers(db) == 3


def test_occurrences_of_some_sources_are_those_rows_of_all_sources(db):
    """The memberships statement reads channel events and orders/referrals separately (occurrences_sql's
    `sources`); together they must be every occurrence, each once. Hand count: e1 names 2 identifiers, O1's two
    versions 1 each, R1 3 (referrer member_id; referee openid and phone)."""
    from orchestration.identity.graph import occurrences_sql

    stage(
        db,
        events=[ev("e1", openid="o1", phone="13700000001")],
        orders=[{"order_id": "O1", "version_rank": 1, "openid": "o1"},
                {"order_id": "O1", "version_rank": 2, "member_id": "m1"}],
        referrals=[{"referral_id": "R1", "referrer_member_id": "m9", "referee_openid": "o2",
                    "referee_phone": "13700000002"}],
    )
    cols = "source, record_id, role, version_rank, type_ord, identifier_type, identifier_value"
    every = db.execute(f"SELECT {cols} FROM ({occurrences_sql()}) ORDER BY ALL").fetchall()
    events = db.execute(f"SELECT {cols} FROM ({occurrences_sql(sources=('channel_events',))})").fetchall()
    others = db.execute(f"SELECT {cols} FROM ({occurrences_sql(sources=('orders', 'referrals'))})").fetchall()
    assert len(every) == 7 and len(events) == 2 and len(others) == 5
    assert sorted(events + others) == every
    assert ("referrals", "R1", "referrer", 1, 5, "member_id", "m9") in others  # member_id is the 5th type
    with pytest.raises(ValueError, match="sources"):
        occurrences_sql(sources=("orders", "clicks"))


def test_key_check_counts_find_every_kind_of_unsound_key(db):
    """The counts behind int_customer_keys' asset checks, on hand-made tables: 0 when sound, and each defect
    counted once."""
    from orchestration.identity.keys import key_check_counts

    db.execute("CREATE SCHEMA IF NOT EXISTS intermediate")
    db.execute("CREATE TABLE ft (component_id BIGINT)")
    db.execute("INSERT INTO ft VALUES (1), (2), (3)")
    db.execute("CREATE TABLE intermediate.int_customer_keys (component_id BIGINT, customer_key VARCHAR)")
    db.execute("INSERT INTO intermediate.int_customer_keys VALUES (1, 'K1'), (2, 'K2'), (3, 'K3')")
    db.execute("CREATE TABLE intermediate.int_identity__identifiers "
               "(identifier_type VARCHAR, identifier_value VARCHAR, component_id BIGINT, degree BIGINT, is_shared BOOLEAN)")
    db.execute("INSERT INTO intermediate.int_identity__identifiers VALUES "
               "('openid', 'o1', 1, 1, false), ('phone', '13800000001', 1, 1, false), ('openid', 'o2', 2, 1, false), "
               "('phone', '13800008000', 9, 30, true)")  # shared: no key needed
    assert key_check_counts(db, "ft").__dict__ == {
        "components_without_one_key": 0, "keys_on_two_components": 0, "identifiers_not_on_one_customer": 0}

    db.execute("INSERT INTO ft VALUES (4)")  # a component without a key
    db.execute("INSERT INTO intermediate.int_customer_keys VALUES (3, 'K3b')")  # a component with two keys
    db.execute("INSERT INTO intermediate.int_customer_keys VALUES (5, 'K1')")  # a key on two components
    db.execute("INSERT INTO intermediate.int_identity__identifiers VALUES "
               "('openid', 'o4', 4, 1, false), "  # its component has no key
               "('unionid', 'u3', 3, 1, false)")  # its component has two keys
    # every identifier on one row: counted through its component's keys
    assert key_check_counts(db, "ft").__dict__ == {
        "components_without_one_key": 2, "keys_on_two_components": 1, "identifiers_not_on_one_customer": 2}
    db.execute("INSERT INTO intermediate.int_identity__identifiers VALUES "
               "('openid', 'o2', 1, 1, false)")  # o2 is on components 2 and 1: two customers
    # an identifier on two rows: every identifier's rows compared
    assert key_check_counts(db, "ft").__dict__ == {
        "components_without_one_key": 2, "keys_on_two_components": 1, "identifiers_not_on_one_customer": 3}
