"""Stable customer keys (SPEC §3): a key registry that is state, not a model.

The registry lives in schema ``identity_state`` and survives full refreshes of the dbt models:

* ``customer_keys(customer_key, created_at, created_run_id, status, merged_into, acquired_at, closed_at,
  closed_run_id)``: every key ever issued. ``status`` is ``active``, ``merged`` (``merged_into`` names the
  surviving key, always an active key or the end of a chain that is kept pointing at one) or ``retired`` (no
  identifier of this run maps to it). ``acquired_at`` is the customer's acquired_at as of the last run the key
  was active: it decides which key survives a merge.
* ``identifier_keys(identifier_type, identifier_value, customer_key)``: the mapping as of the last run, for
  every identifier of a customer component (shared identifiers included when rows belong to their singleton).
  Replaced as a whole every run; this is how the next run recognises components.
* ``customer_key_merges(merged_key, surviving_key, merged_at, run_id, via_identifier_type,
  via_identifier_value)``: phones masked.
* ``customer_key_splits(split_key, part_key, split_at, run_id, via_identifier_type, via_identifier_value)``:
  one row per part that lost the key; ``via`` is an identifier that became shared, when there is one.

Algorithm (all SQL, in the engine):

1. Customers are the components of ``intermediate.int_identity__records``, with ``acquired_at`` from the
   first-touch relation (NULL sorts last).
2. Claims: every (component, active old key) where an identifier of the component mapped to that key.
3. Each claimed key goes to the claiming component with the earliest acquired_at (ties: smaller
   component_id). Other claimants are parts of a split: they record a split.
4. A component that won several keys is a merge: the survivor is the key with the earliest registry
   ``acquired_at`` (ties: the smaller key); the others are marked merged into it.
5. Components that won no key get new keys ``C000000001``... allocated after the registry's largest, in
   (acquired_at, component_id) order. Active keys nobody claims are retired.
6. ``intermediate.int_customer_keys(component_id, customer_key)`` and every state table are written in one
   transaction. Running twice on the same data changes nothing.

Incrementally (the usual run): steps 1-6 for the components the identity graph wrote again since the last
run (its change log, ``identity_state.changed_components('int_customer_keys')``), by their ids before and
after; every other component keeps its key, and only the keys the changed components held can be merged or
retired. The same registry as steps 1-6 over every component (docs/DECISIONS.md, "Steps after the graph take
in its changes"); a full pass after a full build of the graph or with ``full_refresh``.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timezone

from orchestration.identity.graph import (
    BUILDS_TABLE,
    IDENTIFIERS_TABLE,
    MEMBERSHIPS_CACHE,
    NODES_CACHE,
    RECORDS_TABLE,
    STATE_SCHEMA as GRAPH_STATE_SCHEMA,
    TYPE_ORDER,
    mark_consumed_sql,
    mask_sql,
    node_id_sql,
)
from orchestration.warehouse import table_exists, transaction

STATE_SCHEMA = "identity_state"
CUSTOMER_KEYS = f"{STATE_SCHEMA}.customer_keys"
IDENTIFIER_KEYS = f"{STATE_SCHEMA}.identifier_keys"
MERGES = f"{STATE_SCHEMA}.customer_key_merges"
SPLITS = f"{STATE_SCHEMA}.customer_key_splits"
# One row: this warehouse's key registry, named when its key tables were made. Customer keys are issued in
# sequence, so a warehouse rebuilt from landing gives them to other people; what holds keys outside the warehouse
# (segment exports, their manifests carry the id) can tell it is not the registry that named them.
KEY_REGISTRY = f"{STATE_SCHEMA}.key_registry"
OUTPUT_TABLE = "intermediate.int_customer_keys"
# this step's name in the identity graph's change log (identity_state.graph_consumers)
CONSUMER = "int_customer_keys"
KEY_PREFIX = "C"
KEY_DIGITS = 9

_TYPE_ORD_CASE = "CASE identifier_type " + " ".join(f"WHEN '{t}' THEN {o}" for t, o in TYPE_ORDER.items()) + " END"


class CustomerKeyError(RuntimeError):
    """The key registry cannot be updated (e.g. the key space is exhausted)."""


@dataclass(frozen=True)
class KeyReport:
    customers: int
    new_keys: int
    kept_keys: int
    merges: int
    splits: int
    retired: int
    seconds: float
    # "full": every component was given its key again; "incremental": only the components the identity graph
    # wrote again since this step last ran (components_recomputed of them), the others kept theirs
    mode: str = "full"
    full_reason: str | None = None
    components_recomputed: int | None = None

    def to_metadata(self) -> dict[str, object]:
        return {k: (round(v, 3) if isinstance(v, float) else v) for k, v in self.__dict__.items()}

    as_metadata = to_metadata


def key_registry_id(con) -> str | None:
    """The id of the warehouse's key registry (KEY_REGISTRY), or None before the identity step made it."""
    if not table_exists(con, KEY_REGISTRY):
        return None
    row = con.execute(f"SELECT registry_id FROM {KEY_REGISTRY}").fetchone()
    return row[0] if row else None


