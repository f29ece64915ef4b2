"""The identity graph of SPEC §3: identifiers, links, shared identifiers and connected components.

Everything but the components runs as SQL in the engine on an open DuckDB connection (no per-row Python).
The SQL uses plain joins, group-bys, window functions and ``arg_min`` (Spark: ``min_by``), so it ports to
Spark in spirit; the components take the links out as two integer arrays into SciPy's compiled code
(on Spark: GraphFrames' connected components).

Graph
-----
* Nodes are ``(identifier_type, identifier_value)`` with the five identifier types, plus *pseudo-nodes* that
  are never customers' identifiers and never shared: ``('order', order_id)``, ``('referral_referrer',
  referral_id)`` and ``('referral_referee', referral_id)``.
* A *group* is what co-occurrence means: one channel event (its row), one order (all its versions), one side
  of one referral (all its versions). Each occurrence of an identifier in a staged row is a membership of the
  row's group. (Channel events with the same identifiers have the same memberships; the SQL keeps one group
  per such tuple and gives every event of it the tuple's component.)
* Links: a channel event links each identifier to the row's first non-shared identifier (a star, in column
  order); an order links every non-shared identifier of every version to its ``order`` pseudo-node; a
  referral links referrer ids to its ``referral_referrer`` pseudo-node and referee ids to its
  ``referral_referee`` pseudo-node (never one side to the other); a converted referral links its
  ``referral_referee`` pseudo-node to the ``order`` pseudo-node of its ``order_id``.
* Degree of an identifier: per other identifier type, the number of distinct values it links to, that is
  shares a group with, or sits across a conversion from (a converted referral's referee ids and the ids of the
  buyer of its order link too, SPEC §3); ``degree`` is the largest. Above ``max_degree`` it is *shared*: it
  keeps no links (a singleton component).
* Components: SciPy's connected components over the links as integer node ids (see
  :func:`_connected_components`); the component id is the smallest node id of the component, a node's id
  being the top 63 bits of the MD5 of ``(node_type, node_value)`` (:func:`node_id_sql`): the same for the
  same data, whatever the order it arrived in.

Incremental builds
------------------
The graph is also kept as state (schema ``identity_state``, tables ``graph_*``). A build whose state fits
(same version and ``max_degree``, the staged rows it took in unchanged) takes in only the staged rows of newer
files and computes again only the components they touch (:func:`_build_incremental`); it writes the same
tables as a full build of the same staging. Anything else builds in full (:func:`_build_full`).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestration.contract import IDENTIFIER_COLUMNS, REFEREE_COLUMNS, REFERRER_COLUMNS
from orchestration.warehouse import table_exists, transaction

SCHEMA = "intermediate"
IDENTIFIERS_TABLE = f"{SCHEMA}.int_identity__identifiers"
RECORDS_TABLE = f"{SCHEMA}.int_identity__records"
SHARED_TABLE = f"{SCHEMA}.int_identity__shared_identifiers"

# The graph as state, for incremental builds (next to the key registry; rebuilt in full whenever in doubt):
# every node with its degree and component, the channel-event tuples, the groups' memberships, the links,
# and per staging table the newest file_id taken in with the row count and checksum up to it.
STATE_SCHEMA = "identity_state"
NODES_CACHE = f"{STATE_SCHEMA}.graph_nodes"
TUPLES_CACHE = f"{STATE_SCHEMA}.graph_event_tuples"
# One row per group (a channel events' identifier tuple, an order's or a referral side's pseudo-node over all its
# versions) and identifier, shared ones included. The customer keys read it too (keys._via_identifiers: which
# identifiers share a group): a change of what it holds bumps GRAPH_VERSION and is checked against the keys.
MEMBERSHIPS_CACHE = f"{STATE_SCHEMA}.graph_memberships"
LINKS_CACHE = f"{STATE_SCHEMA}.graph_links"
STATE_TABLE = f"{STATE_SCHEMA}.graph_state"
# The change log read by the steps after the graph that work on changed components only (the first touch, the
# customer keys): one row per build, and per incremental build the components whose records it wrote again, by
# their id before and after the build. A consumer records the newest build it has taken in; see
# changed_components_sql / full_recompute_sql and docs/DECISIONS.md.
BUILDS_TABLE = f"{STATE_SCHEMA}.graph_builds"
CHANGES_TABLE = f"{STATE_SCHEMA}.graph_changed_components"
CONSUMERS_TABLE = f"{STATE_SCHEMA}.graph_consumers"
# Bump when what the state means changes: the next build after an upgrade is then a full one.
# 2: degrees count the values across a conversion (a referee's ids and its order's buyer's ids).
# 3: a converted referee named only by shared ids is its order's buyer when that buyer is too (records of
#    untouched components were left as the previous release wrote them).
# 4: a version tied on updated_at is ranked by its latest delivery (an identical re-delivery re-ranks it): the
#    memberships' version ranks of a graph built before may be stale.
GRAPH_VERSION = 4

STG_CHANNEL_EVENTS = "staging.stg_channel_events"
STG_ORDER_VERSIONS = "staging.stg_orders__versions"
STG_REFERRAL_VERSIONS = "staging.stg_referrals__versions"

# role -> the pseudo-node type that stands for the role's group (channel events have none: star to first id)
PSEUDO_TYPES: dict[str, str] = {"buyer": "order", "referrer": "referral_referrer", "referee": "referral_referee"}
TYPE_ORDER: dict[str, int] = {t: i + 1 for i, t in enumerate(IDENTIFIER_COLUMNS)}

@dataclass(frozen=True)
class GraphReport:
    identifiers: int  # identifier nodes (shared included), pseudo-nodes excluded
    pseudo_nodes: int
    links: int  # distinct undirected links after shared identifiers' links are dropped
    components: int  # customers: distinct components that at least one record belongs to
    records: int  # rows of int_identity__records
    shared_identifiers: int
    seconds: float
    max_degree: int
    # the worst shared identifiers, plain dicts (JSON-ready for Dagster metadata):
    # {"identifier_type": "phone", "masked_value": "138****8000", "degree": 30}, highest degree first
    top_shared: list[dict[str, object]] = field(default_factory=list)
    mode: str = "full"  # "full" or "incremental"
    full_build_reason: str | None = None  # why a full build, when it was one
    # incremental builds: components touched by the new rows, their nodes (recomputed), records written
    touched_components: int | None = None
    relabelled_nodes: int | None = None
    records_written: int | None = None

    def to_metadata(self) -> dict[str, object]:
        """Plain values for a Dagster asset check / materialisation metadata."""
        return {
            "identifiers": self.identifiers,
            "pseudo_nodes": self.pseudo_nodes,
            "links": self.links,
            "components": self.components,
            "records": self.records,
            "shared_identifiers": self.shared_identifiers,
            "seconds": round(self.seconds, 3),
            "max_degree": self.max_degree,
            "top_shared": [f"{o['identifier_type']} {o['masked_value']} (degree {o['degree']})" for o in self.top_shared],
            "mode": self.mode,
            **({"full_build_reason": self.full_build_reason} if self.full_build_reason else {}),
            **{k: v for k, v in (("touched_components", self.touched_components),
                                  ("relabelled_nodes", self.relabelled_nodes),
                                  ("records_written", self.records_written)) if v is not None},
        }

    as_metadata = to_metadata


def mask_sql(type_expr: str, value_expr: str) -> str:
    """SQL masking a phone as 138****8000; other identifier types are left as they are."""
    return (
        f"CASE WHEN {type_expr} = 'phone' AND length({value_expr}) = 11 "
        f"THEN substr({value_expr}, 1, 3) || '****' || substr({value_expr}, 8, 4) ELSE {value_expr} END"
    )


OCCURRENCE_SOURCES = ("channel_events", "orders", "referrals")


def occurrences_sql(
    *, sources: tuple[str, ...] = OCCURRENCE_SOURCES, where: Callable[[str, str, str, str], str] | None = None
) -> str:
    """One row per (staged row, identifier column that is not NULL), of the staging tables of `sources`.

    Columns: source, record_id, role, version_rank (1 for channel events), type_ord (the identifier type's
    position in the column order openid, unionid, wecom_external_userid, phone, member_id), identifier_type,
    identifier_value. Staging has already trimmed values, nulled placeholders and normalised phones.

    ``where(role, identifier_type, record_id_column, identifier_column)``, when given, returns a condition on
    the staged row that each part adds to its own WHERE: a filter on a few identifiers or records is then
    applied while each staging table is scanned (a filter on the union is not pushed into its parts).
    """
    unknown = set(sources) - set(OCCURRENCE_SOURCES)
    if unknown or not sources:
        raise ValueError(f"sources must be some of {OCCURRENCE_SOURCES}, got {sources!r}")
    def part(source: str, record_id: str, role: str, version_rank: str, typ: str, column: str, table: str) -> str:
        # every part names its columns: the first one present names the union's
        extra = f" AND ({where(role, typ, record_id, column)})" if where else ""
        return (f"SELECT '{source}' AS source, {record_id} AS record_id, '{role}' AS role, {version_rank} AS version_rank, "
                f"{TYPE_ORDER[typ]} AS type_ord, '{typ}' AS identifier_type, {column} AS identifier_value "
                f"FROM {table} WHERE {column} IS NOT NULL{extra}")

    parts: list[str] = []
    if "channel_events" in sources:
        parts += [part("channel_events", "event_id", "person", "1", col, col, STG_CHANNEL_EVENTS)
                  for col in IDENTIFIER_COLUMNS]
    if "orders" in sources:
        parts += [part("orders", "order_id", "buyer", "version_rank", col, col, STG_ORDER_VERSIONS)
                  for col in IDENTIFIER_COLUMNS]
    if "referrals" in sources:
        for role, cols in (("referrer", REFERRER_COLUMNS), ("referee", REFEREE_COLUMNS)):
            parts += [part("referrals", "referral_id", role, "version_rank", col.removeprefix(f"{role}_"), col,
                           STG_REFERRAL_VERSIONS) for col in cols]
    return "\nUNION ALL\n".join(parts)


def node_id_sql(type_expr: str, value_expr: str) -> str:
    """SQL for the integer id of node ``(type, value)``: the MD5 digest of ``type NUL value`` read as a
    little-endian 128-bit integer (DuckDB's ``md5_number``), its top 63 bits.

    The same node has the same id in every build, full or incremental, and on every DuckDB version (MD5 is
    fixed), so an incremental build and a full one give the same component ids. Types are fixed names without
    NUL, so different nodes hash different texts; two of them sharing an id (odds about n² / 2⁶⁴: ~10⁻⁶ at 4M
    nodes) is detected and stops the build (:class:`IdCollision`), never merges them.
    """
    return f"CAST(md5_number({type_expr} || chr(0) || {value_expr}) >> 65 AS BIGINT)"


def _tuple_gid_sql(prefix: str = "") -> str:
    """SQL for the group id of a channel-event tuple of identifiers: a negative integer from the MD5 of the
    five values, each written as its length and itself (NULL as ``-``), so different tuples hash different
    texts (node ids are positive: an order's or a referral side's group is its pseudo-node)."""
    fields = ", ".join(
        f"coalesce(CAST(length({prefix}{c}) AS VARCHAR) || ':' || {prefix}{c}, '-')" for c in IDENTIFIER_COLUMNS
    )
    return f"(-1 - CAST(md5_number(concat_ws(chr(0), {fields})) >> 65 AS BIGINT))"


def _same_tuple(a: str, b: str) -> str:
    return " AND ".join(f"{a}.{c} IS NOT DISTINCT FROM {b}.{c}" for c in IDENTIFIER_COLUMNS)


def _event_group_occurrences(table: str = "_idg_event_groups") -> str:
    """One row per (channel events' group of ``table``, identifier column that is not NULL): gid, type_ord,
    identifier_type, identifier_value (the columns of occurrences_sql that the graph reads)."""
    return "\nUNION ALL\n".join(
        f"SELECT gid, {TYPE_ORDER[col]} AS type_ord, '{col}' AS identifier_type, {col} AS identifier_value "
        f"FROM {table} WHERE {col} IS NOT NULL"
        for col in IDENTIFIER_COLUMNS
    )


def _any_not_null(columns: tuple[str, ...]) -> str:
    return " OR ".join(f"{c} IS NOT NULL" for c in columns)


_PSEUDO_OF_ROLE = "CASE {role} " + " ".join(f"WHEN '{r}' THEN '{t}'" for r, t in PSEUDO_TYPES.items()) + " END"
_ROLE_OF_PSEUDO = "CASE {t} " + " ".join(f"WHEN '{t}' THEN '{r}'" for r, t in PSEUDO_TYPES.items()) + " END"
_TYPE_NAME = "CASE other_ord " + " ".join(f"WHEN {o} THEN '{t}'" for t, o in TYPE_ORDER.items()) + " END"


def _conversions_sql(referral_ids: str | None = None) -> str:
    """Every converted referral's referee group and its order's group (re, o: their pseudo-node ids), over all
    staged versions: the referee's ids and the buyer's ids link (SPEC §3). ``referral_ids`` (a subquery) limits
    the referrals, before their ids are hashed."""
    referee, order = node_id_sql("'referral_referee'", "referral_id"), node_id_sql("'order'", "order_id")
    only = f" AND referral_id IN ({referral_ids})" if referral_ids else ""
    return (
        f"SELECT DISTINCT {referee} AS re, {order} AS o "
        f"FROM {STG_REFERRAL_VERSIONS} WHERE status = 'converted' AND order_id IS NOT NULL{only}"
    )


def _degree_by_type_sql(memberships: str, nids: str | None = None) -> str:
    """Degrees by type (nid, other_type, n): per identifier, the distinct values of each other type it links
    to in ``memberships``: those of its groups, and those of the group across a conversion from one of its
    groups (a referee side's and its order's, both ways); only for the identifiers of the ``nids`` subquery
    when given."""
    x = f"(SELECT gid, nid, type_ord FROM {memberships} WHERE nid IN ({nids}))" if nids else memberships
    return f"""
        WITH x AS (SELECT gid, nid, type_ord FROM {x}),
        conversions AS ({_conversions_sql()}),
        across AS (
            SELECT re AS gid, o AS other_gid FROM conversions WHERE re IN (SELECT gid FROM x)
            UNION ALL
            SELECT o, re FROM conversions WHERE o IN (SELECT gid FROM x)
        ),
        pairs AS (
            SELECT x.nid, y.type_ord AS other_ord, y.nid AS other_nid
            FROM x JOIN {memberships} y ON y.gid = x.gid AND y.type_ord <> x.type_ord
            UNION
            SELECT x.nid, y.type_ord, y.nid
            FROM x JOIN across a ON a.gid = x.gid JOIN {memberships} y ON y.gid = a.other_gid AND y.type_ord <> x.type_ord
        )
        SELECT nid, {_TYPE_NAME} AS other_type, count(*) AS n FROM pairs GROUP BY ALL
    """


class IdCollision(RuntimeError):
    """Two different nodes (or channel-event tuples) got the same 63-bit id: the build stops, nothing merges."""


class _Inconsistent(Exception):
    """The cached graph does not fit the incremental update (a link leaves the touched components): the
    caller rebuilds in full."""


def _connected_components(con, edges: str = "_idg_edges") -> None:
    """Connected components of ``edges(a, b)`` (node ids) into ``_idg_labels(n, p)``: every linked node ``n``
    with ``p``, the smallest node id of its component.

    The links leave the engine once, as two integer arrays (``fetchnumpy``, no per-row Python); the node ids
    (63-bit) are numbered densely (``pandas.factorize``, a hash table) and SciPy's ``connected_components``
    labels them in compiled code (a search over a sparse adjacency matrix, linear in nodes + links whatever
    the graph's diameter).

    It replaced min-label propagation in SQL (all links joined with all labels, once per round, ~log(diameter)
    rounds), which at 1M customers took most of the graph's time (docs/performance.md, "Identity").
    """
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    fetched = con.execute(f"SELECT a, b FROM {edges}").fetchnumpy()
    if len(fetched["a"]) == 0:
        con.execute("CREATE OR REPLACE TEMP TABLE _idg_labels (n BIGINT, p BIGINT)")
        return
    ends = np.concatenate([np.asarray(fetched["a"], dtype=np.int64), np.asarray(fetched["b"], dtype=np.int64)])
    del fetched
    codes, nodes = pd.factorize(ends)
    del ends
    half = len(codes) // 2
    size = len(nodes)
    graph = csr_matrix((np.ones(half, dtype=np.int8), (codes[:half], codes[half:])), shape=(size, size))
    del codes
    count, component = connected_components(graph, directed=False, return_labels=True)
    del graph
    smallest = np.full(count, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, component, nodes)
    labels = pa.table({"n": np.asarray(nodes, dtype=np.int64), "p": smallest[component]})
    con.register("_idg_labels_arrow", labels)
    try:
        con.execute("CREATE OR REPLACE TEMP TABLE _idg_labels AS SELECT n, p FROM _idg_labels_arrow")
    finally:
        con.unregister("_idg_labels_arrow")


# ------------------------------------------------------------------------------------------------ state
# What each staging table's rows are checked by: the rows the graph has taken in must be exactly as they were
# (count and an order-free checksum of what the graph reads), else the state is rebuilt. Orders' and
# referrals' version_rank is left out: a new version re-ranks the old ones, and those records are recomputed.
_CHECKSUM_COLUMNS: dict[str, tuple[str, tuple[str, ...]]] = {
    "channel_events": (STG_CHANNEL_EVENTS, ("event_id", *IDENTIFIER_COLUMNS)),
    "orders": (STG_ORDER_VERSIONS, ("order_id", "file_id", "row_number_in_file", *IDENTIFIER_COLUMNS)),
    "referrals": (STG_REFERRAL_VERSIONS, ("referral_id", "file_id", "row_number_in_file", "status", "order_id",
                                          *REFERRER_COLUMNS, *REFEREE_COLUMNS)),
}


@dataclass(frozen=True)
class _Mark:
    """A staging table as the graph saw it: its newest file_id, and the row count and checksum up to it."""

    file_id: int
    rows: int
    checksum: int


def _create_state_tables(con) -> None:
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {STATE_SCHEMA}")
    con.execute(
        f"""
        CREATE TABLE IF NOT EXISTS {STATE_TABLE} (
            source VARCHAR NOT NULL, file_id_watermark BIGINT NOT NULL, row_count BIGINT NOT NULL,
            checksum UBIGINT NOT NULL, graph_version INTEGER NOT NULL, max_degree INTEGER NOT NULL
        )
        """
    )


    con.execute(
        f"CREATE TABLE IF NOT EXISTS {BUILDS_TABLE} (build_seq BIGINT NOT NULL, mode VARCHAR NOT NULL, "
        "full_build_reason VARCHAR, built_at TIMESTAMPTZ NOT NULL)"
    )
    con.execute(f"CREATE TABLE IF NOT EXISTS {CHANGES_TABLE} (build_seq BIGINT NOT NULL, component_id BIGINT NOT NULL)")
    con.execute(f"CREATE TABLE IF NOT EXISTS {CONSUMERS_TABLE} (consumer VARCHAR NOT NULL, build_seq BIGINT NOT NULL)")
    # The one definition of what a consumer must compute again, as DuckDB macros stored with the tables (the
    # dbt model int_components__first_touch and orchestration.identity.keys call the same ones):
    # full_recompute(c): c has taken in no build yet, or a full build (or one it cannot know about) came after
    # the last it took in; changed_components(c): the components written again by the builds since.
    con.execute(
        f"""
        CREATE OR REPLACE MACRO {STATE_SCHEMA}.graph_consumed(consumer_name) AS
            (SELECT max(build_seq) FROM {CONSUMERS_TABLE} WHERE consumer = consumer_name)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE MACRO {STATE_SCHEMA}.full_recompute(consumer_name) AS
            coalesce({STATE_SCHEMA}.graph_consumed(consumer_name) IS NULL
                     OR {STATE_SCHEMA}.graph_consumed(consumer_name) > (SELECT max(build_seq) FROM {BUILDS_TABLE})
                     OR EXISTS (SELECT 1 FROM {BUILDS_TABLE}
                                WHERE build_seq > {STATE_SCHEMA}.graph_consumed(consumer_name) AND mode <> 'incremental'),
                     TRUE)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE MACRO {STATE_SCHEMA}.changed_components(consumer_name) AS TABLE
            SELECT DISTINCT component_id FROM {CHANGES_TABLE}
            WHERE build_seq > coalesce({STATE_SCHEMA}.graph_consumed(consumer_name), 0)
        """
    )


def mark_consumed_sql(consumer: str) -> list[str]:
    """Statements that record that ``consumer`` has taken in every build of the log (run them in the same
    transaction as what it wrote)."""
    name = "'" + consumer.replace("'", "''") + "'"
    return [
        f"DELETE FROM {CONSUMERS_TABLE} WHERE consumer = {name}",
        f"INSERT INTO {CONSUMERS_TABLE} SELECT {name}, coalesce(max(build_seq), 0) FROM {BUILDS_TABLE}",
    ]


# A consumer that has not taken in the last this many builds is forgotten (it computes everything when it runs
# again), so that a reader that no longer runs does not keep the log growing.
CONSUMER_LAG_LIMIT = 30


def _log_build(con, mode: str, reason: str | None) -> None:
    """Append this build to the change log; a full build empties it (every consumer computes everything
    again). Consumers more than CONSUMER_LAG_LIMIT builds behind are forgotten, and builds and entries every
    remaining consumer has taken in are dropped (the newest build always stays: it numbers the next)."""
    (seq,) = con.execute(f"SELECT coalesce(max(build_seq), 0) + 1 FROM {BUILDS_TABLE}").fetchone()
    con.execute(f"INSERT INTO {BUILDS_TABLE} VALUES (?, ?, ?, now())", [seq, mode, reason])
    if mode == "incremental":
        con.execute(f"INSERT INTO {CHANGES_TABLE} SELECT {int(seq)}, component_id FROM _idg_changed_components")
    else:
        con.execute(f"DELETE FROM {CHANGES_TABLE}")
    con.execute(f"DELETE FROM {CONSUMERS_TABLE} WHERE build_seq < {int(seq) - CONSUMER_LAG_LIMIT}")
    (taken_in,) = con.execute(f"SELECT coalesce(min(build_seq), 0) FROM {CONSUMERS_TABLE}").fetchone()
    con.execute(f"DELETE FROM {CHANGES_TABLE} WHERE build_seq <= {int(taken_in)}")
    con.execute(f"DELETE FROM {BUILDS_TABLE} WHERE build_seq <= {int(taken_in)} AND build_seq < {int(seq)}")


def _marks(con, below: dict[str, int] | None) -> tuple[dict[str, _Mark], dict[str, _Mark], list[str]]:
    """Per source: (the rows up to ``below[source]``, all rows), each as a _Mark, and the staging tables with
    rows without a file_id (which no watermark covers); one scan per table."""
    now: dict[str, _Mark] = {}
    before: dict[str, _Mark] = {}
    unmarked: list[str] = []
    for source, (table, columns) in _CHECKSUM_COLUMNS.items():
        h = f"hash({', '.join(columns)})"
        limit = int(below[source]) if below and source in below else -1
        row = con.execute(
            f"SELECT coalesce(max(file_id), 0), count(*), coalesce(bit_xor({h}), 0), "
            f"count(*) FILTER (WHERE file_id <= {limit}), coalesce(bit_xor({h}) FILTER (WHERE file_id <= {limit}), 0), "
            f"count(*) FILTER (WHERE file_id IS NULL) "
            f"FROM {table}"
        ).fetchone()
        now[source] = _Mark(int(row[0]), int(row[1]), int(row[2]))
        before[source] = _Mark(limit, int(row[3]), int(row[4]))
        if row[5]:
            unmarked.append(table)
    return before, now, unmarked


# The output tables as the last build left them (row count and a checksum of their component ids): another
# writer of these tables (an older privdom, a restore of schema intermediate) makes the next build a full one.
_OUTPUT_MARKS: dict[str, str] = {
    IDENTIFIERS_TABLE: "bit_xor(CAST(component_id AS UBIGINT))",
    RECORDS_TABLE: "bit_xor(CAST(component_id AS UBIGINT))",
    SHARED_TABLE: "bit_xor(hash(identifier_type, identifier_value, degree, rows))",
}


def _output_marks(con) -> dict[str, _Mark]:
    marks = {}
    for table, checksum in _OUTPUT_MARKS.items():
        rows, value = con.execute(f"SELECT count(*), coalesce({checksum}, 0) FROM {table}").fetchone()
        marks[table] = _Mark(0, int(rows), int(value))
    return marks


def _why_full(con, max_degree: int) -> tuple[str | None, dict[str, _Mark], dict[str, _Mark]]:
    """(why the graph must be built in full or None, the marks recorded at the last build, the staging
    tables' marks now); the marks are empty when the build must be full for want of state."""
    rows = con.execute(
        f"SELECT source, file_id_watermark, row_count, checksum, graph_version, max_degree FROM {STATE_TABLE}"
    ).fetchall()
    if not rows:
        return "no graph state yet", {}, {}
    if {r[4] for r in rows} == {UNLOADED_GRAPH_VERSION}:
        return UNLOADED_REASON, {}, {}
    missing = [t for t in (NODES_CACHE, TUPLES_CACHE, MEMBERSHIPS_CACHE, LINKS_CACHE, *_OUTPUT_MARKS)
               if not table_exists(con, t)]
    if missing:
        return f"{missing[0]} is missing", {}, {}
    recorded = {r[0]: _Mark(int(r[1]), int(r[2]), int(r[3])) for r in rows}
    if sorted(recorded) != sorted([*_CHECKSUM_COLUMNS, *_OUTPUT_MARKS]) or {r[4] for r in rows} != {GRAPH_VERSION}:
        return "the graph state is from another version of privdom", {}, {}
    degrees = {int(r[5]) for r in rows}
    if degrees != {int(max_degree)}:
        return f"identity_max_degree changed ({min(degrees)} → {int(max_degree)})", {}, {}
    for table, mark in _output_marks(con).items():
        if recorded[table] != mark:
            return f"{table} was changed by something else than the identity graph", {}, {}
    before, now, unmarked = _marks(con, {s: recorded[s].file_id for s in _CHECKSUM_COLUMNS})
    if unmarked:
        return f"{unmarked[0]} has rows without a file_id", {}, {}
    for source in _CHECKSUM_COLUMNS:
        if before[source] != recorded[source]:
            return f"{_CHECKSUM_COLUMNS[source][0]} changed in rows the graph has already taken in", {}, {}
    return None, recorded, now


# What graph_state's graph_version says after `privdom unload` took files' rows out of raw: the next build is a
# full one. The checksum cannot see every unload: an identical re-delivery of a tied version is staged only as
# last_file_id (its first delivery's file_id and row stay), so taking it out re-ranks the tie (SPEC §2, "Version
# ties") and changes no row the checksum reads, and its last_file_id falls back to or below the watermark.
UNLOADED_GRAPH_VERSION = -1
UNLOADED_REASON = "files were taken out of raw (privdom unload) since the last build"


def invalidate_after_unload(con) -> None:
    """Make the next build a full one (orchestration/unload.py, in its transaction)."""
    if table_exists(con, STATE_TABLE):
        con.execute(f"UPDATE {STATE_TABLE} SET graph_version = ?", [UNLOADED_GRAPH_VERSION])


def _write_state(con, marks: dict[str, _Mark], max_degree: int, version: int = GRAPH_VERSION) -> None:
    """The staging tables' marks taken when the build began, and the output tables' marks as it leaves them."""
    marks = {**marks, **_output_marks(con)}
    con.execute(f"DELETE FROM {STATE_TABLE}")
    con.executemany(
        f"INSERT INTO {STATE_TABLE} VALUES (?, ?, ?, ?, ?, ?)",
        [(s, m.file_id, m.rows, m.checksum, version, int(max_degree)) for s, m in sorted(marks.items())],
    )


_TEMP_TABLES = ("_idg_event_groups", "_idg_node_ids", "_idg_memberships", "_idg_degree_by_type", "_idg_nodes",
                "_idg_edges", "_idg_labels", "_idg_node_labels", "_idg_day_tuples", "_idg_new_tuples",
                "_idg_touched_occ", "_idg_group_memberships", "_idg_day_nodes", "_idg_changed",
                "_idg_touched_components", "_idg_a", "_idg_ga", "_idg_event_records", "_idg_shared_a",
                "_idg_touched_ids", "_idg_counted", "_idg_records_out", "_idg_records_in",
                "_idg_changed_components", "_idg_changed_groups")


def _drop_temp_tables(con) -> None:
    # temp tables are per connection, but the connection may live on
    for t in _TEMP_TABLES:
        con.execute(f"DROP TABLE IF EXISTS {t}")


# ------------------------------------------------------------------------------------------------ entry point
def build_identity_graph(con, max_degree: int, *, top_n: int = 10, full_refresh: bool = False,
                         staging_stale: bool = False) -> GraphReport:
    """Build the identity graph from the three staging tables and write the int_identity__* tables.

    ``con`` is an open DuckDB connection (TimeZone already set). ``max_degree`` is
    ``settings.identity_max_degree``: an identifier co-occurring with more than that many distinct values of
    another identifier type is shared.

    The graph is kept as state (schema ``identity_state``, tables ``graph_*``). When that state was built
    with the same version and ``max_degree`` and the staging rows it took in are unchanged (row count and
    checksum up to each table's newest file_id then), only the rows of newer files are taken in and only the
    components they touch are computed again (:func:`_build_incremental`); otherwise, or with
    ``full_refresh``, everything is built from staging. Both give the same tables. ``staging_stale``: staging
    was not rebuilt since `privdom unload` (the graph asset materialized alone, or after a failed dbt_staging):
    a full build on it keeps the unload's mark, for the build after staging's rebuild is full too.
    """
    if max_degree < 0:
        raise ValueError("max_degree must not be negative")
    started = time.perf_counter()
    if not table_exists(con, STG_CHANNEL_EVENTS):  # a table or a view
        raise RuntimeError(f"{STG_CHANNEL_EVENTS} does not exist: build the dbt staging models first")
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    # One transaction: the tables change together or not at all, and every statement reads the same snapshot
    # of staging (channel events are grouped in the first statement and joined back to their groups in the
    # records statement).
    try:
        with transaction(con):
            _create_state_tables(con)
            reason, recorded, marks = (
                ("a full refresh was asked for", {}, {}) if full_refresh else _why_full(con, max_degree)
            )
            if reason is None:
                stats = _build_incremental(con, max_degree, {s: m.file_id for s, m in recorded.items()})
                _write_state(con, marks, max_degree)
                _log_build(con, "incremental", None)
                return _report(con, max_degree, top_n, started, "incremental", None, stats)
    except _Inconsistent as exc:
        reason = f"the incremental update did not fit the stored graph ({exc})"
    finally:
        _drop_temp_tables(con)
    try:
        with transaction(con):
            _create_state_tables(con)
            _, marks, _ = _marks(con, None)
            _build_full(con, max_degree)
            keep = staging_stale and reason == UNLOADED_REASON
            _write_state(con, marks, max_degree, UNLOADED_GRAPH_VERSION if keep else GRAPH_VERSION)
            _log_build(con, "full", reason)
            return _report(con, max_degree, top_n, started, "full", reason, {})
    finally:
        _drop_temp_tables(con)


def _report(con, max_degree: int, top_n: int, started: float, mode: str, reason: str | None,
            stats: dict[str, int]) -> GraphReport:
    counts = con.execute(
        f"""
        SELECT (SELECT count(*) FILTER (WHERE NOT is_pseudo) FROM {NODES_CACHE}),
               (SELECT count(*) FILTER (WHERE is_pseudo) FROM {NODES_CACHE}),
               (SELECT count(*) FROM {LINKS_CACHE}),
               (SELECT count(DISTINCT component_id) FROM {RECORDS_TABLE}),
               (SELECT count(*) FROM {RECORDS_TABLE}),
               (SELECT count(*) FROM {SHARED_TABLE})
        """
    ).fetchone()
    top = con.execute(
        f"SELECT identifier_type, {mask_sql('identifier_type', 'identifier_value')}, degree "
        f"FROM {SHARED_TABLE} ORDER BY degree DESC, identifier_type, identifier_value LIMIT {int(top_n)}"
    ).fetchall()
    return GraphReport(
        identifiers=int(counts[0]),
        pseudo_nodes=int(counts[1]),
        links=int(counts[2]),
        components=int(counts[3]),
        records=int(counts[4]),
        shared_identifiers=int(counts[5]),
        seconds=time.perf_counter() - started,
        max_degree=max_degree,
        top_shared=[{"identifier_type": t, "masked_value": v, "degree": int(d)} for t, v, d in top],
        mode=mode,
        full_build_reason=reason,
        touched_components=stats.get("touched_components"),
        relabelled_nodes=stats.get("relabelled_nodes"),
        records_written=stats.get("records_written"),
    )


# ------------------------------------------------------------------------------------------------ full build
def _build_full(con, max_degree: int) -> None:
    # 0. Channel events' groups: one per distinct tuple of identifiers (at 1M customers 9.8M events have 3.9M
    #    tuples). Events with the same identifiers have the same memberships, the same pairs for the degrees,
    #    the same star links and the same own component, so the graph works on the tuples, and the records
    #    statement gives each event its tuple's component (joined back on the five columns, NULL matching
    #    NULL). gid < 0 (_tuple_gid_sql). An event without any identifier is in no group and has no record.
    #    (Per event instead, at 1M: the graph 40 s, per tuple 32-33 s; docs/performance.md, "Identity".)
    cols = ", ".join(IDENTIFIER_COLUMNS)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_event_groups AS
        SELECT {_tuple_gid_sql()} AS gid, {cols}
        FROM {STG_CHANNEL_EVENTS}
        WHERE {_any_not_null(IDENTIFIER_COLUMNS)}
        GROUP BY {cols}
        """
    )
    # 1. Nodes: identifiers, then pseudo-nodes, read straight from staging. A pseudo-node exists for a group
    #    with at least one identifier (an order, a referral side) and for both ends of a converted referral's
    #    link to its order. Ids are node_id_sql: everything after this works on integers (joins and DISTINCTs
    #    on strings cost 2-3x more), and the memberships compute them from the values without a join.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_node_ids AS
        WITH all_nodes AS (
            SELECT identifier_type AS node_type, identifier_value AS node_value, FALSE AS is_pseudo
            FROM ({_event_group_occurrences()})
            UNION
            SELECT identifier_type, identifier_value, FALSE
            FROM ({occurrences_sql(sources=("orders", "referrals"))})
            UNION
            SELECT 'order', order_id, TRUE FROM {STG_ORDER_VERSIONS} WHERE {_any_not_null(IDENTIFIER_COLUMNS)}
            UNION
            SELECT 'referral_referrer', referral_id, TRUE FROM {STG_REFERRAL_VERSIONS} WHERE {_any_not_null(REFERRER_COLUMNS)}
            UNION
            SELECT 'referral_referee', referral_id, TRUE FROM {STG_REFERRAL_VERSIONS} WHERE {_any_not_null(REFEREE_COLUMNS)}
            UNION
            SELECT 'referral_referee', referral_id, TRUE FROM {STG_REFERRAL_VERSIONS}
            WHERE status = 'converted' AND order_id IS NOT NULL
            UNION
            SELECT 'order', order_id, TRUE FROM {STG_REFERRAL_VERSIONS}
            WHERE status = 'converted' AND order_id IS NOT NULL
        )
        SELECT {node_id_sql('node_type', 'node_value')} AS node_id, node_type, node_value, is_pseudo
        FROM all_nodes
        """
    )
    _check_unique(con, "_idg_node_ids", "node_id", "nodes")
    _check_unique(con, "_idg_event_groups", "gid", "channel-event tuples")
    # 2. Memberships: each occurrence of an identifier in a staged row (occurrences_sql) as integers, gid being
    #    the group: an order or a referral side is its pseudo-node (gid > 0), and its versions collapse into one
    #    membership per identifier; channel events are their tuple's group (gid < 0, one value per identifier
    #    column, one version, so its occurrences are its memberships already).
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_memberships AS
        SELECT gid, type_ord, 1 AS version_rank, {node_id_sql('identifier_type', 'identifier_value')} AS nid
        FROM ({_event_group_occurrences()})
        UNION ALL
        {_record_memberships_sql(occurrences_sql(sources=("orders", "referrals")))}
        """
    )
    # 3. Degrees: distinct co-occurring values of each other type, through the groups.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_degree_by_type AS {_degree_by_type_sql('_idg_memberships')}
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_nodes AS
        SELECT n.node_id, n.node_type, n.node_value, n.is_pseudo,
               coalesce(d.degree, 0) AS degree, coalesce(d.degree, 0) > {int(max_degree)} AS is_shared
        FROM _idg_node_ids n
        LEFT JOIN (SELECT nid, max(n) AS degree FROM _idg_degree_by_type GROUP BY nid) d ON d.nid = n.node_id
        """
    )
    # 4. Links (undirected, a < b), shared identifiers' memberships dropped.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_edges AS
        {_links_sql('_idg_memberships', '_idg_nodes', conversions_where='TRUE')}
        """
    )
    # 5. Connected components.
    _connected_components(con)
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _idg_node_labels AS
        SELECT n.node_id, n.node_type, n.node_value, n.is_pseudo, n.degree, n.is_shared,
               coalesce(l.p, n.node_id) AS component_id
        FROM _idg_nodes n LEFT JOIN _idg_labels l ON l.n = n.node_id
        """
    )
    # 6. Outputs.
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {IDENTIFIERS_TABLE} AS
        SELECT node_type AS identifier_type, node_value AS identifier_value, component_id, degree, is_shared
        FROM _idg_node_labels WHERE NOT is_pseudo
        ORDER BY identifier_type, identifier_value
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {RECORDS_TABLE} AS
        {_records_sql(memberships='_idg_memberships', labels='_idg_node_labels', groups=None,
                      events=f'''SELECT e.event_id, g.gid FROM {STG_CHANNEL_EVENTS} e
                                 JOIN _idg_event_groups g ON {_same_tuple('g', 'e')}''')}
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {SHARED_TABLE} AS
        {_shared_sql(shared=f"SELECT node_id, node_type, node_value, degree FROM _idg_node_labels WHERE is_shared",
                     degree_by_type='_idg_degree_by_type', where=None)}
        """
    )
    # 7. The state an incremental build starts from (same rows as an incremental build's).
    for table, select in (
        (NODES_CACHE, "SELECT node_id, node_type, node_value, is_pseudo, degree, is_shared, component_id FROM _idg_node_labels"),
        (TUPLES_CACHE, f"SELECT gid, {cols} FROM _idg_event_groups"),
        (MEMBERSHIPS_CACHE, "SELECT gid, type_ord, version_rank, nid FROM _idg_memberships"),
        (LINKS_CACHE, "SELECT a, b FROM _idg_edges"),
    ):
        con.execute(f"CREATE OR REPLACE TABLE {table} AS {select}")


def _check_unique(con, table: str, column: str, what: str) -> None:
    (dupes,) = con.execute(f"SELECT count(*) - count(DISTINCT {column}) FROM {table}").fetchone()
    if dupes:
        raise IdCollision(_collision_message(dupes, what, "another"))


def _collision_message(n: int, what: str, other: str) -> str:
    return (
        f"{n} of the identity graph's {what} share a 63-bit id with {other} (an MD5 prefix collision, odds "
        "about 1 in 10^6 at 4M nodes): the graph cannot tell them apart, so it stops rather than merge two "
        "customers, and nothing was written. Please report it."
    )


def _record_memberships_sql(occurrences: str) -> str:
    """Orders' and referral sides' memberships from their occurrences: one per (group, identifier), with the
    smallest column position and version rank over the group's versions."""
    pseudo = _PSEUDO_OF_ROLE.format(role="o.role")
    return (
        f"SELECT {node_id_sql(pseudo, 'o.record_id')} AS gid, min(o.type_ord) AS type_ord, "
        f"min(o.version_rank) AS version_rank, {node_id_sql('o.identifier_type', 'o.identifier_value')} AS nid "
        f"FROM ({occurrences}) o GROUP BY 1, 4"
    )


def _links_sql(memberships: str, nodes: str, *, conversions_where: str) -> str:
    """Links (a < b) of the groups in ``memberships``, with ``nodes`` saying which identifiers are shared: a
    channel event's star (each identifier to the first non-shared one in column order), an order's or
    referral side's non-shared identifiers to its pseudo-node, and each converted referral's referee
    pseudo-node to its order's (those for which ``conversions_where`` holds, on columns re, o)."""
    return f"""
        WITH member AS (
            SELECT m.gid, m.nid, m.type_ord FROM {memberships} m
            WHERE NOT EXISTS (SELECT 1 FROM {nodes} s WHERE s.node_id = m.nid AND s.is_shared)
        ),
        ev AS (SELECT gid, nid, type_ord FROM member WHERE gid < 0),
        centre AS (
            SELECT gid, arg_min(nid, type_ord) AS centre FROM ev GROUP BY gid HAVING count(*) > 1
        ),
        conversions AS ({_conversions_sql()}),
        raw_links AS (
            SELECT ev.nid AS x, c.centre AS y FROM ev JOIN centre c USING (gid) WHERE ev.nid <> c.centre
            UNION ALL
            SELECT nid, gid FROM member WHERE gid > 0
            UNION ALL
            SELECT re, o FROM conversions WHERE {conversions_where}
        )
        SELECT DISTINCT least(x, y) AS a, greatest(x, y) AS b FROM raw_links
    """


def _records_sql(*, memberships: str, labels: str, groups: str | None, events: str) -> str:
    """Records (source, record_id, role, component_id) of the groups: channel events from ``events``
    (event_id, gid), orders and referral sides from their pseudo-nodes; ``groups`` (a relation with gid)
    limits the groups, None for all."""
    only = f"WHERE m.gid IN (SELECT gid FROM {groups})" if groups else ""
    pseudo_role = _ROLE_OF_PSEUDO.format(t="pl.node_type")
    return f"""
        WITH labelled AS (
            SELECT m.gid, m.version_rank, m.type_ord, nl.component_id, nl.is_shared
            FROM {memberships} m JOIN {labels} nl ON nl.node_id = m.nid
            {only}
        ),
        -- a record's own choice: its first non-shared identifier, else its first shared one
        -- (current version first, then column order)
        own AS (
            SELECT gid,
                   arg_min(component_id, CAST(is_shared AS INTEGER) * 1000000 + version_rank * 10 + type_ord)
                       AS own_component
            FROM labelled GROUP BY gid
        ),
        pseudo AS (
            SELECT o.gid, o.own_component, pl.node_type, pl.node_value, pl.component_id
            FROM own o JOIN {labels} pl ON pl.node_id = o.gid
        ),
        components_with_identifiers AS (
            SELECT DISTINCT component_id FROM {labels}
            WHERE NOT is_pseudo AND NOT is_shared AND component_id IN (SELECT component_id FROM pseudo)
        ),
        -- a component of pseudo-nodes alone (every id on both sides shared): a converted referee in it is the
        -- buyer of its own order, the order's own choice (its versions naming two orders, the smaller order id's;
        -- only its own orders: another referral's versions may put a second order in the component). An update
        -- recomputes every group of a touched component, so the order is among the groups whenever its
        -- referee is. Only referees of such components, and their orders whose own choice is another component
        -- (an order with a buyer id of its own is in that id's component), are looked at: a filter, not an
        -- aggregate over every order or conversion.
        referees_without_identifiers AS (
            SELECT gid, node_value, component_id FROM pseudo
            WHERE node_type = 'referral_referee'
              AND component_id NOT IN (SELECT component_id FROM components_with_identifiers)
        ),
        buyer_of_referee AS (
            SELECT r.gid, arg_min(o.own_component, o.node_value) AS buyer
            FROM referees_without_identifiers r
            JOIN ({_conversions_sql("SELECT node_value FROM referees_without_identifiers")}) c ON c.re = r.gid
            JOIN pseudo o ON o.gid = c.o AND o.component_id = r.component_id
            WHERE o.node_type = 'order' AND o.own_component <> o.component_id
            GROUP BY r.gid
        )
        SELECT 'channel_events' AS source, e.event_id AS record_id, 'person' AS role, o.own_component AS component_id
        FROM ({events}) e
        JOIN own o ON o.gid = e.gid
        UNION ALL
        -- orders and referral sides follow their pseudo-node when its component holds a customer's identifier
        -- (a converted referral's referee with shared ids only is the buyer of its order)
        SELECT CASE pl.node_type WHEN 'order' THEN 'orders' ELSE 'referrals' END,
               pl.node_value,
               {pseudo_role},
               coalesce(c.component_id, b.buyer, pl.own_component)
        FROM pseudo pl
        LEFT JOIN components_with_identifiers c ON c.component_id = pl.component_id
        LEFT JOIN buyer_of_referee b ON b.gid = pl.gid
    """


def _shared_sql(*, shared: str, degree_by_type: str, where: Callable[[str, str, str, str], str] | None) -> str:
    """Rows of int_identity__shared_identifiers for the shared nodes of ``shared`` (node_id, node_type,
    node_value, degree), with their degrees by type from ``degree_by_type`` (nid, other_type, n);
    ``where`` narrows the occurrences scanned to count their rows (occurrences_sql)."""
    return f"""
        WITH shared AS (
            SELECT node_id, node_type AS identifier_type, node_value AS identifier_value, degree FROM ({shared})
        ),
        row_counts AS (
            SELECT o.identifier_type, o.identifier_value,
                   count(DISTINCT (o.source, o.record_id, o.version_rank)) AS rows
            FROM ({occurrences_sql(where=where)}) o JOIN shared s USING (identifier_type, identifier_value)
            GROUP BY ALL
        ),
        by_type AS (
            SELECT d.nid, string_agg(d.other_type || ':' || d.n, ',' ORDER BY d.n DESC, d.other_type) AS degree_by_type
            FROM {degree_by_type} d SEMI JOIN shared s ON s.node_id = d.nid
            GROUP BY d.nid
        )
        SELECT s.identifier_type, s.identifier_value, s.degree, d.degree_by_type, r.rows
        FROM shared s
        JOIN by_type d ON d.nid = s.node_id
        JOIN row_counts r USING (identifier_type, identifier_value)
        ORDER BY s.degree DESC, s.identifier_type, s.identifier_value
    """


# ------------------------------------------------------------------------------------------------ incremental
def _changed_records_sql(table: str, key: str, watermark: int) -> str:
    """The ids (column ``key``) of the orders or referrals of ``table`` (a versions table) whose versions changed
    since the build that took in files up to ``watermark``: a version of a newer file, or a version delivered
    again since, identical, that is tied on updated_at with another of the record's versions. Staging keeps
    such a re-delivery once, at its first delivery (file_id: the checksum's rows stay as they were), and dates
    it by its latest (last_file_id), which breaks the tie (SPEC §2, docs/DECISIONS.md "Version ties"): the
    ranks change, and a record whose identifiers are all shared takes its current version's first one. A
    re-delivery without a tie changes no rank: the daily re-deliveries of a window touch only the records
    with such ties, and leave the rows the graph has taken in (file_id, checksum) as they were."""
    wm = int(watermark)
    return (
        f"SELECT {key} FROM {table} WHERE file_id > {wm} "
        f"UNION "
        f"SELECT v.{key} FROM {table} v "
        f"JOIN (SELECT DISTINCT {key}, updated_at FROM {table} WHERE last_file_id > {wm} AND file_id <= {wm}) r "
        f"USING ({key}, updated_at) "
        f"GROUP BY v.{key}, v.updated_at HAVING count(*) > 1"
    )


def _build_incremental(con, max_degree: int, watermark: dict[str, int]) -> dict[str, int]:
    """Take in the staged rows of files newer than ``watermark`` (per source) and recompute only what they touch.

    What can change: new channel-event tuples and orders / referrals with a new version (or re-ranked by an
    identical re-delivery: _changed_records_sql) are *changed groups* (their memberships are written again);
    their identifiers' degrees are counted again (degrees only grow, so an identifier can only become
    shared); every component holding a member of a changed group (or a new node) is *touched*, and its nodes
    are *affected*. Links only come from groups, so a link either lies inside one untouched component
    (unchanged) or between affected nodes: the affected nodes' components are computed
    again from the links of their groups, every other component keeps its nodes and its id (the smallest
    node id, as in a full build). The records of every group with an affected member are written again, and
    the day's new channel events get theirs. A link found between an affected and an unaffected node means the
    stored state does not fit: _Inconsistent, and the caller builds in full.
    """
    cols = ", ".join(IDENTIFIER_COLUMNS)
    wm_events, wm_orders, wm_referrals = (int(watermark[s]) for s in ("channel_events", "orders", "referrals"))
    # 1. The day's channel-event tuples, and those the graph has not seen.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_day_tuples AS
        SELECT {_tuple_gid_sql()} AS gid, {cols}
        FROM {STG_CHANNEL_EVENTS}
        WHERE file_id > {wm_events} AND ({_any_not_null(IDENTIFIER_COLUMNS)})
        GROUP BY {cols}
        """
    )
    _check_unique(con, "_idg_day_tuples", "gid", "channel-event tuples")
    (clashes,) = con.execute(
        f"SELECT count(*) FROM _idg_day_tuples d JOIN {TUPLES_CACHE} t USING (gid) WHERE NOT ({_same_tuple('d', 't')})"
    ).fetchone()
    if clashes:
        raise IdCollision(_collision_message(clashes, "new channel-event tuples", "a stored tuple"))
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _idg_new_tuples AS SELECT * FROM _idg_day_tuples ANTI JOIN {TUPLES_CACHE} USING (gid)"
    )
    # 2. Orders and referrals with a new version, or whose versions' ranks an identical re-delivery changed:
    #    every occurrence of all their versions.
    changed_orders = _changed_records_sql(STG_ORDER_VERSIONS, "order_id", wm_orders)
    changed_referrals = _changed_records_sql(STG_REFERRAL_VERSIONS, "referral_id", wm_referrals)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _idg_touched_ids AS "
        f"SELECT DISTINCT 'buyer' AS role, order_id AS record_id FROM ({changed_orders}) "
        f"UNION ALL "
        f"SELECT DISTINCT 'referral', referral_id FROM ({changed_referrals})"
    )

    def touched(role: str, typ: str, record_id: str, column: str) -> str:
        kind = "buyer" if role == "buyer" else "referral"
        return f"{record_id} IN (SELECT record_id FROM _idg_touched_ids WHERE role = '{kind}')"

    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _idg_touched_occ AS "
        f"{occurrences_sql(sources=('orders', 'referrals'), where=touched)}"
    )
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE _idg_group_memberships AS {_record_memberships_sql('SELECT * FROM _idg_touched_occ')}"
    )
    # 3. Nodes the day names (identifiers, its groups' pseudo-nodes, both ends of its conversions); the new
    #    ones join the state as their own component.
    conversions = (
        f"FROM {STG_REFERRAL_VERSIONS} WHERE status = 'converted' AND order_id IS NOT NULL "
        "AND referral_id IN (SELECT record_id FROM _idg_touched_ids WHERE role = 'referral')"
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_day_nodes AS
        SELECT {node_id_sql('node_type', 'node_value')} AS node_id, node_type, node_value, is_pseudo
        FROM (
            SELECT identifier_type AS node_type, identifier_value AS node_value, FALSE AS is_pseudo
            FROM ({_event_group_occurrences('_idg_new_tuples')})
            UNION
            SELECT identifier_type, identifier_value, FALSE FROM _idg_touched_occ
            UNION
            SELECT {_PSEUDO_OF_ROLE.format(role='role')}, record_id, TRUE FROM _idg_touched_occ
            UNION
            SELECT 'referral_referee', referral_id, TRUE {conversions}
            UNION
            SELECT 'order', order_id, TRUE {conversions}
        )
        """
    )
    _check_unique(con, "_idg_day_nodes", "node_id", "nodes")
    (clashes,) = con.execute(
        f"SELECT count(*) FROM _idg_day_nodes d JOIN {NODES_CACHE} n USING (node_id) "
        "WHERE n.node_type <> d.node_type OR n.node_value <> d.node_value"
    ).fetchone()
    if clashes:
        raise IdCollision(_collision_message(clashes, "new nodes", "a stored node"))
    con.execute(
        f"""
        INSERT INTO {NODES_CACHE}
        SELECT node_id, node_type, node_value, is_pseudo, 0, FALSE, node_id
        FROM _idg_day_nodes ANTI JOIN {NODES_CACHE} USING (node_id)
        """
    )
    # 4. The changed groups' memberships and tuples replace theirs in the state.
    con.execute(f"DELETE FROM {MEMBERSHIPS_CACHE} WHERE gid IN (SELECT DISTINCT gid FROM _idg_group_memberships)")
    con.execute(
        f"""
        INSERT INTO {MEMBERSHIPS_CACHE}
        SELECT gid, type_ord, 1, {node_id_sql('identifier_type', 'identifier_value')}
        FROM ({_event_group_occurrences('_idg_new_tuples')})
        UNION ALL
        SELECT gid, type_ord, version_rank, nid FROM _idg_group_memberships
        """
    )
    con.execute(f"INSERT INTO {TUPLES_CACHE} SELECT gid, {cols} FROM _idg_new_tuples")
    # 5. Degrees of the changed groups' members, and of the members of the groups across a conversion from a
    #    changed group (a referee side's new ids are links of its order's buyer ids, and the other way round),
    #    over all their groups (was_shared: shared before this build; degrees only grow, so such a node stays
    #    shared, its own component). The degrees by type are also counted for the shared identifiers of the
    #    day's known tuples, for their rows of the shared table.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _idg_changed_groups AS
        SELECT gid FROM _idg_new_tuples UNION SELECT gid FROM _idg_group_memberships
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_changed AS
        WITH conversions AS ({_conversions_sql()}),
        groups AS (
            SELECT gid FROM _idg_changed_groups
            UNION
            SELECT o FROM conversions WHERE re IN (SELECT gid FROM _idg_changed_groups)
            UNION
            SELECT re FROM conversions WHERE o IN (SELECT gid FROM _idg_changed_groups)
        )
        SELECT m.nid, any_value(n.is_shared) AS was_shared
        FROM {MEMBERSHIPS_CACHE} m JOIN {NODES_CACHE} n ON n.node_id = m.nid
        WHERE m.gid IN (SELECT gid FROM groups)
        GROUP BY m.nid
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_counted AS
        SELECT nid FROM _idg_changed
        UNION
        SELECT m.nid FROM {MEMBERSHIPS_CACHE} m JOIN {NODES_CACHE} n ON n.node_id = m.nid
        WHERE m.gid IN (SELECT gid FROM _idg_day_tuples) AND n.is_shared
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_degree_by_type AS
        {_degree_by_type_sql(MEMBERSHIPS_CACHE, 'SELECT nid FROM _idg_counted')}
        """
    )
    con.execute(
        f"""
        UPDATE {NODES_CACHE} SET degree = d.degree, is_shared = d.degree > {int(max_degree)}
        FROM (
            SELECT c.nid, coalesce(max(b.n), 0) AS degree
            FROM _idg_changed c LEFT JOIN _idg_degree_by_type b USING (nid) GROUP BY c.nid
        ) d
        WHERE {NODES_CACHE}.node_id = d.nid
        """
    )
    # 6. Touched components (their ids before this update; a new node is its own) and their nodes. Seeds: the
    #    changed groups' members (new nodes included) but those that were shared already (they keep no links
    #    and stay their own component, so nothing that uses them changes but their degree), and the day's
    #    pseudo-nodes (changed groups and both ends of new conversions). Every identifier of the day is a
    #    member of a changed group or of a known tuple (unchanged).
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_touched_components AS
        SELECT DISTINCT component_id FROM {NODES_CACHE}
        WHERE node_id IN (SELECT nid FROM _idg_changed WHERE NOT was_shared
                          UNION ALL SELECT node_id FROM _idg_day_nodes WHERE is_pseudo)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_a AS
        SELECT node_id FROM {NODES_CACHE} WHERE component_id IN (SELECT component_id FROM _idg_touched_components)
        """
    )
    # groups with an affected member, or whose pseudo-node is affected
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_ga AS
        SELECT DISTINCT gid FROM {MEMBERSHIPS_CACHE}
        WHERE nid IN (SELECT node_id FROM _idg_a) OR gid IN (SELECT node_id FROM _idg_a)
        """
    )
    # 7. Their links, and the stored links they replace.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_edges AS
        {_links_sql(f'(SELECT * FROM {MEMBERSHIPS_CACHE} WHERE gid IN (SELECT gid FROM _idg_ga))', NODES_CACHE,
                    conversions_where='re IN (SELECT node_id FROM _idg_a) OR o IN (SELECT node_id FROM _idg_a)')}
        """
    )
    (crossing,) = con.execute(
        f"""
        SELECT (SELECT count(*) FROM _idg_edges
                WHERE (a IN (SELECT node_id FROM _idg_a)) <> (b IN (SELECT node_id FROM _idg_a)))
             + (SELECT count(*) FROM {LINKS_CACHE}
                WHERE (a IN (SELECT node_id FROM _idg_a)) <> (b IN (SELECT node_id FROM _idg_a)))
        """
    ).fetchone()
    if crossing:
        raise _Inconsistent(f"{crossing} links between touched and untouched components")
    con.execute("DELETE FROM _idg_edges WHERE a NOT IN (SELECT node_id FROM _idg_a)")
    con.execute(f"DELETE FROM {LINKS_CACHE} WHERE a IN (SELECT node_id FROM _idg_a)")
    con.execute(f"INSERT INTO {LINKS_CACHE} SELECT a, b FROM _idg_edges")
    # 8. The affected nodes' components.
    _connected_components(con)
    con.execute(
        f"""
        UPDATE {NODES_CACHE} SET component_id = x.component_id
        FROM (SELECT a.node_id, coalesce(l.p, a.node_id) AS component_id
              FROM _idg_a a LEFT JOIN _idg_labels l ON l.n = a.node_id) x
        WHERE {NODES_CACHE}.node_id = x.node_id AND {NODES_CACHE}.component_id <> x.component_id
        """
    )
    # 9. Outputs: the affected identifiers, the records of the groups with an affected member and of the day's
    #    channel events, the shared identifiers that are affected or in a day's event (their row counts).
    con.execute(
        f"""
        DELETE FROM {IDENTIFIERS_TABLE} AS i USING (
            SELECT n.node_type, n.node_value FROM {NODES_CACHE} n
            WHERE NOT n.is_pseudo
              AND n.node_id IN (SELECT node_id FROM _idg_a UNION SELECT nid FROM _idg_changed)
        ) AS x
        WHERE i.identifier_type = x.node_type AND i.identifier_value = x.node_value
        """
    )
    con.execute(
        f"""
        INSERT INTO {IDENTIFIERS_TABLE}
        SELECT node_type, node_value, component_id, degree, is_shared
        FROM {NODES_CACHE}
        WHERE NOT is_pseudo AND node_id IN (SELECT node_id FROM _idg_a UNION SELECT nid FROM _idg_changed)
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_event_records AS
        SELECT e.event_id, g.gid
        FROM {STG_CHANNEL_EVENTS} e
        JOIN (SELECT t.* FROM {TUPLES_CACHE} t SEMI JOIN _idg_ga USING (gid)) g ON {_same_tuple('g', 'e')}
        UNION
        SELECT e.event_id, g.gid
        FROM {STG_CHANNEL_EVENTS} e
        JOIN _idg_day_tuples g ON {_same_tuple('g', 'e')}
        WHERE e.file_id > {wm_events}
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_ga AS
        SELECT gid FROM _idg_ga UNION SELECT DISTINCT gid FROM _idg_event_records
        """
    )
    pseudo_role = _ROLE_OF_PSEUDO.format(t="n.node_type")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_records_out AS
        SELECT 'channel_events' AS source, event_id AS record_id, 'person' AS role FROM _idg_event_records
        UNION ALL
        SELECT CASE n.node_type WHEN 'order' THEN 'orders' ELSE 'referrals' END, n.node_value, {pseudo_role}
        FROM {NODES_CACHE} n SEMI JOIN _idg_ga g ON g.gid = n.node_id
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_records_in AS
        {_records_sql(memberships=MEMBERSHIPS_CACHE, labels=NODES_CACHE, groups='_idg_ga',
                      events='SELECT event_id, gid FROM _idg_event_records')}
        """
    )
    # the change log's entry (see _log_build): the components of the records written again, as they were and
    # as they are
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_changed_components AS
        SELECT r.component_id FROM {RECORDS_TABLE} r
        SEMI JOIN _idg_records_out x ON r.source = x.source AND r.record_id = x.record_id AND r.role = x.role
        UNION
        SELECT component_id FROM _idg_records_in
        """
    )
    con.execute(
        f"""
        DELETE FROM {RECORDS_TABLE} AS r USING _idg_records_out AS x
        WHERE r.source = x.source AND r.record_id = x.record_id AND r.role = x.role
        """
    )
    con.execute(f"INSERT INTO {RECORDS_TABLE} SELECT * FROM _idg_records_in")
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_shared_a AS
        SELECT n.node_id, n.node_type, n.node_value, n.degree, n.is_shared
        FROM {NODES_CACHE} n
        WHERE NOT n.is_pseudo
          -- the affected and changed nodes, and the shared identifiers of the day's known tuples (a day's event
          -- of a known tuple adds a row to its identifiers without changing the graph)
          AND n.node_id IN (SELECT node_id FROM _idg_a UNION SELECT nid FROM _idg_counted)
        """
    )
    con.execute(
        f"""
        DELETE FROM {SHARED_TABLE} AS s USING _idg_shared_a AS x
        WHERE s.identifier_type = x.node_type AND s.identifier_value = x.node_value
        """
    )
    con.execute("DELETE FROM _idg_shared_a WHERE NOT is_shared")
    # a node shared now is shared because of a changed group (then in _idg_changed) or was shared already and
    # in A or a known tuple of the day: its degrees by type are those of step 5, else counted here
    con.execute(
        f"""
        INSERT INTO _idg_degree_by_type
        {_degree_by_type_sql(MEMBERSHIPS_CACHE, 'SELECT node_id FROM _idg_shared_a EXCEPT SELECT nid FROM _idg_counted')}
        """
    )

    def shared_values(role: str, typ: str, record_id: str, column: str) -> str:
        return f"{column} IN (SELECT node_value FROM _idg_shared_a WHERE node_type = '{typ}')"

    con.execute(
        f"""
        INSERT INTO {SHARED_TABLE}
        {_shared_sql(shared='SELECT node_id, node_type, node_value, degree FROM _idg_shared_a',
                     degree_by_type='_idg_degree_by_type', where=shared_values)}
        """
    )
    stats = con.execute(
        "SELECT (SELECT count(*) FROM _idg_touched_components), (SELECT count(*) FROM _idg_a), "
        "(SELECT count(*) FROM _idg_event_records) + (SELECT count(*) FROM _idg_ga WHERE gid > 0)"
    ).fetchone()
    return {"touched_components": int(stats[0]), "relabelled_nodes": int(stats[1]), "records_written": int(stats[2])}
