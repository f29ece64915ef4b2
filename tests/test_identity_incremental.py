"""The identity graph built incrementally (orchestration/identity/graph.py, ``_build_incremental``).

The oracle is the full build: after every delivery of new staged rows, a warehouse that has only ever taken in
each delivery incrementally must hold exactly the tables (outputs and state) that a full build of the same
staging writes in another warehouse. Histories are random (seeded) and small, with identifier pools small
enough that deliveries merge customers, make identifiers shared (a low ``max_degree``) and add versions to old
orders and referrals, conversions to orders that arrive later, and events with only known identifiers.
"""

from __future__ import annotations

import random

import duckdb
import pytest

from orchestration.identity import graph as G
from orchestration.identity.graph import IdCollision, build_identity_graph
from tests.test_identity import IDS, md5_id, stage

OUTPUTS = (G.IDENTIFIERS_TABLE, G.RECORDS_TABLE, G.SHARED_TABLE)
STATE = (G.NODES_CACHE, G.TUPLES_CACHE, G.MEMBERSHIPS_CACHE, G.LINKS_CACHE, G.STATE_TABLE)


def tables(con, names=OUTPUTS + STATE) -> dict[str, list[tuple]]:
    return {t: con.execute(f"SELECT * FROM {t} ORDER BY ALL").fetchall() for t in names}


@pytest.fixture
def dbs(tmp_path):
    cons = []
    for name in ("incremental", "full"):
        c = duckdb.connect(str(tmp_path / f"{name}.duckdb"))
        c.execute("SET TimeZone = 'Asia/Shanghai'")
        cons.append(c)
    yield cons
    for c in cons:
        c.close()


class History:
    """Staged rows as the staging models keep them: events appended; every distinct version of an order or
    referral kept once (an identical re-delivery keeps its first delivery's file_id and row number and is
    dated by its latest: last_file_id, last_row_number), version_rank recomputed over all of them (1 = latest
    updated_at, then the later last delivery)."""

    def __init__(self) -> None:
        self.events: list[dict] = []
        self.orders: list[dict] = []
        self.referrals: list[dict] = []
        self.file_id = 0

    def deliver(self, events=(), orders=(), referrals=()) -> None:
        self.file_id += 1
        self.events += [{**r, "file_id": self.file_id} for r in events]
        for rows, target in ((orders, self.orders), (referrals, self.referrals)):
            target += [{**r, "file_id": self.file_id, "row_number_in_file": i + 1} for i, r in enumerate(rows)]

    @staticmethod
    def _ranked(rows: list[dict], key: str) -> list[dict]:
        lineage = ("file_id", "row_number_in_file")
        distinct: dict[tuple, dict] = {}
        for r in rows:  # in delivery order
            content = tuple(sorted((k, v) for k, v in r.items() if k not in lineage))
            first = distinct.setdefault(content, r)
            distinct[content] = {**first, "last_file_id": r["file_id"], "last_row_number": r["row_number_in_file"]}
        out = []
        by_key: dict[str, list[dict]] = {}
        for r in distinct.values():
            by_key.setdefault(r[key], []).append(r)
        for versions in by_key.values():
            ordered = sorted(versions, key=lambda r: (r.get("updated_at", ""), r["last_file_id"], r["last_row_number"]),
                             reverse=True)
            out += [{**r, "version_rank": i + 1} for i, r in enumerate(ordered)]
        return out

    def stage(self, con) -> None:
        stage(con, events=self.events, orders=self._ranked(self.orders, "order_id"),
              referrals=self._ranked(self.referrals, "referral_id"))