def ensure_state_tables(con) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA}")
    con.execute(f"CREATE TABLE IF NOT EXISTS {KEY_REGISTRY} (registry_id VARCHAR NOT NULL, created_at TIMESTAMPTZ NOT NULL)")
    con.execute(f"INSERT INTO {KEY_REGISTRY} SELECT ?, now() WHERE NOT EXISTS (SELECT 1 FROM {KEY_REGISTRY})",
                [str(uuid.uuid4())])
    con.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {CUSTOMER_KEYS} (
            customer_key VARCHAR PRIMARY KEY,
            created_at TIMESTAMPTZ NOT NULL,
            created_run_id VARCHAR NOT NULL,
            status VARCHAR NOT NULL,
            merged_into VARCHAR,
            acquired_at TIMESTAMPTZ,
            closed_at TIMESTAMPTZ,
            closed_run_id VARCHAR
        )
        """
    )
    con.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {IDENTIFIER_KEYS} (
            identifier_type VARCHAR NOT NULL,
            identifier_value VARCHAR NOT NULL,
            customer_key VARCHAR NOT NULL
        )
        """
    )
    for table, a, b, at in ((MERGES, "merged_key", "surviving_key", "merged_at"), (SPLITS, "split_key", "part_key", "split_at")):
        con.execute(
            f"""
            CREATE TABLE IF NOT EXISTS {table} (
                {a} VARCHAR NOT NULL,
                {b} VARCHAR NOT NULL,
                {at} TIMESTAMPTZ NOT NULL,
                run_id VARCHAR NOT NULL,
                via_identifier_type VARCHAR,
                via_identifier_value VARCHAR
            )
            """
        )


def _why_full(con, full_refresh: bool, log: bool) -> str | None:
    """Why every component must get its key again, or None when the components the identity graph wrote again
    since this step last ran are enough (its change log, present when `log`: orchestration.identity.graph)."""
    if full_refresh:
        return "a full refresh was asked for"
    if not log or not table_exists(con, OUTPUT_TABLE):
        return "no identity graph change log or no customer keys yet"
    if con.execute(f"SELECT {GRAPH_STATE_SCHEMA}.full_recompute(?)", [CONSUMER]).fetchone()[0]:
        return "the identity graph was built in full (or never taken in) since the keys were last assigned"
    return None


