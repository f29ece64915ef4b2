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
* Degree of an identifier: per other identifier type, the number of distinct values it shares a group with;
  ``degree`` is the largest. Above ``max_degree`` it is *shared*: it keeps no links (a singleton component).
* Components: SciPy's connected components over the links as integer node ids (see
  :func:`_connected_components`); the component id is the smallest node id of the component, node ids being
  the rank of ``(node_type, node_value)``: deterministic for given data, meaningful inside one run only.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from orchestration.contract import IDENTIFIER_COLUMNS, REFEREE_COLUMNS, REFERRER_COLUMNS
from orchestration.warehouse import transaction

SCHEMA = "intermediate"
IDENTIFIERS_TABLE = f"{SCHEMA}.int_identity__identifiers"
RECORDS_TABLE = f"{SCHEMA}.int_identity__records"
SHARED_TABLE = f"{SCHEMA}.int_identity__shared_identifiers"

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


def _event_group_occurrences() -> str:
    """One row per (channel events' group of ``_idg_event_groups``, identifier column that is not NULL): gid,
    type_ord, identifier_type, identifier_value (the columns of occurrences_sql that the graph reads)."""
    return "\nUNION ALL\n".join(
        f"SELECT gid, {TYPE_ORDER[col]} AS type_ord, '{col}' AS identifier_type, {col} AS identifier_value "
        f"FROM _idg_event_groups WHERE {col} IS NOT NULL"
        for col in IDENTIFIER_COLUMNS
    )


def _any_not_null(columns: tuple[str, ...]) -> str:
    return " OR ".join(f"{c} IS NOT NULL" for c in columns)


def _connected_components(con) -> None:
    """Connected components of ``_idg_edges(a, b)`` (integer node ids) into ``_idg_labels(n, p)``.

    The links leave the engine once, as two integer arrays (``fetchnumpy``, no per-row Python); SciPy's
    ``connected_components`` labels them in compiled code (a search over a sparse adjacency matrix, linear in
    nodes + links whatever the graph's diameter), and every node's label ``p`` is the smallest node id of its
    component.

    It replaced min-label propagation in SQL (all links joined with all labels, once per round, ~log(diameter)
    rounds), which at 1M customers took most of the graph's time (docs/performance.md, "Identity").
    """
    import numpy as np
    import pyarrow as pa
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    edges = con.execute("SELECT a, b FROM _idg_edges").fetchnumpy()
    a = np.asarray(edges["a"], dtype=np.int64)
    b = np.asarray(edges["b"], dtype=np.int64)
    del edges
    size = int(max(a.max(initial=0), b.max(initial=0))) + 1
    graph = csr_matrix((np.ones(len(a), dtype=np.int8), (a, b)), shape=(size, size))
    del a, b
    _, component = connected_components(graph, directed=False, return_labels=True)
    del graph
    _, smallest = np.unique(component, return_index=True)  # first index of each label: its smallest node
    labels = pa.table({"n": np.arange(size, dtype=np.int64), "p": smallest[component].astype(np.int64)})
    con.register("_idg_labels_arrow", labels)
    try:
        # every id up to the largest linked one (ids without links are their own component, as below)
        con.execute("CREATE OR REPLACE TEMP TABLE _idg_labels AS SELECT n, p FROM _idg_labels_arrow")
    finally:
        con.unregister("_idg_labels_arrow")


def build_identity_graph(
    con, max_degree: int, *, top_n: int = 10
) -> GraphReport:
    """Build the identity graph from the three staging tables and write the int_identity__* tables.

    ``con`` is an open DuckDB connection (TimeZone already set). ``max_degree`` is
    ``settings.identity_max_degree``: an identifier co-occurring with more than that many distinct values of
    another identifier type is shared.
    """
    if max_degree < 0:
        raise ValueError("max_degree must not be negative")
    started = time.perf_counter()
    kind = con.execute(
        "SELECT table_type FROM information_schema.tables "
        "WHERE table_catalog = current_database() AND table_schema = ? AND table_name = ?",
        STG_CHANNEL_EVENTS.split("."),
    ).fetchone()
    if kind is None:
        raise RuntimeError(f"{STG_CHANNEL_EVENTS} does not exist: build the dbt staging models first")
    con.execute(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}")
    # One transaction: the three tables change together or not at all, and every statement reads the same
    # snapshot of staging (channel events are grouped in the first statement and joined back to their groups
    # in the records statement).
    with transaction(con):
        return _build(con, max_degree, top_n, started)