def random_delivery(rng: random.Random, h: History, day: int, pool: int) -> dict[str, list[dict]]:
    def ids(types=IDS, k=None):
        chosen = rng.sample(types, k or rng.randint(1, 3))
        return {t: f"{t[:2]}{rng.randrange(pool)}" for t in chosen}

    events = [{"event_id": f"e{day}-{i}", **ids()} for i in range(rng.randint(3, 12))]
    if h.events and rng.random() < 0.8:  # events with a known tuple only
        events += [{**{k: v for k, v in rng.choice(h.events).items() if k in IDS},
                    "event_id": f"e{day}-known-{i}"} for i in range(rng.randint(1, 3))]
    events += [{"event_id": f"e{day}-none"}]  # no identifier: no group, no record
    stamp = f"2024-01-{day:02d} 10:00:00"
    orders = [{"order_id": f"o{day}-{i}", "updated_at": stamp, **ids()} for i in range(rng.randint(1, 5))]
    if h.orders:  # new versions of old orders, some with a new identifier, some with none
        for old in rng.sample(sorted({o["order_id"] for o in h.orders}), k=min(2, len({o["order_id"] for o in h.orders}))):
            orders.append({"order_id": old, "updated_at": stamp, **(ids(k=1) if rng.random() < 0.7 else {})})
    referrals = []
    for i in range(rng.randint(0, 3)):
        rid = f"r{day}-{i}"
        side = {f"referrer_{t}": v for t, v in ids(("member_id", "unionid", "phone"), k=1).items()}
        side |= {f"referee_{t}": v for t, v in ids(("openid", "unionid", "phone", "member_id"), k=1).items()}
        referrals.append({"referral_id": rid, "updated_at": stamp, **side})
    if h.referrals:  # conversions: to an old order, to a day's order, or to an order that comes later
        old = rng.choice(h.referrals)
        target = rng.choice([*(o["order_id"] for o in h.orders[-3:]), orders[0]["order_id"], f"o{day + 1}-0"])
        referrals.append({**{k: v for k, v in old.items() if k.startswith(("referrer_", "referee_", "referral_id"))},
                          "updated_at": stamp, "status": "converted", "order_id": target})
    return {"events": events, "orders": orders, "referrals": referrals}


@pytest.mark.parametrize("seed", range(8))
def test_incremental_builds_equal_a_full_build_after_every_delivery(dbs, seed):
    inc, full = dbs
    rng = random.Random(seed)
    h = History()
    max_degree = 2  # low, so that identifiers become shared as deliveries come in
    modes = []
    for day in range(1, 8):
        h.deliver(**random_delivery(rng, h, day, pool=12 + 3 * day))
        h.stage(inc)
        h.stage(full)
        report = build_identity_graph(inc, max_degree)
        modes.append(report.mode)
        build_identity_graph(full, max_degree, full_refresh=True)
        assert tables(inc) == tables(full), f"seed {seed}, day {day}"
    assert modes == ["full"] + ["incremental"] * 6
    shared = full.execute(f"SELECT count(*) FROM {G.SHARED_TABLE}").fetchone()[0]
    assert shared > 0  # the history did make identifiers shared


def test_a_delivery_of_known_identifiers_touches_only_its_customers(dbs):
    inc, full = dbs
    h = History()
    h.deliver(events=[{"event_id": "a1", "openid": "oA", "phone": "13800000001"},
                      {"event_id": "b1", "openid": "oB"},
                      {"event_id": "c1", "openid": "oC", "member_id": "mC"}])
    h.stage(inc)
    assert build_identity_graph(inc, 20).mode == "full"
    # a second event of A's known tuple, and one linking B to a new member id
    h.deliver(events=[{"event_id": "a2", "openid": "oA", "phone": "13800000001"},
                      {"event_id": "b2", "openid": "oB", "member_id": "mB"}])
    h.stage(inc)
    report = build_identity_graph(inc, 20)
    assert report.mode == "incremental"
    # touched: B's component (a member of the new tuple) and mB's (new, its own); A's tuple is known, so A's
    # component is not touched but its new event gets a record; C is left alone
    assert report.touched_components == 2
    assert report.relabelled_nodes == 2  # oB, mB
    # written: b1 again (its group has an affected member), b2 and a2 (the day's events; a2's group is unchanged)
    assert report.records_written == 3
    h.stage(full)
    build_identity_graph(full, 20, full_refresh=True)
    assert tables(inc) == tables(full)


def test_a_converted_referral_to_a_later_order_links_when_the_order_arrives(dbs):
    inc, full = dbs
    h = History()
    h.deliver(events=[{"event_id": "x1", "openid": "oX"}],
              referrals=[{"referral_id": "r1", "referrer_member_id": "mR", "referee_phone": "13900000009",
                          "status": "converted", "order_id": "o9"}])
    h.stage(inc)
    build_identity_graph(inc, 20)
    h.deliver(orders=[{"order_id": "o9", "openid": "oX"}])
    h.stage(inc)
    assert build_identity_graph(inc, 20).mode == "incremental"
    rec = {r[0]: r[1] for r in inc.execute(
        f"SELECT source || ':' || record_id || ':' || role, component_id FROM {G.RECORDS_TABLE}").fetchall()}
    # the referee's phone, the order o9 and oX (the buyer) are one customer; the referrer another
    assert rec["referrals:r1:referee"] == rec["orders:o9:buyer"] == rec["channel_events:x1:person"]
    assert rec["referrals:r1:referrer"] != rec["referrals:r1:referee"]
    h.stage(full)
    build_identity_graph(full, 20, full_refresh=True)
    assert tables(inc) == tables(full)