def assign_customer_keys(con, first_touch_relation: str, run_id: str, now: datetime | None = None, *,
                         full_refresh: bool = False) -> KeyReport:
    """Give every component of this run's graph a stable customer_key and update the registry.

    ``first_touch_relation`` names a relation with ``(component_id, acquired_at)`` for this run's components
    (several rows per component are fine: the earliest counts). ``now`` stamps created/merged/split rows
    (default: the wall clock, UTC; registry timestamps are bookkeeping, never used by metrics).

    Only the components that the identity graph wrote again since the last call (its change log) are given
    their keys again, unless the graph was built in full since, or ``full_refresh``: every key a component
    can claim belongs to such a component, so the others keep theirs (docs/DECISIONS.md). Both give the same
    registry.
    """
    started = time.perf_counter()
    if now is None:
        now = datetime.now(timezone.utc)
    con.execute("CREATE SCHEMA IF NOT EXISTS intermediate")
    ensure_state_tables(con)
    log = table_exists(con, BUILDS_TABLE)
    reason = _why_full(con, full_refresh, log)
    incremental = reason is None

    # 0. The components to key again (incremental): written again by the graph, by their ids before and after;
    #    and the keys they held, the only ones that can be merged away or retired.
    if incremental:
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _ck_scope AS "
            f"SELECT component_id FROM {GRAPH_STATE_SCHEMA}.changed_components(?)", [CONSUMER]
        )
        con.execute(
            f"CREATE OR REPLACE TEMP TABLE _ck_old_keys AS "
            f"SELECT customer_key FROM {OUTPUT_TABLE} WHERE component_id IN (SELECT component_id FROM _ck_scope)"
        )
    in_scope = "WHERE component_id IN (SELECT component_id FROM _ck_scope)" if incremental else ""

    # 1. Customers of this run.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ck_customers AS
        SELECT c.component_id, ft.acquired_at
        FROM (SELECT DISTINCT component_id FROM {RECORDS_TABLE} {in_scope}) c
        LEFT JOIN (SELECT component_id, min(acquired_at) AS acquired_at FROM {first_touch_relation} {in_scope}
                   GROUP BY 1) ft
          USING (component_id)
        """
    )
    # identifiers of customer components (a shared identifier's singleton is one when rows belong to it)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ck_identifiers AS
        SELECT i.identifier_type, i.identifier_value, i.component_id, i.is_shared, ik.customer_key AS old_key
        FROM {IDENTIFIERS_TABLE} i
        JOIN _ck_customers c USING (component_id)
        LEFT JOIN {IDENTIFIER_KEYS} ik USING (identifier_type, identifier_value)
        """
    )
    # 2-3. Claims and the winner of each claimed key.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ck_claims AS
        WITH claims AS (
            SELECT DISTINCT i.component_id, i.old_key AS customer_key
            FROM _ck_identifiers i
            JOIN {CUSTOMER_KEYS} k ON k.customer_key = i.old_key AND k.status = 'active'
        )
        SELECT cl.component_id, cl.customer_key, c.acquired_at, k.acquired_at AS key_acquired_at,
               row_number() OVER (PARTITION BY cl.customer_key
                                  ORDER BY c.acquired_at NULLS LAST, cl.component_id) = 1 AS wins_key
        FROM claims cl
        JOIN _ck_customers c USING (component_id)
        JOIN {CUSTOMER_KEYS} k USING (customer_key)
        """
    )
    # 4. Per component, the surviving key among those it won.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _ck_won AS
        SELECT component_id, customer_key,
               row_number() OVER (PARTITION BY component_id
                                  ORDER BY key_acquired_at NULLS LAST, customer_key) = 1 AS survives
        FROM _ck_claims WHERE wins_key
        """
    )
    # 5. New keys after the registry's largest sequence number.
    max_seq = con.execute(
        f"SELECT coalesce(max(CAST(substr(customer_key, {len(KEY_PREFIX) + 1}) AS BIGINT)), 0) FROM {CUSTOMER_KEYS}"
    ).fetchone()[0]
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ck_assign AS
        WITH kept AS (SELECT component_id, customer_key FROM _ck_won WHERE survives),
        fresh AS (
            SELECT c.component_id, c.acquired_at,
                   {int(max_seq)} + row_number() OVER (ORDER BY c.acquired_at NULLS LAST, c.component_id) AS seq
            FROM _ck_customers c ANTI JOIN kept k USING (component_id)
        )
        SELECT c.component_id, c.acquired_at, coalesce(k.customer_key, printf('{KEY_PREFIX}%0{KEY_DIGITS}d', f.seq))
                   AS customer_key,
               k.customer_key IS NULL AS is_new, f.seq
        FROM _ck_customers c
        LEFT JOIN kept k USING (component_id)
        LEFT JOIN fresh f USING (component_id)
        """
    )
    too_big = con.execute(f"SELECT max(seq) FROM _ck_assign WHERE is_new").fetchone()[0]
    if too_big is not None and too_big >= 10**KEY_DIGITS:
        raise CustomerKeyError(f"customer key space exhausted: sequence {too_big} needs more than {KEY_DIGITS} digits")

    # merges: keys won but not surviving
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _ck_merges AS
        SELECT w.customer_key AS merged_key, a.customer_key AS surviving_key, w.component_id
        FROM _ck_won w JOIN _ck_assign a USING (component_id)
        WHERE NOT w.survives
        """
    )
    # splits: claimants that lost the key
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _ck_splits AS
        SELECT cl.customer_key AS split_key, a.customer_key AS part_key, cl.component_id
        FROM _ck_claims cl JOIN _ck_assign a USING (component_id)
        WHERE NOT cl.wins_key
        """
    )
    n_merges = con.execute("SELECT count(*) FROM _ck_merges").fetchone()[0]
    n_splits = con.execute("SELECT count(*) FROM _ck_splits").fetchone()[0]
    _via_identifiers(con, n_merges)

    # 6. One transaction for the output table and every state table.
    with transaction(con):
        if incremental:
            con.execute(f"DELETE FROM {OUTPUT_TABLE} {in_scope}")
            con.execute(f"INSERT INTO {OUTPUT_TABLE} SELECT component_id, customer_key FROM _ck_assign ORDER BY component_id")
        else:
            con.execute(
                f"CREATE OR REPLACE TABLE {OUTPUT_TABLE} AS "
                "SELECT component_id, customer_key FROM _ck_assign ORDER BY component_id"
            )
        con.execute(
            f"""
            INSERT INTO {CUSTOMER_KEYS}
            SELECT customer_key, ?, ?, 'active', NULL, acquired_at, NULL, NULL FROM _ck_assign WHERE is_new
            """,
            [now, run_id],
        )
        # kept keys: refresh acquired_at (late data may move it earlier)
        con.execute(
            f"""
            UPDATE {CUSTOMER_KEYS} k SET acquired_at = a.acquired_at
            FROM _ck_assign a
            WHERE k.customer_key = a.customer_key AND NOT a.is_new
              AND k.acquired_at IS DISTINCT FROM a.acquired_at
            """
        )
        con.execute(
            f"""
            UPDATE {CUSTOMER_KEYS} k SET status = 'merged', merged_into = m.surviving_key,
                   closed_at = ?, closed_run_id = ?
            FROM _ck_merges m WHERE k.customer_key = m.merged_key
            """,
            [now, run_id],
        )
        # keep merged_into pointing at an active key when a survivor of old merges is merged now
        con.execute(
            f"""
            UPDATE {CUSTOMER_KEYS} k SET merged_into = m.surviving_key
            FROM _ck_merges m WHERE k.status = 'merged' AND k.merged_into = m.merged_key
            """
        )
        con.execute(
            f"""
            UPDATE {CUSTOMER_KEYS} SET status = 'retired', closed_at = ?, closed_run_id = ?
            WHERE status = 'active'
              AND customer_key NOT IN (SELECT customer_key FROM _ck_assign)
              AND customer_key NOT IN (SELECT merged_key FROM _ck_merges)
              {"AND customer_key IN (SELECT customer_key FROM _ck_old_keys)" if incremental else ""}
            """,
            [now, run_id],
        )
        con.execute(
            f"""
            INSERT INTO {MERGES}
            SELECT m.merged_key, m.surviving_key, ?, ?, v.identifier_type,
                   {mask_sql('v.identifier_type', 'v.identifier_value')}
            FROM _ck_merges m LEFT JOIN _ck_merge_via v USING (merged_key)
            ORDER BY m.merged_key
            """,
            [now, run_id],
        )
        con.execute(
            f"""
            INSERT INTO {SPLITS}
            SELECT s.split_key, s.part_key, ?, ?, v.identifier_type,
                   {mask_sql('v.identifier_type', 'v.identifier_value')}
            FROM _ck_splits s LEFT JOIN _ck_split_via v USING (split_key)
            ORDER BY s.split_key, s.part_key
            """,
            [now, run_id],
        )
        if incremental:
            # the mapping of the scope's identifiers, before (by the keys they held) and after
            con.execute(
                f"""
                DELETE FROM {IDENTIFIER_KEYS} ik
                WHERE ik.customer_key IN (SELECT customer_key FROM _ck_old_keys)
                   OR (ik.identifier_type, ik.identifier_value) IN (SELECT identifier_type, identifier_value FROM _ck_identifiers)
                """
            )
        else:
            con.execute(f"DELETE FROM {IDENTIFIER_KEYS}")
        con.execute(
            f"""
            INSERT INTO {IDENTIFIER_KEYS}
            SELECT i.identifier_type, i.identifier_value, a.customer_key
            FROM _ck_identifiers i JOIN _ck_assign a USING (component_id)
            ORDER BY i.identifier_type, i.identifier_value
            """
        )
        if log:
            for statement in mark_consumed_sql(CONSUMER):
                con.execute(statement)
        counts = con.execute(
            f"""
            SELECT (SELECT count(*) FROM {OUTPUT_TABLE}),
                   (SELECT count(*) FILTER (WHERE is_new) FROM _ck_assign),
                   (SELECT count(*) FROM {CUSTOMER_KEYS} WHERE closed_run_id = ? AND status = 'retired')
            """,
            [run_id],
        ).fetchone()
    (recomputed,) = con.execute("SELECT count(*) FROM _ck_customers").fetchone()
    for t in ("_ck_scope", "_ck_old_keys", "_ck_customers", "_ck_identifiers", "_ck_claims", "_ck_won", "_ck_assign", "_ck_merges",
              "_ck_splits", "_ck_merge_via", "_ck_split_via", "_ck_via_merged_ids", "_ck_via_groups"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
    return KeyReport(
        customers=int(counts[0]),
        new_keys=int(counts[1]),
        kept_keys=int(counts[0] - counts[1]),
        merges=int(n_merges),
        splits=int(n_splits),
        retired=int(counts[2]),
        seconds=time.perf_counter() - started,
        mode="incremental" if incremental else "full",
        full_reason=reason,
        components_recomputed=int(recomputed),
    )


@dataclass(frozen=True)
class KeyCheckCounts:
    components_without_one_key: int  # components of the first-touch relation with no key or several
    keys_on_two_components: int  # keys of int_customer_keys naming more than one component
    identifiers_not_on_one_customer: int  # identifiers, neither shared nor placeholders, with no key or several


def key_check_counts(con, first_touch_relation: str) -> KeyCheckCounts:
    """What the asset checks of int_customer_keys count; every count is 0 when the keys are sound.
    ``first_touch_relation`` is the relation assign_customer_keys was given: its components must have one key."""
    components, keys_twice = con.execute(
        f"""
        SELECT
            (SELECT count(*) FROM {first_touch_relation} f
             WHERE (SELECT count(*) FROM {OUTPUT_TABLE} k WHERE k.component_id = f.component_id) <> 1),
            (SELECT count(*) FROM (SELECT customer_key FROM {OUTPUT_TABLE} GROUP BY 1 HAVING count(*) > 1))
        """
    ).fetchone()
    # An identifier has one row, its component's (checked first: one grouping of the identifiers' text, 0.18 s
    # at 1M customers): then it is on exactly one customer when its component has exactly one distinct key, an
    # integer join (with the check ~0.3 s for 3.2M identifiers, against 0.77 s for the keys of every
    # identifier's rows compared as text). Were one on several rows (a defect), every
    # identifier's rows are compared: not exactly one distinct key as min/max (NULLs ignored, as count(DISTINCT)
    # does).
    (repeated,) = con.execute(
        f"""
        SELECT count(*) FROM (
            SELECT 1 FROM {IDENTIFIERS_TABLE} WHERE NOT is_shared
            GROUP BY identifier_type, identifier_value HAVING count(*) > 1
        )
        """
    ).fetchone()
    if repeated == 0:
        identifiers = con.execute(
            f"""
            SELECT count(*)
            FROM {IDENTIFIERS_TABLE} i
            LEFT JOIN (SELECT component_id, count(DISTINCT customer_key) AS keys FROM {OUTPUT_TABLE} GROUP BY 1) k
                USING (component_id)
            WHERE NOT i.is_shared AND coalesce(k.keys, 0) <> 1
            """
        ).fetchone()[0]
    else:
        identifiers = con.execute(
            f"""
            SELECT count(*) FROM (
                SELECT i.identifier_type, i.identifier_value
                FROM {IDENTIFIERS_TABLE} i
                LEFT JOIN {OUTPUT_TABLE} k USING (component_id)
                WHERE NOT i.is_shared
                GROUP BY 1, 2
                HAVING min(k.customer_key) IS NULL OR min(k.customer_key) <> max(k.customer_key)
            )
            """
        ).fetchone()[0]
    return KeyCheckCounts(int(components), int(keys_twice), int(identifiers))


def _via_identifiers(con, n_merges: int) -> None:
    """The identifier through which each merge / split happened.

    Merge, in order of preference (then column order, then value): a new identifier (no key before) that now
    shares a group (a channel event, an order, a referral side) with an identifier of the merged customer;
    else an identifier of the merged customer that now shares a group with another customer's identifier;
    else (the customers met through a converted referral's order) the merged customer's first identifier. Split: an identifier of the split key that is shared now (first in column order), if any.
    """
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ck_split_via AS
        SELECT ik.customer_key AS split_key,
               arg_min(i.identifier_type, {_TYPE_ORD_CASE} || ':' || i.identifier_value) AS identifier_type,
               arg_min(i.identifier_value, {_TYPE_ORD_CASE} || ':' || i.identifier_value) AS identifier_value
        FROM {IDENTIFIERS_TABLE} i
        JOIN {IDENTIFIER_KEYS} ik USING (identifier_type, identifier_value)
        WHERE i.is_shared AND ik.customer_key IN (SELECT split_key FROM _ck_splits)
        GROUP BY ik.customer_key
        """
    )
    if n_merges == 0:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _ck_merge_via "
            "(merged_key VARCHAR, identifier_type VARCHAR, identifier_value VARCHAR)"
        )
        return
    missing = [t for t in (MEMBERSHIPS_CACHE, NODES_CACHE) if not table_exists(con, t)]
    if missing:  # a warehouse whose identity graph was last built by a privdom that kept no state
        raise RuntimeError(
            f"{missing[0]} is missing (dropped, or the identity graph was last built by a privdom that kept no "
            "state). Materialize the identity graph (intermediate/int_identity__*) again, then the customer keys."
        )
    # The merged customers' identifiers, then the groups they occur in, then every identifier of those groups,
    # from the identity graph's memberships (identity_state.graph_memberships: one row per group and identifier,
    # integers, as the graph step has just left them): a group is a channel events' identifier tuple (every
    # event naming exactly those values), an order or a referral side over all its versions, so two identifiers
    # share a group there exactly when they occur on one staged record (occurrences_sql), which is what this
    # asks. At 1M customers a new day's 1.3k merges: 1.6 s through filtered scans of the staging tables, 0.2 s
    # here (docs/performance.md, "Seventeenth session").
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ck_via_merged_ids AS
        SELECT i.identifier_type, i.identifier_value, i.old_key AS merged_key, i.component_id,
               {node_id_sql('i.identifier_type', 'i.identifier_value')} AS nid
        FROM _ck_identifiers i JOIN _ck_merges m ON m.merged_key = i.old_key AND m.component_id = i.component_id
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ck_via_groups AS
        SELECT DISTINCT gid FROM {MEMBERSHIPS_CACHE} WHERE nid IN (SELECT nid FROM _ck_via_merged_ids)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _ck_merge_via AS
        WITH occ AS (
            SELECT m.gid, m.nid, n.node_type AS identifier_type, n.node_value AS identifier_value
            FROM {MEMBERSHIPS_CACHE} m JOIN {NODES_CACHE} n ON n.node_id = m.nid
            WHERE m.gid IN (SELECT gid FROM _ck_via_groups)
        ),
        linked AS (
            -- (merged identifier, identifier sharing a group with it that did not map to the merged key)
            SELECT mi.merged_key, mi.identifier_type, mi.identifier_value,
                   b.identifier_type AS other_type, b.identifier_value AS other_value,
                   bk.customer_key AS other_old_key
            FROM _ck_via_merged_ids mi
            JOIN occ a ON a.nid = mi.nid
            JOIN occ b ON b.gid = a.gid
            LEFT JOIN {IDENTIFIERS_TABLE} bi ON bi.identifier_type = b.identifier_type
                                             AND bi.identifier_value = b.identifier_value
            LEFT JOIN {IDENTIFIER_KEYS} bk ON bk.identifier_type = b.identifier_type
                                           AND bk.identifier_value = b.identifier_value
            WHERE NOT coalesce(bi.is_shared, FALSE) AND bk.customer_key IS DISTINCT FROM mi.merged_key
        ),
        candidates AS (
            -- 0: a new identifier (no key before) now linked to the merged customer's identifiers
            SELECT merged_key, other_type AS identifier_type, other_value AS identifier_value, 0 AS pref
            FROM linked WHERE other_old_key IS NULL
            UNION ALL
            -- 1: the merged customer's identifier now sharing a group with another customer's identifier
            SELECT merged_key, identifier_type, identifier_value, 1 FROM linked
            UNION ALL
            -- 2: fallback (linked only through a converted referral's order): its first identifier
            SELECT merged_key, identifier_type, identifier_value, 2 FROM _ck_via_merged_ids
        )
        SELECT merged_key,
               arg_min(identifier_type, pref || ':' || {_TYPE_ORD_CASE} || ':' || identifier_value) AS identifier_type,
               arg_min(identifier_value, pref || ':' || {_TYPE_ORD_CASE} || ':' || identifier_value)
                   AS identifier_value
        FROM candidates GROUP BY merged_key
        """
    )