def _build(con, max_degree: int, top_n: int, started: float) -> GraphReport:
    # 0. Channel events' groups: one per distinct tuple of identifiers (at 1M customers 9.8M events have 3.9M
    #    tuples). Events with the same identifiers have the same memberships, the same pairs for the degrees,
    #    the same star links and the same own component, so the graph works on the tuples, and the records
    #    statement gives each event its tuple's component (joined back on the five columns, NULL matching
    #    NULL). gid < 0, numbered in any order: no output depends on a gid's value. An event without any
    #    identifier is in no group and has no record, as before. (Per event instead, at 1M: the graph 40 s,
    #    per tuple 32-33 s; docs/performance.md, "Identity".)
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_event_groups AS
        SELECT -row_number() OVER () AS gid, *
        FROM (
            SELECT {", ".join(IDENTIFIER_COLUMNS)}
            FROM {STG_CHANNEL_EVENTS}
            WHERE {_any_not_null(IDENTIFIER_COLUMNS)}
            GROUP BY {", ".join(IDENTIFIER_COLUMNS)}
        )
        """
    )
    # 1. Nodes with deterministic integer ids: identifiers, then pseudo-nodes, ranked by (type, value), read
    #    straight from staging. A pseudo-node exists for a group with at least one identifier (an order, a
    #    referral side) and for both ends of a converted referral's link to its order.
    #    Everything after this works on the integer ids (joins and DISTINCTs on strings cost 2-3x more).
    pseudo_case = "CASE role " + " ".join(f"WHEN '{r}' THEN '{t}'" for r, t in PSEUDO_TYPES.items()) + " END"
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
        SELECT row_number() OVER (ORDER BY node_type, node_value) AS node_id, node_type, node_value, is_pseudo
        FROM all_nodes
        """
    )
    # 2. Memberships: each occurrence of an identifier in a staged row (occurrences_sql) as integers. Every
    #    group gets one integer, gid, so that the self-join, the stars and the records group on integers, not on
    #    (role, record_id) strings: an order or a referral side is its pseudo-node (one per group: gid > 0, its
    #    node_value is the record_id), and its versions collapse into one membership per identifier; channel
    #    events are their tuple's group (step 0: gid < 0, one value per identifier column, one version, so its
    #    occurrences are its memberships already). The two branches read their own sources' occurrences: one
    #    shared CTE of all occurrences was materialised and scanned twice, a third of the statement's time.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_memberships AS
        SELECT o.gid, o.type_ord, 1 AS version_rank, n.node_id AS nid
        FROM ({_event_group_occurrences()}) o
        JOIN _idg_node_ids n ON n.node_type = o.identifier_type AND n.node_value = o.identifier_value
        UNION ALL
        SELECT p.node_id AS gid, min(o.type_ord) AS type_ord, min(o.version_rank) AS version_rank, n.node_id AS nid
        FROM ({occurrences_sql(sources=("orders", "referrals"))}) o
        JOIN _idg_node_ids n ON n.node_type = o.identifier_type AND n.node_value = o.identifier_value
        JOIN _idg_node_ids p ON p.node_type = {pseudo_case.replace('role', 'o.role', 1)} AND p.node_value = o.record_id
        GROUP BY p.node_id, n.node_id
        """
    )

    # 3. Degrees: distinct co-occurring values of each other type, through the groups.
    type_name = "CASE other_ord " + " ".join(f"WHEN {o} THEN '{t}'" for t, o in TYPE_ORDER.items()) + " END"
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_degree_by_type AS
        WITH pairs AS (
            SELECT DISTINCT x.nid, y.type_ord AS other_ord, y.nid AS other_nid
            FROM _idg_memberships x
            JOIN _idg_memberships y ON y.gid = x.gid AND y.type_ord <> x.type_ord
        )
        SELECT nid, {type_name} AS other_type, count(*) AS n FROM pairs GROUP BY ALL
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
    con.execute("CREATE OR REPLACE TEMP TABLE _idg_shared_ids AS SELECT node_id FROM _idg_nodes WHERE is_shared")

    # 4. Links (undirected, a < b), shared identifiers' memberships dropped.
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _idg_edges AS
        WITH ev AS (
            SELECT gid, nid, type_ord FROM _idg_memberships
            WHERE gid < 0 AND nid NOT IN (SELECT node_id FROM _idg_shared_ids)
        ),
        centre AS (
            SELECT gid, arg_min(nid, type_ord) AS centre FROM ev GROUP BY gid HAVING count(*) > 1
        ),
        raw_links AS (
            SELECT ev.nid AS x, c.centre AS y FROM ev JOIN centre c USING (gid) WHERE ev.nid <> c.centre
            UNION ALL
            SELECT nid, gid FROM _idg_memberships
            WHERE gid > 0 AND nid NOT IN (SELECT node_id FROM _idg_shared_ids)
            UNION ALL
            SELECT re.node_id, o.node_id
            FROM (SELECT DISTINCT referral_id, order_id FROM {STG_REFERRAL_VERSIONS}
                  WHERE status = 'converted' AND order_id IS NOT NULL) c
            JOIN _idg_node_ids re ON re.node_type = 'referral_referee' AND re.node_value = c.referral_id
            JOIN _idg_node_ids o ON o.node_type = 'order' AND o.node_value = c.order_id
        )
        SELECT DISTINCT least(x, y) AS a, greatest(x, y) AS b FROM raw_links
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
    pseudo_role = "CASE pl.node_type " + " ".join(f"WHEN '{t}' THEN '{r}'" for r, t in PSEUDO_TYPES.items()) + " END"
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {RECORDS_TABLE} AS
        WITH labelled AS (
            SELECT m.*, nl.component_id, nl.is_shared
            FROM _idg_memberships m JOIN _idg_node_labels nl ON nl.node_id = m.nid
        ),
        -- a record's own choice: its first non-shared identifier, else its first shared one
        -- (current version first, then column order)
        own AS (
            SELECT gid,
                   arg_min(component_id, CAST(is_shared AS INTEGER) * 1000000 + version_rank * 10 + type_ord)
                       AS own_component
            FROM labelled GROUP BY gid
        ),
        components_with_identifiers AS (
            SELECT DISTINCT component_id FROM _idg_node_labels WHERE NOT is_pseudo AND NOT is_shared
        )
        SELECT 'channel_events' AS source, e.event_id AS record_id, 'person' AS role, o.own_component AS component_id
        FROM {STG_CHANNEL_EVENTS} e
        JOIN _idg_event_groups g ON {" AND ".join(f"g.{c} IS NOT DISTINCT FROM e.{c}" for c in IDENTIFIER_COLUMNS)}
        JOIN own o ON o.gid = g.gid
        UNION ALL
        -- orders and referral sides follow their pseudo-node when its component holds a customer's identifier
        -- (a converted referral's referee with shared ids only is the buyer of its order)
        SELECT CASE pl.node_type WHEN 'order' THEN 'orders' ELSE 'referrals' END,
               pl.node_value,
               {pseudo_role},
               coalesce(c.component_id, o.own_component)
        FROM own o
        JOIN _idg_node_labels pl ON pl.node_id = o.gid
        LEFT JOIN components_with_identifiers c ON c.component_id = pl.component_id
        """
    )
    con.execute(
        f"""
        CREATE OR REPLACE TABLE {SHARED_TABLE} AS
        WITH shared AS (
            SELECT node_id, node_type AS identifier_type, node_value AS identifier_value, degree
            FROM _idg_node_labels WHERE is_shared
        ),
        row_counts AS (
            SELECT o.identifier_type, o.identifier_value,
                   count(DISTINCT (o.source, o.record_id, o.version_rank)) AS rows
            FROM ({occurrences_sql()}) o JOIN shared s USING (identifier_type, identifier_value)
            GROUP BY ALL
        ),
        by_type AS (
            SELECT d.nid, string_agg(d.other_type || ':' || d.n, ',' ORDER BY d.n DESC, d.other_type) AS degree_by_type
            FROM _idg_degree_by_type d SEMI JOIN shared s ON s.node_id = d.nid
            GROUP BY d.nid
        )
        SELECT s.identifier_type, s.identifier_value, s.degree, d.degree_by_type, r.rows
        FROM shared s
        JOIN by_type d ON d.nid = s.node_id
        JOIN row_counts r USING (identifier_type, identifier_value)
        ORDER BY s.degree DESC, s.identifier_type, s.identifier_value
        """
    )

    counts = con.execute(
        f"""
        SELECT (SELECT count(*) FILTER (WHERE NOT is_pseudo) FROM _idg_nodes),
               (SELECT count(*) FILTER (WHERE is_pseudo) FROM _idg_nodes),
               (SELECT count(*) FROM _idg_edges),
               (SELECT count(DISTINCT component_id) FROM {RECORDS_TABLE}),
               (SELECT count(*) FROM {RECORDS_TABLE}),
               (SELECT count(*) FROM {SHARED_TABLE})
        """
    ).fetchone()
    top = con.execute(
        f"SELECT identifier_type, {mask_sql('identifier_type', 'identifier_value')}, degree "
        f"FROM {SHARED_TABLE} ORDER BY degree DESC, identifier_type, identifier_value LIMIT {int(top_n)}"
    ).fetchall()
    # every temp table of this function (temp tables are per connection, but the connection may live on)
    for t in ("_idg_event_groups", "_idg_node_ids", "_idg_memberships", "_idg_degree_by_type", "_idg_nodes",
              "_idg_shared_ids", "_idg_edges", "_idg_labels", "_idg_node_labels"):
        con.execute(f"DROP TABLE IF EXISTS {t}")
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
    )