def deliver_each_and_compare(dbs, deliveries: list[dict], max_degree: int, after=None) -> History:
    """Deliver each piece in turn; after each, an incremental build and a full build of the same history give the
    same tables. `after(inc)` runs after each delivery's builds."""
    inc, full = dbs
    h = History()
    for delivery in deliveries:
        h.deliver(**delivery)
        h.stage(inc)
        h.stage(full)
        build_identity_graph(inc, max_degree)
        build_identity_graph(full, max_degree, full_refresh=True)
        assert tables(inc) == tables(full)
        if after is not None:
            after(inc)
    return h


def records(con) -> dict[str, int]:
    return dict(con.execute(
        f"SELECT source || ':' || record_id || ':' || role, component_id FROM {G.RECORDS_TABLE}").fetchall())


@pytest.mark.parametrize("order_first", [True, False])
def test_a_conversion_that_raises_a_degree_splits_the_customers_it_glued(dbs, order_first):
    """A clerk's phone on three customers' events (not shared at max_degree 3: one customer), then a converted
    referral whose referee is that phone and whose order is a fourth customer's: the phone now links to four
    openids (SPEC §3: the referee's ids and the buyer's ids link), is shared and splits the customer; whether
    the order or the referral comes first, the incremental builds equal a full build after each delivery."""
    clerk = "13900000001"
    order = {"order_id": "O1", "openid": "o4"}
    referral = {"referral_id": "R1", "status": "converted", "referrer_member_id": "mR", "referee_phone": clerk,
                "order_id": "O1"}
    deliveries = [
        {"events": [{"event_id": f"e{i}", "openid": f"o{i}", "phone": clerk} for i in (1, 2, 3)]},
        {"orders": [order]} if order_first else {"referrals": [referral]},
        {"referrals": [referral]} if order_first else {"orders": [order]},
    ]
    customers = []
    deliver_each_and_compare(dbs, deliveries, 3, after=lambda con: customers.append(len({c for (c,) in con.execute(
        f"SELECT component_id FROM {G.IDENTIFIERS_TABLE} WHERE identifier_type = 'openid'").fetchall()})))
    assert customers[0] == 1 and customers[-1] == 4


@pytest.mark.parametrize("order_first", [True, False])
def test_a_referee_and_a_buyer_named_by_shared_ids_only_are_one_customer_in_either_order(dbs, order_first):
    """The order's buyer and the converted referee are named only by shared identifiers (a phone on two
    openids, a unionid on two member ids, max degree 1): the referee is the order's buyer (SPEC §3) whichever
    arrives first, and an incremental build equals a full build after each delivery."""
    order = {"order_id": "ordA", "phone": "13800138001"}
    referral = {"referral_id": "refA", "status": "converted", "referrer_member_id": "m7", "referee_unionid": "u9",
                "order_id": "ordA"}
    deliveries = [
        {"events": [{"event_id": "e1", "openid": "o1", "phone": "13800138001"},
                    {"event_id": "e2", "openid": "o2", "phone": "13800138001"},
                    {"event_id": "e3", "unionid": "u9", "member_id": "m1"},
                    {"event_id": "e4", "unionid": "u9", "member_id": "m2"}]},
        {"orders": [order]} if order_first else {"referrals": [referral]},
        {"referrals": [referral]} if order_first else {"orders": [order]},
    ]
    deliver_each_and_compare(dbs, deliveries, 1)
    rec = records(dbs[0])
    assert rec["referrals:refA:referee"] == rec["orders:ordA:buyer"]


