"""Segment membership in the warehouse: `segments.segment_members` and `segments.segment_definitions`.

Membership reads `marts.dim_customers` only. Suppression (SPEC §5, PIPL) is part of the statement that
selects members, before any rule: opted-out and unreachable customers are never members, whatever a
definition says. `suppression_violations` re-checks the built table independently (the blocking check).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from dataclasses import dataclass

import duckdb

from orchestration.segments.definitions import COLUMNS, EXPLAIN_COLUMNS, SegmentDefinition
from orchestration.warehouse import table_exists, transaction

DIM_CUSTOMERS = "marts.dim_customers"
MEMBERS_TABLE = "segments.segment_members"
DEFINITIONS_TABLE = "segments.segment_definitions"

# Where a marketing tool reaches the customer (SPEC §5): the WeCom contact, then the official-account openid,
# then another openid with the channel it was seen on, then the phone's SHA-256. A WeCom external id is a
# contact only while the relationship is live (`wecom` in reachable_channels, SPEC §4): a customer who removed
# the contact, or whose id was only seen on an event, is reached by the next handle. `wecom` names the WeCom
# contact and nothing else: an openid seen on a WeCom event (or on an order naming no channel) is `openid`, as
# one seen only on referrals is. A review found former WeCom contacts labelled `wecom` with an openid as handle,
# and a WeCom sync tagging the contact they had removed.
_WECOM_CONTACT_SQL = "d.wecom_external_userid is not null and list_contains(string_split(d.reachable_channels, ','), 'wecom')"
CONTACT_CHANNEL_SQL = f"""case
        when {_WECOM_CONTACT_SQL} then 'wecom'
        when d.openid is not null then
            case when d.openid_channel is null or d.openid_channel in ('wecom', 'unknown') then 'openid' else d.openid_channel end
        when d.phone_sha256 is not null then 'phone_sha256'
    end"""
CONTACT_HANDLE_SQL = f"""case
        when {_WECOM_CONTACT_SQL} then d.wecom_external_userid
        else coalesce(d.openid, d.phone_sha256)
    end"""
SUPPRESSION_SQL = "d.is_reachable and not d.opted_out"

# Why a customer key left a segment (export removes, webhook removes), first that applies: merged into another key
# (the key registry) - unless the surviving customer opted out or is unreachable, which a tool that keeps
# do-not-contact lists by handle must hear for the old key's handle too (the privacy review) -, not a customer
# any more, opted out, no longer reachable, else still a reachable customer the rule no longer selects.
REMOVE_REASON_SQL = (
    "case when reason_key.customer_key is not null then "
    "case when reason_survivor.opted_out then 'opted_out' when not reason_survivor.is_reachable then 'unreachable' "
    "else 'merged' end "
    "when reason_dim.customer_key is null then 'no_longer_a_customer' when reason_dim.opted_out then 'opted_out' "
    "when not reason_dim.is_reachable then 'unreachable' else 'left_segment' end"
)


def remove_reason_joins(con: duckdb.DuckDBPyConnection, key: str) -> str:
    """The joins REMOVE_REASON_SQL reads, for the customer key expression `key`."""
    if table_exists(con, "identity_state.customer_keys"):
        merged = "select customer_key, merged_into from identity_state.customer_keys where status = 'merged'"
    else:  # a warehouse without the key registry: nothing was merged
        merged = "select cast(null as varchar) as customer_key, cast(null as varchar) as merged_into where false"
    return (f"left join {DIM_CUSTOMERS} reason_dim on reason_dim.customer_key = {key} "
            f"left join ({merged}) reason_key on reason_key.customer_key = {key} "
            f"left join {DIM_CUSTOMERS} reason_survivor on reason_survivor.customer_key = reason_key.merged_into")

_TYPES = {
    "int": ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT"),
    "decimal": ("DECIMAL",),
    "bool": ("BOOLEAN",),
    "text": ("VARCHAR",),
    "timestamp": ("TIMESTAMP WITH TIME ZONE",),
}
REQUIRED_COLUMNS = ("customer_key", "openid", "openid_channel", "wecom_external_userid", "wecom_staff_userid", "phone_sha256",
                    "reachable_channels", "data_end_at")


class WarehouseShapeError(RuntimeError):
    """marts.dim_customers lacks a column a segment needs, or has it with another type."""


@dataclass(frozen=True)
class SegmentSummary:
    segment: str
    version: int
    matched: int  # customers the rule selects before suppression
    members: int  # after suppression
    suppressed: int


def check_dim_customers(con: duckdb.DuckDBPyConnection) -> None:
    found = dict(
        con.execute(
            "select column_name, data_type from information_schema.columns where table_schema = 'marts' and table_name = 'dim_customers'"
        ).fetchall()
    )
    if not found:
        raise WarehouseShapeError("marts.dim_customers does not exist yet: build the marts (privdom run) before segments")
    problems = [f"{c} is missing" for c in REQUIRED_COLUMNS if c not in found]
    for column, spec in COLUMNS.items():
        kind = found.get(column)
        if kind is None:
            problems.append(f"{column} is missing")
        elif not kind.startswith(_TYPES[spec.kind]):
            problems.append(f"{column} is {kind}, segments expect {spec.kind}")
    if problems:
        raise WarehouseShapeError("marts.dim_customers does not have the columns segments read: " + "; ".join(problems))


def _member_select(definition: SegmentDefinition) -> str:
    # Whole numbers leave as BIGINT whatever width dbt gave them (sums are HUGEINT, which files do not carry well).
    explain = ",\n    ".join(
        f'cast(d."{c}" as bigint) as "{c}"' if COLUMNS[c].kind == "int" else f'd."{c}"' for c in EXPLAIN_COLUMNS
    )
    return f"""
