"""Diff-based syncs of a segment to a destination, with per-row outcomes in the warehouse (SPEC §5).

State: `segments.sync_state` holds, per destination × segment, the customers the destination has accepted
(with the contact fields used, so a later remove can name them even after they left dim_customers). A sync
sends only the difference between the segment's current members and that state:
- adds: members not in the state (this includes rows that failed last time: they never entered it);
- removes, mirror mode: state rows no longer members; additive mode: only state rows whose customer opted
  out, became unreachable or is no longer in dim_customers (never contact them again).
Each row's outcome goes to `segments.sync_log`; the state changes only for rows the destination accepted,
committed batch by batch, so a crash mid-sync re-sends at most the unrecorded batch (idempotent by key).
"""

from __future__ import annotations

import datetime as dt
import uuid
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from orchestration.segments.destinations import DestinationConfig, DestinationUnavailable, RowOutcome
from orchestration.segments.membership import DIM_CUSTOMERS, MEMBERS_TABLE
from orchestration.warehouse import transaction

STATE_TABLE = "segments.sync_state"
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


def ensure_sync_tables(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("create schema if not exists segments")
    con.execute(
        f"""create table if not exists {STATE_TABLE} (
            destination varchar not null, segment varchar not null, customer_key varchar not null,
            contact_channel varchar, contact_handle varchar, phone_sha256 varchar,
            wecom_external_userid varchar, wecom_staff_userid varchar,
            segment_version integer, synced_at timestamptz, sync_run_id varchar,
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


def plan(con: duckdb.DuckDBPyConnection, config: DestinationConfig, segment: str) -> tuple[list[dict], list[dict]]:
    """(adds, removes) for one segment at one destination, each sorted by customer_key."""
    cols = ", ".join(f"m.{c}" for c in CONTACT_FIELDS)
    state = f"(select * from {STATE_TABLE} where destination = ? and segment = ?)"
    # Members re-checked against dim_customers: suppression holds here too, whatever the members table says.
    desired = (
        f"select {cols} from {MEMBERS_TABLE} m join {DIM_CUSTOMERS} d using (customer_key) "
        "where m.segment = ? and d.is_reachable and not d.opted_out"
    )
    adds = _rows(
        con,
        f"select * from ({desired}) a where a.customer_key not in (select customer_key from {state}) order by customer_key",
        [segment, config.name, segment],
    )
    if config.mode == "mirror":
        keep = f"select customer_key from ({desired})"
        keep_params = [segment]
    else:  # additive: remove only those who must never be contacted again
        keep = f"select customer_key from {DIM_CUSTOMERS} where is_reachable and not opted_out"
        keep_params = []
    scols = ", ".join(f"s.{c}" for c in CONTACT_FIELDS)
    removes = _rows(
        con,
        f"select {scols} from {state} s where s.customer_key not in ({keep}) order by s.customer_key",
        [config.name, segment, *keep_params],
    )
    return adds, removes


def _payload(config: DestinationConfig, row: dict) -> dict:
    if config.type == "webhook":
        return {k: row[k] for k in ("customer_key", "contact_channel", "contact_handle", "phone_sha256")}
    return row


def _record(con, config: DestinationConfig, segment: str, version: int, run_id: str, operation: str,
            rows: list[dict], outcomes: list[RowOutcome], skipped: list[tuple[dict, str]] | None = None) -> None:
    """One transaction: the batch's log rows, and the state change for its accepted rows."""
    now = dt.datetime.now(dt.UTC)
    by_key = {r["customer_key"]: r for r in rows}
    log = [(o.customer_key, "accepted" if o.accepted else "failed", o.error, o.attempts, o.batch_key) for o in outcomes]
    log += [(r["customer_key"], "skipped", reason, 0, None) for r, reason in (skipped or [])]
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
                    f"insert or replace into {STATE_TABLE} (destination, segment, {cols}, segment_version, synced_at, sync_run_id) "
                    f"select ?, ?, {cols}, ?, ?, ? from batch_state",
                    [config.name, segment, version, now, run_id],
                )
            else:
                con.execute(
                    f"delete from {STATE_TABLE} where destination = ? and segment = ? and customer_key in (select customer_key from batch_state)",
                    [config.name, segment],
                )
    finally:
        con.unregister("batch_log")
        con.unregister("batch_state")


def sync_segment(con: duckdb.DuckDBPyConnection, config: DestinationConfig, client, segment: str, segment_version: int,
                 *, sync_run_id: str | None = None) -> SyncReport:
    """Send one segment's difference to one destination; see the module docstring."""
    ensure_sync_tables(con)
    run_id = sync_run_id or uuid.uuid4().hex
    started = dt.datetime.now(dt.UTC)
    report = SyncReport(run_id, config.name, segment, config.mode)
    adds, removes = plan(con, config, segment)
    report.to_add, report.to_remove = len(adds), len(removes)
    requests_before = client.requests_sent
    for operation, rows in (("remove", removes), ("add", adds)):  # stop contacting first
        skipped: list[tuple[dict, str]] = []
        if config.type == "wecom" and operation == "add":
            skipped = [(r, "no WeCom contact: needs wecom_external_userid and wecom_staff_userid") for r in rows
                       if not (r["wecom_external_userid"] and r["wecom_staff_userid"])]
            rows = [r for r in rows if r["wecom_external_userid"] and r["wecom_staff_userid"]]
        if skipped:
            _record(con, config, segment, segment_version, run_id, operation, [], [], skipped)
            report.skipped += len(skipped)
        for start in range(0, len(rows), config.batch_size):
            batch = rows[start : start + config.batch_size]
            if report.error is None:
                try:
                    outcomes = client.send(segment, segment_version, operation, [_payload(config, r) for r in batch], run_id)
                except DestinationUnavailable as exc:
                    report.error = str(exc)
            if report.error is not None:  # nothing more is sent this sync; the rows stay due
                outcomes = [RowOutcome(r["customer_key"], False, 0, f"not sent: {report.error}") for r in batch]
            _record(con, config, segment, segment_version, run_id, operation, batch, outcomes)
            gave_up = [o for o in outcomes if not o.accepted and (o.error or "").startswith("gave up")]
            if report.error is None and gave_up and len(gave_up) == len(outcomes):
                report.error = f"destination unavailable, stopped sending: {gave_up[0].error}"
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