def test_shared_ids_only_referees_follow_their_own_orders_delivered_piece_by_piece(dbs):
    """The history of the test above in test_identity.py (R1's versions name X then Y, R2 names Y; every id
    shared), one piece a delivery: the incremental build equals a full build after each, and R2's referee ends
    as Y's buyer."""
    deliveries = [
        {"events": [{"event_id": "e1", "openid": "o1", "phone": "13800138001"},
                    {"event_id": "e2", "openid": "o2", "phone": "13800138001"},
                    {"event_id": "e3", "openid": "o3", "phone": "13800138002"},
                    {"event_id": "e4", "openid": "o4", "phone": "13800138002"},
                    {"event_id": "e5", "unionid": "u8", "member_id": "m1"},
                    {"event_id": "e6", "unionid": "u8", "member_id": "m2"},
                    {"event_id": "e7", "unionid": "u9", "member_id": "m3"},
                    {"event_id": "e8", "unionid": "u9", "member_id": "m4"}]},
        {"orders": [{"order_id": "ordX", "phone": "13800138001"}, {"order_id": "ordY", "phone": "13800138002"}]},
        {"referrals": [{"referral_id": "R2", "status": "converted", "referrer_member_id": "m6",
                        "referee_unionid": "u9", "order_id": "ordY", "updated_at": "2024-01-01 00:00:00"}]},
        {"referrals": [{"referral_id": "R1", "status": "converted", "referrer_member_id": "m7",
                        "referee_unionid": "u8", "order_id": "ordX", "updated_at": "2024-01-01 00:00:00"}]},
        {"referrals": [{"referral_id": "R1", "status": "converted", "referrer_member_id": "m7",
                        "referee_unionid": "u8", "order_id": "ordY", "updated_at": "2024-01-02 00:00:00"}]},
    ]
    deliver_each_and_compare(dbs, deliveries, 1)
    rec = records(dbs[0])
    assert rec["referrals:R2:referee"] == rec["orders:ordY:buyer"] != rec["orders:ordX:buyer"]


def test_a_graph_built_before_the_referee_rule_is_built_again_in_full(dbs, monkeypatch):
    """GRAPH_VERSION 3: a warehouse whose graph the release before the referee-follows-buyer rule built (version
    2) has referees of shared-ids-only components as customers of their own; the first build after the upgrade
    is a full one, so they are corrected though no new row touches their component (diff review)."""
    inc, full = dbs
    new = G._records_sql
    rule = "coalesce(c.component_id, b.buyer, pl.own_component)"

    def before_the_rule(**kw):
        sql = new(**kw)
        assert sql.count(rule) == 1
        return sql.replace(rule, "coalesce(c.component_id, pl.own_component)")

    h = History()
    h.deliver(events=[{"event_id": "e1", "openid": "o1", "phone": "13800138001"},
                      {"event_id": "e2", "openid": "o2", "phone": "13800138001"},
                      {"event_id": "e3", "unionid": "u9", "member_id": "m1"},
                      {"event_id": "e4", "unionid": "u9", "member_id": "m2"}],
              orders=[{"order_id": "ordA", "phone": "13800138001"}],
              referrals=[{"referral_id": "refA", "status": "converted", "referrer_member_id": "m7",
                          "referee_unionid": "u9", "order_id": "ordA"}])
    h.stage(inc)
    current = G.GRAPH_VERSION
    with monkeypatch.context() as m:
        m.setattr(G, "_records_sql", before_the_rule)
        m.setattr(G, "GRAPH_VERSION", 2)
        build_identity_graph(inc, 1)
    assert G.GRAPH_VERSION == current >= 3
    h.deliver(events=[{"event_id": "e9", "openid": "zz"}])  # touches nothing of refA's
    h.stage(inc)
    h.stage(full)
    assert build_identity_graph(inc, 1).mode == "full"
    build_identity_graph(full, 1, full_refresh=True)
    rec = records(inc)
    assert rec["referrals:refA:referee"] == rec["orders:ordA:buyer"]
    assert tables(inc) == tables(full)


def _two_deliveries(con) -> History:
    h = History()
    h.deliver(events=[{"event_id": "a1", "openid": "oA", "member_id": "m1"}])
    h.stage(con)
    build_identity_graph(con, 20)
    h.deliver(events=[{"event_id": "a2", "openid": "oA", "member_id": "m2"}])
    h.stage(con)
    return h