select
    cast(? as varchar) as segment,
    cast(? as integer) as segment_version,
    d.customer_key,
    {CONTACT_CHANNEL_SQL} as contact_channel,
    {CONTACT_HANDLE_SQL} as contact_handle,
    d.phone_sha256,
    d.wecom_external_userid,
    d.wecom_staff_userid,
    {explain},
    cast(? as timestamptz) as computed_at,
    d.data_end_at
from {DIM_CUSTOMERS} as d
where ({SUPPRESSION_SQL}) and {definition.sql}
"""


def _table_shape(con: duckdb.DuckDBPyConnection, schema: str, table: str) -> list[tuple[str, str]]:
    return con.execute(
        "select column_name, data_type from information_schema.columns where table_schema = ? and table_name = ? order by ordinal_position",
        [schema, table],
    ).fetchall()


DEFINITIONS_DDL = f"""create table {DEFINITIONS_TABLE} (
    segment varchar primary key, segment_version integer, purpose varchar, campaign varchar,
    rule json, defined_in varchar, enabled boolean, matched bigint, suppressed bigint, members bigint,
    computed_at timestamptz, data_end_at timestamptz)"""


def _ensure_tables(con: duckdb.DuckDBPyConnection, computed_at: dt.datetime) -> None:
    """Create the two tables (again, when their columns changed) before the rebuilding transaction.

    They are never created inside it: DuckDB 2.0.0 returns no rows for grouped or filtered scans of a table
    created and filled with many rows in one transaction, until the next checkpoint (DECISIONS.md).
    """
    con.execute("create schema if not exists segments")
    con.execute(f"create or replace temp table _segment_members_shape as {_member_select(_NOTHING)}", _params(_NOTHING, computed_at))
    wanted = con.execute(
        "select column_name, data_type from information_schema.columns where table_name = '_segment_members_shape' order by ordinal_position"
    ).fetchall()
    if _table_shape(con, "segments", "segment_members") != wanted:
        con.execute(f"create or replace table {MEMBERS_TABLE} as select * from _segment_members_shape")
    con.execute("drop table _segment_members_shape")
    if not _table_shape(con, "segments", "segment_definitions"):
        con.execute(DEFINITIONS_DDL)


def build_membership(
    con: duckdb.DuckDBPyConnection, definitions: Sequence[SegmentDefinition], computed_at: dt.datetime
) -> list[SegmentSummary]:
    """Rebuild segment_members and segment_definitions for the enabled definitions, in one transaction."""
    check_dim_customers(con)
    enabled = [d for d in definitions if d.enabled]
    _ensure_tables(con, computed_at)
    with transaction(con):
        con.execute(f"delete from {MEMBERS_TABLE}")
        con.execute(f"delete from {DEFINITIONS_TABLE}")
        summaries = []
        for d in enabled:
            members = con.execute(f"insert into {MEMBERS_TABLE} {_member_select(d)}", _params(d, computed_at)).fetchone()[0]
            matched = con.execute(f"select count(*) from {DIM_CUSTOMERS} d where {d.sql}", list(d.params)).fetchone()[0]
            summaries.append(SegmentSummary(d.name, d.version, matched, members, matched - members))
        by_name = {s.segment: s for s in summaries}
        for d in definitions:
            s = by_name.get(d.name)
            con.execute(
                f"""insert into {DEFINITIONS_TABLE}
                    select ?, ?, ?, ?, ?::json, ?, ?, ?, ?, ?, ?::timestamptz, (select max(data_end_at) from {DIM_CUSTOMERS})""",
                [d.name, d.version, d.purpose, d.campaign, d.rule_json(), d.source, d.enabled,
                 s.matched if s else None, s.suppressed if s else None, s.members if s else None, computed_at],
            )
    return summaries


def changed_without_new_version(con: duckdb.DuckDBPyConnection, definitions: Sequence[SegmentDefinition]) -> list[str]:
    """Enabled segments whose rule differs from the one their last membership was built with, under the same
    version (segments.segment_definitions, read before it is rebuilt): exports and syncs then carry one version
    for two rules (marketer review). Empty on a first build."""
    if not table_exists(con, DEFINITIONS_TABLE):
        return []
    before = {name: (version, json.dumps(json.loads(rule), sort_keys=True, ensure_ascii=False, default=str))
              for name, version, rule in con.execute(
                  f"select segment, segment_version, cast(rule as varchar) from {DEFINITIONS_TABLE}").fetchall()
              if rule is not None}
    return sorted(d.name for d in definitions
                  if d.enabled and d.name in before and before[d.name][0] == d.version and before[d.name][1] != d.rule_json())


def count_members(con: duckdb.DuckDBPyConnection, definitions: Sequence[SegmentDefinition]) -> tuple[dict[str, tuple[int, int, int]], dt.datetime | None]:
    """{segment: (matched by its rule, suppressed, members)} over marts.dim_customers as it is, and its data end,
    reading only (`privdom segments`); ({}, None) where dim_customers is not built yet."""
    try:
        check_dim_customers(con)
    except WarehouseShapeError:
        return {}, None
    out = {}
    for d in definitions:
        matched, members = con.execute(
            f"select count(*), count(*) filter (where {SUPPRESSION_SQL}) from {DIM_CUSTOMERS} d where {d.sql}", list(d.params)
        ).fetchone()
        out[d.name] = (matched, matched - members, members)
    return out, con.execute(f"select max(data_end_at) from {DIM_CUSTOMERS}").fetchone()[0]


def _params(d: SegmentDefinition, computed_at: dt.datetime) -> list:
    return [d.name, d.version, computed_at, *d.params]


_NOTHING = SegmentDefinition(name="none", version=1, purpose="-", campaign="", rule={"all": []}, source="-", sql="false")


def suppression_violations(con: duckdb.DuckDBPyConnection, limit: int = 20) -> tuple[int, list[tuple[str, str, str]]]:
    """Members that are opted out, unreachable or unknown in dim_customers: (count, first few with the reason)."""
    query = f"""
        select m.segment, m.customer_key,
               case when d.customer_key is null then 'not in dim_customers'
                    when d.opted_out then 'opted out'
                    else 'unreachable' end as reason
        from {MEMBERS_TABLE} m
        left join {DIM_CUSTOMERS} d using (customer_key)
        where d.customer_key is null or d.opted_out or not d.is_reachable
        order by 1, 2
    """
    count = con.execute(f"select count(*) from ({query})").fetchone()[0]
    return count, [tuple(r) for r in con.execute(f"{query} limit {int(limit)}").fetchall()]
