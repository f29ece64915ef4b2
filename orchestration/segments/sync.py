"""Diff-based syncs of a segment to a destination, with per-row outcomes in the warehouse (SPEC §5).

State: `segments.sync_state` holds, per destination × segment, the customers the destination has accepted
(with the contact fields used, so a later remove can name them even after they left dim_customers, and the
target: the WeCom tag id they are held at), and `segments.sync_pending` the customers whose add was sent and
not accepted: a timeout or a server error the retries gave up on, a refusal, a crash between sending and
recording. The destination may hold them, so they count as held when removes are planned, until an add or a
remove of them is accepted. A sync sends only the difference between the segment's current members and that
state, removes first:
- removes, mirror mode: held rows no longer members; additive mode: only held rows whose customer opted out,
  became unreachable or is no longer in dim_customers (never contact them again); both modes: members held at
  an old target, and (WeCom) members now reached on another contact or through another staff member;
- adds, planned once the removes are settled: members not in the state (this includes rows that failed last
  time: they never entered it) and members whose contact changed (an upsert).
- WeCom tags belong to the contact (`wecom_external_userid`), not to the customer key: a held row of a key
  merged away whose contact a kept customer now holds passes to that customer without a remove_tag, which
  would untag them.
Each row's outcome goes to `segments.sync_log`; the state changes only for rows the destination accepted,
committed batch by batch with the log. A crash mid-sync leaves the batch it was sending pending; the next sync
re-sends what is still due, under a new idempotency key (adds and removes are idempotent by effect).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from orchestration.segments.destinations import DestinationConfig, DestinationUnavailable, RowOutcome
from orchestration.segments.membership import DIM_CUSTOMERS, MEMBERS_TABLE, REMOVE_REASON_SQL, remove_reason_joins
from orchestration.warehouse import transaction

STATE_TABLE = "segments.sync_state"
PENDING_TABLE = "segments.sync_pending"
SKIPPED_TABLE = "segments.sync_skipped"
LOG_TABLE = "segments.sync_log"
RUNS_TABLE = "segments.sync_runs"
CONTACT_FIELDS = ("customer_key", "contact_channel", "contact_handle", "phone_sha256", "wecom_external_userid", "wecom_staff_userid")


@dataclass
class SyncReport:
    sync_run_id: str
    destination: str
    segment: str
    mode: str
    to_add: int = 0
    to_remove: int = 0
    accepted: int = 0
    failed: int = 0
    skipped: int = 0
    requests: int = 0
    error: str | None = None
    failures: list[str] = field(default_factory=list)  # a few examples

    def to_metadata(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "failures"} | {"example_failures": self.failures[:5]}



# A member WeCom can tag: a live contact (the contact handle is its WeCom id) with its owning staff member. A former
# contact's id, or one only seen on an event, is not one: mark_tag would tag a contact the customer removed. The
# handle is compared too, so that no row labelled `wecom` by an older membership (an openid seen on a WeCom event)
# is ever tagged through the stale id beside it.
TAGGABLE = ("a.contact_channel = 'wecom' and coalesce(a.wecom_external_userid, '') <> '' "
            "and a.contact_handle = a.wecom_external_userid and coalesce(a.wecom_staff_userid, '') <> ''")
NOT_TAGGABLE = ("no WeCom contact: needs a live WeCom contact (wecom_external_userid) and its owner "
                "(wecom_staff_userid)")


def ensure_sync_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists segments")
    for table, at in ((STATE_TABLE, "synced_at"), (PENDING_TABLE, "sent_at")):  # the same rows: accepted, or sent
        con.execute(
            f"""create table if not exists {table} (
                destination varchar not null, segment varchar not null, customer_key varchar not null,
                contact_channel varchar, contact_handle varchar, phone_sha256 varchar,
                wecom_external_userid varchar, wecom_staff_userid varchar,
                segment_version integer, {at} timestamptz, sync_run_id varchar, target varchar,
                primary key (destination, segment, customer_key))"""
        )
    # warehouses synced before targets were recorded: their rows are held at the target configured then (NULL)
    con.execute(f"alter table {STATE_TABLE} add column if not exists target varchar")
    # when a remove of the held row was sent and not (yet) accepted: the destination may no longer hold it
    con.execute(f"alter table {STATE_TABLE} add column if not exists remove_sent_at timestamptz")
    # members due an add that the destination cannot take (WeCom: no live contact), logged `skipped` once: when they
    # become due and cannot be sent, not again by every sync while that lasts
    con.execute(
        f"""create table if not exists {SKIPPED_TABLE} (
            destination varchar not null, segment varchar not null, customer_key varchar not null,
            reason varchar, skipped_since timestamptz, sync_run_id varchar,
            primary key (destination, segment, customer_key))"""
    )
    con.execute(
        f"""create table if not exists {LOG_TABLE} (
            sync_run_id varchar not null, logged_at timestamptz not null, destination varchar not null,
            segment varchar not null, customer_key varchar not null, operation varchar not null,
            status varchar not null, error varchar, attempts integer, batch_key varchar)"""
    )
    con.execute(
        f"""create table if not exists {RUNS_TABLE} (
            sync_run_id varchar not null, destination varchar not null, segment varchar not null, mode varchar,
            started_at timestamptz, finished_at timestamptz, to_add bigint, to_remove bigint,
            accepted bigint, failed bigint, skipped bigint, requests bigint, error varchar)"""
    )


def _rows(con: duckdb.DuckDBPyConnection, query: str, params: list) -> list[dict]:
    cur = con.execute(query, params)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r)) for r in cur.fetchall()]


def target(config: DestinationConfig, segment: str) -> str | None:
    """What a held row is held at, besides the destination: the segment's WeCom tag id (a changed tag id moves the
    members from the old tag to the new one); None for a webhook (a new url is the same receiver moved)."""
    return config.tags.get(segment) if config.type == "wecom" else None


def _desired(segment: str) -> tuple[str, list]:
    # Members re-checked against dim_customers: suppression holds here too, whatever the members table says.
    cols = ", ".join(f"m.{c}" for c in CONTACT_FIELDS)
    return (f"select {cols} from {MEMBERS_TABLE} m join {DIM_CUSTOMERS} d using (customer_key) "
            "where m.segment = ? and d.is_reachable and not d.opted_out", [segment])


def plan_adds(con: duckdb.DuckDBPyConnection, config: DestinationConfig, segment: str) -> list[dict]:
    """Members to send as adds, sorted by customer_key: those the destination does not hold, those it may no
    longer hold (a remove was sent and never confirmed: an add is idempotent, a missing member is not), and
    (webhook) those whose contact changed since it accepted them (an add is an upsert: the receiver gets the
    current handle). A member held at an old target, or (WeCom) on an old contact or through an old staff
    member, is added once the remove from there was accepted (removes go first). WeCom: only members it can
    tag; the others are `_record_skipped`."""
    query, params = _adds(config, segment, sendable=True)
    return _rows(con, query, params)


def _adds(config: DestinationConfig, segment: str, *, sendable: bool) -> tuple[str, list]:
    """The query of the adds due (see plan_adds): those the destination can take (`sendable`), or the others."""
    desired, params = _desired(segment)
    now = target(config, segment)
    if config.type == "wecom":  # a new contact or staff member: untagged there first (plan_removes), then not held
        changed = "false"
        # a remove not confirmed: tagged again where it is held, never past an untagging still due elsewhere
        same_place = ("s.wecom_external_userid is not distinct from a.wecom_external_userid "
                      "and s.wecom_staff_userid is not distinct from a.wecom_staff_userid "
                      "and coalesce(s.target, ?) is not distinct from ?")
        same_params = [now, now]
        can_take = TAGGABLE
    else:
        changed = ("s.contact_channel is distinct from a.contact_channel or s.contact_handle is distinct from a.contact_handle "
                   "or s.phone_sha256 is distinct from a.phone_sha256")
        same_place, same_params = "true", []
        can_take = "true"
    return (
        f"select a.* from ({desired}) a left join (select * from {STATE_TABLE} where destination = ? and segment = ?) s "
        f"using (customer_key) where (s.customer_key is null or {changed} "
        f"or (s.remove_sent_at is not null and {same_place})) and {'' if sendable else 'not '}coalesce(({can_take}), false) "
        "order by a.customer_key",
        [*params, config.name, segment, *same_params],
    )


def _record_skipped(con: duckdb.DuckDBPyConnection, config: DestinationConfig, segment: str, run_id: str) -> int:
    """Adds due that the destination cannot take (WeCom: members who are not live contacts): how many. Each is
    logged `skipped` when it becomes one (it was not one at the last sync), not by every sync while it lasts:
    at 1M customers that was hundreds of thousands of log rows a day per tagged segment. `sync_skipped` holds
    the current ones, in the same transaction as their log rows."""
    if config.type != "wecom":
        return 0
    query, params = _adds(config, segment, sendable=False)
    where = "destination = ? and segment = ?"
    with transaction(con):  # (a failure rolls back the temp table too; `or replace` takes over any other leftover)
        con.execute(f"create or replace temp table skipped_now as select customer_key from ({query})", params)
        con.execute(
            f"insert into {LOG_TABLE} select ?, ?, ?, ?, customer_key, 'add', 'skipped', ?, 0, null from skipped_now "
            f"where customer_key not in (select customer_key from {SKIPPED_TABLE} where {where} and reason = ?)",
            [run_id, dt.datetime.now(dt.UTC), config.name, segment, NOT_TAGGABLE, config.name, segment, NOT_TAGGABLE],
        )
        con.execute(  # no longer skipped (tagged, left the segment, reason changed): logged again if it comes back
            f"delete from {SKIPPED_TABLE} where {where} and (reason is distinct from ? "
            f"or customer_key not in (select customer_key from skipped_now))",
            [config.name, segment, NOT_TAGGABLE],
        )
        con.execute(
            f"insert or ignore into {SKIPPED_TABLE} select ?, ?, customer_key, ?, ?, ? from skipped_now",
            [config.name, segment, NOT_TAGGABLE, dt.datetime.now(dt.UTC), run_id],
        )
        (n,) = con.execute("select count(*) from skipped_now").fetchone()
        con.execute("drop table skipped_now")
    return int(n)


def _held() -> str:
    """SQL of the rows a destination holds of a segment: accepted (sync_state) and sent, not confirmed
    (sync_pending), with where they are held; parameters: destination, segment, three times. (remove_sent_at:
    _transfer passes it on with the row.)"""
    scols = ", ".join(f"s.{c}" for c in (*CONTACT_FIELDS, "target"))
    pcols = ", ".join(f"p.{c}" for c in (*CONTACT_FIELDS, "target"))
    state = f"(select * from {STATE_TABLE} where destination = ? and segment = ?)"
    return (
        f"select {scols}, 'state' as held_as, s.remove_sent_at from {state} s union all "
        f"select {pcols}, 'pending' as held_as, cast(null as timestamptz) from {PENDING_TABLE} p where p.destination = ? and p.segment = ? "
        f"and p.customer_key not in (select customer_key from {state})"
    )


def plan_removes(con: duckdb.DuckDBPyConnection, config: DestinationConfig, segment: str) -> list[dict]:
    """Held rows (accepted, or pending: sent and not confirmed since) to remove, sorted by customer_key: those no
    longer members (mirror) or never to be contacted again (additive), members held at another target than the
    current one (they are added at the new one after), and (WeCom) members now reached on another contact or
    through another staff member. In additive mode a customer kept from earlier who is no longer a member stays
    at the target it is held at, and is removed from there if they opt out or become unreachable. Each row
    carries its `target`."""
    desired, params = _desired(segment)
    if config.mode == "mirror":
        keep, keep_params = f"select customer_key from ({desired})", params
    else:  # additive: remove only those who must never be contacted again
        keep, keep_params = f"select customer_key from {DIM_CUSTOMERS} where is_reachable and not opted_out", []
    now = target(config, segment)
    held = _held()
    # WeCom: a member now reached on another contact (or none), or through another staff member, leaves the tag
    # there first: mark_tag tags the relationship of one staff member with one contact
    moved, moved_params = "false", []
    if config.type == "wecom":
        moved = (f"h.customer_key in (select d.customer_key from ({desired}) d where d.wecom_external_userid is distinct from "
                 "h.wecom_external_userid or d.wecom_staff_userid is distinct from h.wecom_staff_userid)")
        moved_params = params
    # each with why it leaves (membership.REMOVE_REASON_SQL; `left_segment` for a member moved to another tag or
    # contact): a webhook receiver that keeps its own lists must stop contacting an opted-out customer everywhere
    rows = _rows(
        con,
        f"select r.*, {REMOVE_REASON_SQL} as reason from ("
        f"select h.* replace (coalesce(h.target, ?) as target) from ({held}) h "  # rows from before targets: the current one
        f"where h.customer_key not in ({keep}) "
        f"or (coalesce(h.target, ?) is distinct from ? and h.customer_key in (select customer_key from ({desired}))) "
        f"or {moved}) r {remove_reason_joins(con, 'r.customer_key')} order by r.customer_key",
        [now, config.name, segment, config.name, segment, config.name, segment, *keep_params, now, now, *params, *moved_params],
    )
    return rows


def plan_suppression_removes(con: duckdb.DuckDBPyConnection, config: DestinationConfig, segment: str) -> list[dict]:
    """Held rows of a segment the destination no longer syncs (renamed, deleted, switched off, or taken out of
    its `segments`), or of any segment while exports wait, whose customer opted out, is unreachable or is no
    longer a customer (erased), or merged into one who opted out or is unreachable: SPEC §5 removes them always
    (the marketer review found them held for good; the diff review, an erased customer). The others stay: a
    segment taken out of a destination's list is not a request to clear it there. Rows held at no known target
    (a WeCom row from before targets, its tag no longer configured) cannot be untagged and are left out."""
    held = _held()
    now = target(config, segment)
    return _rows(
        con,
        f"select * from (select h.* replace (coalesce(h.target, ?) as target), {REMOVE_REASON_SQL} as reason from ({held}) h "
        f"{remove_reason_joins(con, 'h.customer_key')}) "
        f"where reason in ('opted_out', 'unreachable', 'no_longer_a_customer') and (target is not null or ? = 'webhook') "
        "order by customer_key",
        [now, config.name, segment, config.name, segment, config.name, segment, config.type],
    )


def sync_suppression_removes(con: duckdb.DuckDBPyConnection, config: DestinationConfig, client, segments, run_id: str,
                             versions: dict[str, int] | None = None) -> list[SyncReport]:
    """sync_segment(no_longer_synced=True) for each of `segments`: only the removes of plan_suppression_removes.
    A segment's version is `versions`' (the definition's), else the one of the rows held (held_version)."""
    return [sync_segment(con, config, client, segment, (versions or {}).get(segment) or held_version(con, config.name, segment),
                         sync_run_id=f"{run_id}:{config.name}:{segment}", no_longer_synced=True) for segment in segments]


def held_version(con: duckdb.DuckDBPyConnection, destination: str, segment: str) -> int:
    """The definition version of the rows a destination holds of a segment (the newest), 0 when unknown."""
    ensure_sync_tables(con)
    row = con.execute(
        f"select max(segment_version) from (select segment_version from {STATE_TABLE} where destination = ? "
        f"and segment = ? union all select segment_version from {PENDING_TABLE} where destination = ? and segment = ?)",
        [destination, segment, destination, segment]).fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def unsynced_segments(con: duckdb.DuckDBPyConnection, config: DestinationConfig) -> list[tuple[str, int]]:
    """(segment, customers held) of segments the destination holds customers of but no longer syncs."""
    ensure_sync_tables(con)
    return [(seg, int(n)) for seg, n in con.execute(
        f"select segment, count(distinct customer_key) from (select segment, customer_key from {STATE_TABLE} where destination = ? "
        f"union all select segment, customer_key from {PENDING_TABLE} where destination = ?) "
        f"where segment not in (select unnest(?::varchar[])) group by segment order by segment",
        [config.name, config.name, list(config.segments)],
    ).fetchall()]


def _kept_contacts(con: duckdb.DuckDBPyConnection, config: DestinationConfig, segment: str) -> dict[str, str]:
    """WeCom contact (external_userid) → customer_key of the customers the destination keeps: the segment's
    current members (mirror), or every reachable customer who has not opted out (additive)."""
    kept, params = _desired(segment) if config.mode == "mirror" else (
        f"select * from {DIM_CUSTOMERS} where is_reachable and not opted_out", [])
    return dict(con.execute(
        f"select wecom_external_userid, min(customer_key) from ({kept}) where wecom_external_userid is not null group by 1",
        params).fetchall())


def _transfer(con, config: DestinationConfig, segment: str, version: int, run_id: str, moves: list[tuple[dict, str]]) -> None:
    """Held rows of keys merged away whose contact a kept customer now holds: the contact stays tagged, so the
    row passes to that customer (unless it is held already) with the contact fields it was tagged with, in the
    table it was in (accepted: sync_state; sent, not confirmed: sync_pending), and the old key leaves both.
    Logged as `skipped` remove, in one transaction."""
    now = dt.datetime.now(dt.UTC)
    log = pa.table({
        "customer_key": pa.array([r["customer_key"] for r, _ in moves], pa.string()),
        "error": pa.array([f"merged into {k}, who holds contact {r['wecom_external_userid']}: the tag stays" for r, k in moves], pa.string()),
    })
    first: dict[str, tuple[dict, str]] = {}
    for r, k in sorted(moves, key=lambda m: (m[0]["held_as"] != "state", m[0]["customer_key"])):  # accepted first
        first.setdefault(k, (r, k))
    passed = list(first.values())
    moved = pa.table({
        **{c: pa.array([k if c == "customer_key" else r.get(c) for r, k in passed], pa.string()) for c in CONTACT_FIELDS},
        "target": pa.array([r.get("target") for r, _ in passed], pa.string()),
        "held_as": pa.array([r["held_as"] for r, _ in passed], pa.string()),
        # a remove of the old key's row sent and not confirmed: the contact may be untagged (plan_adds)
        "remove_sent_at": pa.array([r.get("remove_sent_at") for r, _ in passed], pa.timestamp("us", tz="UTC")),
    })
    old_keys = pa.table({"old_key": pa.array([r["customer_key"] for r, _ in moves], pa.string())})
    cols = ", ".join(CONTACT_FIELDS)
    try:
        with transaction(con):
            con.register("moved_log", log)
            con.register("moved_rows", moved)
            con.register("moved_keys", old_keys)
            con.execute(
                f"insert into {LOG_TABLE} select ?, ?, ?, ?, customer_key, 'remove', 'skipped', error, 0, null from moved_log",
                [run_id, now, config.name, segment],
            )
            con.execute(
                f"insert or ignore into {STATE_TABLE} (destination, segment, {cols}, segment_version, synced_at, sync_run_id, target, "
                f"remove_sent_at) select ?, ?, {cols}, ?, ?, ?, target, remove_sent_at from moved_rows where held_as = 'state'",
                [config.name, segment, version, now, run_id],
            )
            con.execute(
                f"insert or ignore into {PENDING_TABLE} (destination, segment, {cols}, segment_version, sent_at, sync_run_id, target) "
                f"select ?, ?, {cols}, ?, ?, ?, target from moved_rows where held_as = 'pending' "
                f"and customer_key not in (select customer_key from {STATE_TABLE} where destination = ? and segment = ?)",
                [config.name, segment, version, now, run_id, config.name, segment],
            )
            for table in (STATE_TABLE, PENDING_TABLE):
                con.execute(
                    f"delete from {table} where destination = ? and segment = ? and customer_key in (select old_key from moved_keys)",
                    [config.name, segment],
                )
    finally:
        con.unregister("moved_log")
        con.unregister("moved_rows")
        con.unregister("moved_keys")


def _absent_keys(con: duckdb.DuckDBPyConnection, keys: list[str]) -> set[str]:
    """The keys that are not in dim_customers (merged into another customer, or gone)."""
    if not keys:
        return set()
    present = {k for (k,) in con.execute(
        f"select customer_key from {DIM_CUSTOMERS} where customer_key in (select unnest(?::varchar[]))", [keys]).fetchall()}
    return set(keys) - present


def _mark_pending(con, config: DestinationConfig, segment: str, version: int, run_id: str, rows: list[dict]) -> None:
    """Before an add batch is sent: its rows may be held by the destination from now on (committed at once)."""
    table = pa.table({c: pa.array([r.get(c) for r in rows], pa.string()) for c in CONTACT_FIELDS})
    cols = ", ".join(CONTACT_FIELDS)
    try:
        with transaction(con):
            con.register("batch_pending", table)
            con.execute(
                f"insert or replace into {PENDING_TABLE} (destination, segment, {cols}, segment_version, sent_at, sync_run_id, target) "
                f"select ?, ?, {cols}, ?, ?, ?, ? from batch_pending",
                [config.name, segment, version, dt.datetime.now(dt.UTC), run_id, target(config, segment)],
            )
    finally:
        con.unregister("batch_pending")


def _mark_removing(con, config: DestinationConfig, segment: str, rows: list[dict]) -> None:
    """Before a remove batch is sent: its held rows may be gone from the destination from now on (committed at
    once). An accepted remove deletes the row; one never confirmed (an answer lost, a crash before it was
    recorded) leaves it marked, so a customer who comes back is sent again (plan_adds)."""
    con.execute(  # one statement: committed at once
        f"update {STATE_TABLE} set remove_sent_at = ? where destination = ? and segment = ? "
        f"and customer_key in (select unnest(?::varchar[]))",
        [dt.datetime.now(dt.UTC), config.name, segment, [r["customer_key"] for r in rows]],
    )


def _payload(config: DestinationConfig, row: dict) -> dict:
    if config.type == "webhook":  # a remove says why (`reason`), as the export's removes file does
        return {k: row[k] for k in ("customer_key", "contact_channel", "contact_handle", "phone_sha256", "reason") if k in row}
    return row  # WeCom: a remove carries the tag it is held at (`target`)


def _record(con, config: DestinationConfig, segment: str, version: int, run_id: str, operation: str,
            rows: list[dict], outcomes: list[RowOutcome]) -> None:
    """One transaction: the batch's log rows, and the state change for its accepted rows; an accepted add or remove
    also leaves the pending rows."""
    now = dt.datetime.now(dt.UTC)
    by_key = {r["customer_key"]: r for r in rows}
    log = [(o.customer_key, "accepted" if o.accepted else "failed", o.error, o.attempts, o.batch_key) for o in outcomes]
    table = pa.table(
        {
            "customer_key": pa.array([entry[0] for entry in log], pa.string()),
            "status": pa.array([entry[1] for entry in log], pa.string()),
            "error": pa.array([entry[2] for entry in log], pa.string()),
            "attempts": pa.array([entry[3] for entry in log], pa.int32()),
            "batch_key": pa.array([entry[4] for entry in log], pa.string()),
        }
    )
    accepted = [by_key[o.customer_key] for o in outcomes if o.accepted]
    state_rows = pa.table({c: pa.array([r.get(c) for r in accepted], pa.string()) for c in CONTACT_FIELDS})
    try:
        with transaction(con):
            con.register("batch_log", table)
            con.execute(
                f"insert into {LOG_TABLE} select ?, ?, ?, ?, customer_key, ?, status, error, attempts, batch_key from batch_log",
                [run_id, now, config.name, segment, operation],
            )
            con.register("batch_state", state_rows)
            if operation == "add":
                cols = ", ".join(CONTACT_FIELDS)
                con.execute(
                    # (a replace updates the columns named: remove_sent_at is named to clear it)
                    f"insert or replace into {STATE_TABLE} (destination, segment, {cols}, segment_version, synced_at, sync_run_id, target, "
                    f"remove_sent_at) select ?, ?, {cols}, ?, ?, ?, ?, NULL from batch_state",
                    [config.name, segment, version, now, run_id, target(config, segment)],
                )
            else:
                con.execute(
                    f"delete from {STATE_TABLE} where destination = ? and segment = ? and customer_key in (select customer_key from batch_state)",
                    [config.name, segment],
                )
            con.execute(
                # accepted: settled (a refused remove proves nothing: the row stays held)
                f"delete from {PENDING_TABLE} where destination = ? and segment = ? and customer_key in (select customer_key from batch_state)",
                [config.name, segment],
            )
    finally:
        con.unregister("batch_log")
        con.unregister("batch_state")


def sync_segment(con: duckdb.DuckDBPyConnection, config: DestinationConfig, client, segment: str, segment_version: int,
                 *, sync_run_id: str | None = None, no_longer_synced: bool = False) -> SyncReport:
    """Send one segment's difference to one destination; see the module docstring. `no_longer_synced`: a segment
    the destination holds customers of but no longer syncs: only plan_suppression_removes, no adds."""
    ensure_sync_tables(con)
    run_id = sync_run_id or uuid.uuid4().hex
    started = dt.datetime.now(dt.UTC)
    report = SyncReport(run_id, config.name, segment, config.mode)
    requests_before = client.requests_sent
    for operation in ("remove",) if no_longer_synced else ("remove", "add"):  # stop contacting first; the adds are planned once the removes are settled
        if operation == "remove":
            rows = plan_suppression_removes(con, config, segment) if no_longer_synced else plan_removes(con, config, segment)
            report.to_remove = len(rows)
        else:
            rows = plan_adds(con, config, segment)
            report.to_add = len(rows)
        if operation == "add":
            # a tag needs a live contact (contact_channel 'wecom': the customer is a WeCom contact now, SPEC §4)
            # and its owner: the others are not sent (plan_adds), and logged once
            report.skipped += _record_skipped(con, config, segment, run_id)
        if config.type == "wecom" and operation == "remove" and not no_longer_synced:
            # a key merged away whose contact a kept customer inherited: the contact keeps its tag and the state
            # passes to that customer. A customer who still exists (opted out, unreachable, left) is untagged
            # whoever else shares the contact.
            kept, now = _kept_contacts(con, config, segment), target(config, segment)
            merged_away = _absent_keys(con, [r["customer_key"] for r in rows if r["wecom_external_userid"] in kept])
            moves = [(r, kept[r["wecom_external_userid"]]) for r in rows if r["customer_key"] in merged_away and r["target"] == now]
            if moves:
                _transfer(con, config, segment, segment_version, run_id, moves)
                report.skipped += len(moves)
                gone = {r["customer_key"] for r, _ in moves}
                rows = [r for r in rows if r["customer_key"] not in gone]
        for start in range(0, len(rows), config.batch_size):
            batch = rows[start : start + config.batch_size]
            done: list[RowOutcome] = []
            if report.error is None:
                if operation == "add":
                    _mark_pending(con, config, segment, segment_version, run_id, batch)
                else:
                    _mark_removing(con, config, segment, batch)
                try:
                    done = client.send(segment, segment_version, operation, [_payload(config, r) for r in batch], run_id)
                except DestinationUnavailable as exc:
                    report.error = str(exc)
                    done = list(exc.outcomes)  # rows the destination answered before it became unusable
            # nothing more is sent this sync; the rows not answered stay due
            outcomes = done + [RowOutcome(r["customer_key"], False, 0, f"not sent: {report.error}") for r in batch[len(done):]]
            _record(con, config, segment, segment_version, run_id, operation, batch, outcomes)
            gave_up = [o for o in outcomes if not o.accepted and (o.error or "").startswith("gave up")]
            refused = [o for o in outcomes if not o.accepted and (o.error or "").startswith(("HTTP 401", "HTTP 403"))]
            if report.error is None and gave_up and len(gave_up) == len(outcomes):
                report.error = f"destination unavailable, stopped sending: {gave_up[0].error}"
            elif report.error is None and refused and len(refused) == len(outcomes):
                report.error = f"destination refused the request (credentials or permissions), stopped sending: {refused[0].error}"
            for o in outcomes:
                if o.accepted:
                    report.accepted += 1
                else:
                    report.failed += 1
                    if len(report.failures) < 5:
                        report.failures.append(f"{operation} {o.customer_key}: {o.error}")
    report.requests = client.requests_sent - requests_before
    con.execute(
        f"insert into {RUNS_TABLE} values (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, config.name, segment, config.mode, started, dt.datetime.now(dt.UTC), report.to_add, report.to_remove,
         report.accepted, report.failed, report.skipped, report.requests, report.error],
    )
    return report