def test_a_shared_identifier_in_the_new_rows_does_not_touch_its_history(dbs):
    inc, full = dbs
    h = History()
    # a clerk's phone on 30 customers' events: shared at max_degree 2, its own component
    h.deliver(events=[{"event_id": f"e{i}", "openid": f"o{i}", "phone": "13800000000"} for i in range(30)])
    h.stage(inc)
    assert build_identity_graph(inc, 2).shared_identifiers == 1
    h.deliver(events=[{"event_id": "new", "openid": "oNew", "phone": "13800000000"}])
    h.stage(inc)
    report = build_identity_graph(inc, 2)
    # touched: oNew's component only (the phone was shared already: no links, its own component, and the
    # records of its 30 earlier events keep their customers); written: the new event's record only
    assert (report.mode, report.touched_components, report.relabelled_nodes, report.records_written) == (
        "incremental", 1, 1, 1)
    assert inc.execute(f"SELECT degree, rows FROM {G.SHARED_TABLE}").fetchall() == [(31, 31)]
    h.stage(full)
    build_identity_graph(full, 2, full_refresh=True)
    assert tables(inc) == tables(full)


def test_a_full_build_when_the_state_does_not_fit(dbs):
    con, _ = dbs
    stage(con, events=[{"event_id": "a0", "openid": "oA"}])
    assert build_identity_graph(con, 20).full_build_reason == "no graph state yet"
    _two_deliveries(con)
    # an identifier in a row the graph has already taken in changed behind its back: full, and correct
    con.execute("UPDATE staging.stg_channel_events SET member_id = 'm9' WHERE event_id = 'a1'")
    report = build_identity_graph(con, 20)
    assert report.mode == "full"
    assert "staging.stg_channel_events changed in rows the graph has already taken in" in report.full_build_reason
    assert con.execute(f"SELECT count(*) FROM {G.IDENTIFIERS_TABLE} WHERE identifier_value = 'm9'").fetchone()[0] == 1
    # unchanged staging and settings: incremental (nothing new)
    assert build_identity_graph(con, 20).mode == "incremental"
    # another max_degree
    report = build_identity_graph(con, 5)
    assert (report.mode, report.full_build_reason) == ("full", "identity_max_degree changed (20 → 5)")
    # asked for
    assert build_identity_graph(con, 5, full_refresh=True).full_build_reason == "a full refresh was asked for"
    # state written by another version of the graph
    con.execute(f"UPDATE {G.STATE_TABLE} SET graph_version = graph_version + 1")
    assert build_identity_graph(con, 5).full_build_reason == "the graph state is from another version of privdom"
    # a state table gone
    con.execute(f"DROP TABLE {G.LINKS_CACHE}")
    assert build_identity_graph(con, 5).full_build_reason == f"{G.LINKS_CACHE} is missing"
    assert build_identity_graph(con, 5).mode == "incremental"
    # an output table written by something else (an older privdom, a restore)
    con.execute(f"UPDATE {G.RECORDS_TABLE} SET component_id = 1 WHERE record_id = 'a1'")
    assert build_identity_graph(con, 5).full_build_reason == (
        f"{G.RECORDS_TABLE} was changed by something else than the identity graph")
    # staged rows without a file_id: no watermark covers them, so every build is a full one while they exist
    con.execute("INSERT INTO staging.stg_channel_events (event_id, openid, file_id) VALUES ('x', 'oX', NULL)")
    for _ in range(2):
        report = build_identity_graph(con, 5)
        assert report.full_build_reason == "staging.stg_channel_events has rows without a file_id"
        assert con.execute(f"SELECT count(*) FROM {G.RECORDS_TABLE} WHERE record_id = 'x'").fetchone()[0] == 1
    con.execute("DELETE FROM staging.stg_channel_events WHERE file_id IS NULL")
    assert build_identity_graph(con, 5).mode == "full"  # the checksum of the rows taken in changed
    assert build_identity_graph(con, 5).mode == "incremental"


def test_a_state_that_does_not_fit_the_new_rows_is_rebuilt_in_full(dbs):
    inc, full = dbs
    h = _two_deliveries(inc)
    # corrupt the stored graph: oA's node no longer in the component of m1 it is linked to
    inc.execute(f"UPDATE {G.NODES_CACHE} SET component_id = node_id WHERE node_value = 'm1'")
    report = build_identity_graph(inc, 20)
    assert report.mode == "full"
    assert report.full_build_reason.startswith("the incremental update did not fit the stored graph")
    h.stage(full)
    build_identity_graph(full, 20, full_refresh=True)
    assert tables(inc) == tables(full)


def test_an_id_collision_stops_the_build_and_writes_nothing(dbs, monkeypatch):
    con, _ = dbs
    _two_deliveries(con)
    before = tables(con)
    # every node of the same value length gets the same id
    monkeypatch.setattr(G, "node_id_sql", lambda t, v: f"CAST(length({v}) AS BIGINT)")
    with pytest.raises(IdCollision, match="share a 63-bit id"):
        build_identity_graph(con, 20)
    assert tables(con) == before
    with pytest.raises(IdCollision, match="share a 63-bit id"):
        build_identity_graph(con, 20, full_refresh=True)
    assert tables(con) == before


# ------------------------------------------------------------------------------------------------ keys
# The customer keys (orchestration/identity/keys.py) read the graph's change log: after an incremental build of
# the graph they give their keys again only to the components it wrote again. The oracle is the same registry
# kept by giving every component its key again after every delivery.
KEY_TABLES = ("intermediate.int_customer_keys", "identity_state.customer_keys", "identity_state.identifier_keys",
              "identity_state.customer_key_merges", "identity_state.customer_key_splits")


def _first_touch(con) -> None:
    """A stand-in for int_components__first_touch: a component is acquired on the day of its earliest record
    (the day is in every record id of these histories: e3-1, o3-0, r3-0, e3-known-0), ties in component order."""
    con.execute(
        """
        CREATE OR REPLACE TABLE main.first_touch AS
        SELECT component_id,
               min(TIMESTAMPTZ '2024-01-01 10:00:00+08' + to_days(CAST(regexp_extract(record_id, '^[eor]([0-9]+)-', 1) AS INTEGER)))
                   AS acquired_at
        FROM intermediate.int_identity__records GROUP BY component_id
        """
    )


def _key_history(inc, full, seed: int) -> tuple[int, int]:
    """Seven random deliveries; after each, the keys of `inc` follow the change log and those of `full` are
    given again to every component: the same tables every time. Returns (merges, splits) of the history."""
    import datetime as dt

    from orchestration.identity.keys import assign_customer_keys

    rng = random.Random(100 + seed)
    h = History()
    modes, merges, splits = [], 0, 0
    for day in range(1, 8):
        h.deliver(**random_delivery(rng, h, day, pool=10 + 2 * day))
        now = dt.datetime(2024, 2, day, tzinfo=dt.timezone.utc)
        for con, full_refresh in ((inc, False), (full, True)):
            h.stage(con)
            build_identity_graph(con, 2, full_refresh=full_refresh)
            _first_touch(con)
            report = assign_customer_keys(con, "main.first_touch", run_id=f"run{day}", now=now, full_refresh=full_refresh)
            if con is inc:
                modes.append(report.mode)
                merges += report.merges
                splits += report.splits
        assert tables(inc, KEY_TABLES) == tables(full, KEY_TABLES), f"seed {seed}, day {day}"
    assert modes == ["full"] + ["incremental"] * 6
    return merges, splits


@pytest.mark.parametrize("seed", range(8))
def test_incremental_keys_equal_keys_given_again_to_every_component(dbs, seed):
    _key_history(*dbs, seed)


def test_the_key_histories_merge_and_split(tmp_path):
    """The random histories above do what they are for: customers merge and split as deliveries come in."""
    merges = splits = 0
    for seed in range(8):
        cons = [duckdb.connect(str(tmp_path / f"{seed}-{name}.duckdb")) for name in ("inc", "full")]
        try:
            for c in cons:
                c.execute("SET TimeZone = 'Asia/Shanghai'")
            m, s = _key_history(*cons, seed)
        finally:
            for c in cons:
                c.close()
        merges, splits = merges + m, splits + s
    assert merges > 0 and splits > 0


def test_the_keys_take_in_only_what_the_graph_wrote_again(dbs):
    from orchestration.identity.keys import assign_customer_keys

    inc, _ = dbs
    h = History()
    h.deliver(events=[{"event_id": "e1-a", "openid": "oA"}, {"event_id": "e1-b", "openid": "oB"},
                      {"event_id": "e1-c", "openid": "oC"}])
    h.stage(inc)
    build_identity_graph(inc, 20)
    _first_touch(inc)
    first = assign_customer_keys(inc, "main.first_touch", run_id="r1")
    assert (first.mode, first.customers, first.new_keys) == ("full", 3, 3)
    assert first.full_reason == "no identity graph change log or no customer keys yet"
    again = assign_customer_keys(inc, "main.first_touch", run_id="r1b")  # nothing new since
    assert (again.mode, again.components_recomputed, again.new_keys, again.customers) == ("incremental", 0, 0, 3)
    # B gets a member id, D is new: two components written again, A and C keep their keys untouched
    h.deliver(events=[{"event_id": "e2-b", "openid": "oB", "member_id": "mB"}, {"event_id": "e2-d", "openid": "oD"}])
    h.stage(inc)
    assert build_identity_graph(inc, 20).mode == "incremental"
    _first_touch(inc)
    second = assign_customer_keys(inc, "main.first_touch", run_id="r2")
    assert (second.mode, second.components_recomputed, second.new_keys, second.customers) == ("incremental", 2, 1, 4)
    # a full build of the graph makes the next keys a full pass
    build_identity_graph(inc, 20, full_refresh=True)
    third = assign_customer_keys(inc, "main.first_touch", run_id="r3")
    assert third.mode == "full" and third.components_recomputed == 4 and third.new_keys == 0
    assert assign_customer_keys(inc, "main.first_touch", run_id="r4", full_refresh=True).full_reason == "a full refresh was asked for"


def test_the_change_log_keeps_only_what_a_reader_has_not_taken_in(dbs):
    con, _ = dbs
    h = History()
    h.deliver(events=[{"event_id": "e1-a", "openid": "oA"}])
    h.stage(con)

    def builds():
        return con.execute(f"SELECT build_seq, mode FROM {G.BUILDS_TABLE} ORDER BY 1").fetchall()

    def consume(reader):
        for statement in G.mark_consumed_sql(reader):
            con.execute(statement)

    def full(reader):
        return con.execute(f"SELECT {G.STATE_SCHEMA}.full_recompute(?)", [reader]).fetchone()[0]

    build_identity_graph(con, 20)
    assert builds() == [(1, "full")] and full("a")  # nobody has taken anything in
    consume("a")
    consume("b")
    assert not full("a")
    h.deliver(events=[{"event_id": "e2-b", "openid": "oB"}])
    h.stage(con)
    build_identity_graph(con, 20)
    # build 1 is dropped (both readers took it in); build 2's changes wait for them
    assert builds() == [(2, "incremental")]
    changed = con.execute(f"SELECT component_id FROM {G.STATE_SCHEMA}.changed_components('a')").fetchall()
    assert changed == [(md5_id("openid", "oB"),)]
    consume("a")
    # b, which took in build 1, stops reading: the log keeps build 2's changes for it until it is more than
    # CONSUMER_LAG_LIMIT builds behind, then forgets it (it will compute everything when it runs again)
    for _ in range(G.CONSUMER_LAG_LIMIT - 1):  # builds 3 .. 31
        build_identity_graph(con, 20)
        consume("a")
    assert con.execute(f"SELECT min(build_seq) FROM {G.CHANGES_TABLE}").fetchone()[0] == 2
    assert not full("b")
    build_identity_graph(con, 20)  # build 32
    assert con.execute(f"SELECT consumer FROM {G.CONSUMERS_TABLE}").fetchall() == [("a",)]
    assert builds() == [(G.CONSUMER_LAG_LIMIT + 2, "incremental")]
    assert con.execute(f"SELECT count(*) FROM {G.CHANGES_TABLE}").fetchone()[0] == 0  # nothing new in these builds
    assert full("b") and not full("a")
    # a full build: every reader computes everything
    build_identity_graph(con, 20, full_refresh=True)
    assert full("a")


def test_an_identical_redelivery_that_reranks_a_tie_is_taken_in(dbs):
    """SPEC §2: of two versions with the same updated_at the later delivered is the current one, and an identical
    re-delivery of the older one makes it the later delivered (staging keeps it once, at its first file_id, with
    last_file_id the re-delivery's). O1's versions name only shared phones, so its record's component is its
    current version's phone: the re-delivery, which brings no new staged row, must still make the incremental
    build write O1's record again (and its memberships' ranks), as a full build would."""
    p1, p2 = "13800000001", "13800000002"
    shared = [{"event_id": f"e{i}", "openid": f"o{i}", "phone": phone}
              for i, phone in enumerate((p1, p1, p2, p2))]  # each phone on two openids: shared at max_degree 1
    a = {"order_id": "O1", "updated_at": "2024-01-09 00:00:00", "status": "paid", "phone": p1}
    b = {"order_id": "O1", "updated_at": "2024-01-09 00:00:00", "status": "refunded", "phone": p2}
    seen = []
    h = deliver_each_and_compare(dbs, [{"events": shared, "orders": [a]}, {"orders": [b]}, {"orders": [a]}],
                                 max_degree=1, after=lambda inc: seen.append(records(inc)["orders:O1:buyer"]))
    assert [r["version_rank"] for r in h._ranked(h.orders, "order_id") if r["status"] == "paid"] == [1]
    phone = {md5_id("phone", p): p for p in (p1, p2)}
    assert [phone[c] for c in seen] == [p1, p2, p1]
    assert build_identity_graph(dbs[0], 1).mode == "incremental"


def test_unloading_the_redelivery_that_reranked_a_tie_is_taken_in(dbs):
    """`privdom unload` of the file that delivered a tied version again (paid, refunded, paid again: paid) takes
    that re-delivery out of raw: the refunded version is the current one again (SPEC §2), and O1's record, whose
    phones are all shared, belongs to the refunded version's phone, as a full build says. Staging kept the
    re-delivery only as last_file_id, which falls back below the graph's watermark: no staged row the graph
    took in changed (its checksum reads file_id), and no last_file_id is newer than the watermark: unload tells
    the graph to build in full."""
    p1, p2 = "13800000001", "13800000002"
    shared = [{"event_id": f"e{i}", "openid": f"o{i}", "phone": phone}
              for i, phone in enumerate((p1, p1, p2, p2))]  # each phone on two openids: shared at max_degree 1
    a = {"order_id": "O1", "updated_at": "2024-01-09 00:00:00", "status": "paid", "phone": p1}
    b = {"order_id": "O1", "updated_at": "2024-01-09 00:00:00", "status": "refunded", "phone": p2}
    h = deliver_each_and_compare(dbs, [{"events": shared, "orders": [a]}, {"orders": [b]}, {"orders": [a]}],
                                 max_degree=1)
    inc, full = dbs
    h.orders = [r for r in h.orders if r["file_id"] != 3]  # privdom unload of the third file
    h.stage(inc)
    h.stage(full)
    G.invalidate_after_unload(inc)  # what privdom unload does to the graph's state (tests/test_unload.py)
    assert build_identity_graph(inc, 1).mode == "full"
    build_identity_graph(full, 1, full_refresh=True)
    phone = {md5_id("phone", p): p for p in (p1, p2)}
    assert phone[records(full)["orders:O1:buyer"]] == p2
    assert phone[records(inc)["orders:O1:buyer"]] == p2
    assert tables(inc) == tables(full)


def test_a_graph_build_before_staging_is_rebuilt_after_an_unload_keeps_the_next_build_full(dbs):
    """After `privdom unload`, the graph asset materialized alone (the UI's Materialize on it, or a run whose
    dbt_staging step failed to rebuild) builds in full on the staging that still holds the unloaded file, and
    must not take the unload marker with it: the build after staging is rebuilt without the file is full."""
    p1, p2 = "13800000001", "13800000002"
    shared = [{"event_id": f"e{i}", "openid": f"o{i}", "phone": phone}
              for i, phone in enumerate((p1, p1, p2, p2))]
    a = {"order_id": "O1", "updated_at": "2024-01-09 00:00:00", "status": "paid", "phone": p1}
    b = {"order_id": "O1", "updated_at": "2024-01-09 00:00:00", "status": "refunded", "phone": p2}
    h = deliver_each_and_compare(dbs, [{"events": shared, "orders": [a]}, {"orders": [b]}, {"orders": [a]}],
                                 max_degree=1)
    inc, full = dbs
    G.invalidate_after_unload(inc)  # privdom unload of the third file
    assert build_identity_graph(inc, 1, staging_stale=True).mode == "full"  # on staging not yet rebuilt
    h.orders = [r for r in h.orders if r["file_id"] != 3]
    h.stage(inc)
    h.stage(full)
    assert build_identity_graph(inc, 1).mode == "full"
    build_identity_graph(full, 1, full_refresh=True)
    assert tables(inc) == tables(full)
