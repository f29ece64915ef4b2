"""Identity resolution (SPEC §3) as assets: the identity graph, then stable customer keys.

The graph runs on the staged rows; the keys need each component's acquisition time, which dbt computes
(int_components__first_touch: the one definition of "acquired"), so the two steps sit on either side of it.
"""

import dagster as dg

from orchestration import dbt as dbt_runner
from orchestration.dbt import full_refresh_requested
from orchestration.defs.resources import WAREHOUSE_POOL, PrivdomResource
from orchestration.identity import assign_customer_keys, build_identity_graph
from orchestration.identity.keys import key_check_counts

GRAPH_TABLES = ("int_identity__identifiers", "int_identity__records", "int_identity__shared_identifiers")
STAGING_INPUTS = [dg.AssetKey(["staging", name]) for name in ("stg_channel_events", "stg_orders__versions", "stg_referrals__versions")]
KEYS = dg.AssetKey(["intermediate", "int_customer_keys"])
SHARED = dg.AssetKey(["intermediate", "int_identity__shared_identifiers"])
FIRST_TOUCH = dg.AssetKey(["intermediate", "int_components__first_touch"])


@dg.multi_asset(
    name="identity_graph",
    group_name="intermediate",
    pool=WAREHOUSE_POOL,
    specs=[
        dg.AssetSpec(
            ["intermediate", table],
            deps=STAGING_INPUTS,
            kinds={"duckdb", "python"},
            description={
                "int_identity__identifiers": "Every identifier value (type, value) with its component, degree and whether it is shared.",
                "int_identity__records": "The component of each staged record's person (channel event person, order buyer, referral referrer and referee).",
                "int_identity__shared_identifiers": "Identifiers linked to more than identity_max_degree values of another type: not used for merging.",
            }[table],
        )
        for table in GRAPH_TABLES
    ],
    check_specs=[
        dg.AssetCheckSpec(
            "no_shared_identifiers",
            asset=SHARED,
            description="Warns when shared identifiers (a clerk's phone, a test account) appear; the top offenders are in the metadata.",
        )
    ],
)
def identity_graph(context: dg.AssetExecutionContext, privdom: PrivdomResource):
    """Connected components of the identifier graph, computed from the staged rows in DuckDB (components with SciPy):
    only the components that newly staged rows touch, when the stored graph fits; in full otherwise or on a run
    tagged privdom/full_refresh."""
    settings = privdom.settings()
    full_refresh = full_refresh_requested(context.run.tags)
    with privdom.writer(context), privdom.connect() as con:
        # staging not rebuilt since `privdom unload` (this asset materialized alone): the unload's mark stays
        stale = dbt_runner.recorded_fingerprint(con, "dbt_staging") in (dbt_runner.UNLOADED, dbt_runner.INCOMPLETE)
        report = build_identity_graph(con, max_degree=settings.identity_max_degree, full_refresh=full_refresh,
                                      staging_stale=stale)
    if report.mode == "full":
        context.log.info(f"identity graph built in full: {report.full_build_reason}")
    else:
        context.log.info(
            f"identity graph updated: {report.touched_components} components touched, "
            f"{report.relabelled_nodes} nodes recomputed, {report.records_written} records written"
        )
    metadata = report.to_metadata()
    for table in GRAPH_TABLES:
        yield dg.MaterializeResult(asset_key=["intermediate", table], metadata=metadata if table == "int_identity__identifiers" else {})
    yield dg.AssetCheckResult(
        asset_key=SHARED,
        check_name="no_shared_identifiers",
        passed=report.shared_identifiers == 0,
        severity=dg.AssetCheckSeverity.WARN,
        description=None if report.shared_identifiers == 0 else (
            f"{report.shared_identifiers:,} identifier value{'s are' if report.shared_identifiers != 1 else ' is'} "
            f"shared (linked to more than identity_max_degree = {settings.identity_max_degree} values of another "
            "type: a shop clerk's phone, a test account) and merge no customers (SPEC §3): expected in real data, "
            "listed in intermediate.int_identity__shared_identifiers"
        ),
        metadata={"shared_identifiers": report.shared_identifiers, "top_offenders": report.top_shared},
    )


@dg.asset(
    key=KEYS,
    group_name="intermediate",
    kinds={"duckdb", "python"},
    pool=WAREHOUSE_POOL,
    deps=[FIRST_TOUCH, dg.AssetKey(["intermediate", "int_identity__identifiers"])],
    description=(
        "The stable customer_key of each identity component. Keys live in the key registry (schema "
        "identity_state), which is state, not a model: a merge keeps the key of the earliest-acquired customer "
        "and is recorded in identity_state.customer_key_merges."
    ),
    check_specs=[
        dg.AssetCheckSpec("one_key_per_component", asset=KEYS, description="Every component has exactly one customer_key and no key names two components."),
        dg.AssetCheckSpec("identifier_maps_to_one_customer", asset=KEYS, description="Every identifier that is neither a placeholder nor shared maps to exactly one customer."),
    ],
)
def int_customer_keys(context: dg.AssetExecutionContext, privdom: PrivdomResource):
    with privdom.writer(context), privdom.connect() as con:
        first_touch = ".".join(FIRST_TOUCH.path)
        report = assign_customer_keys(con, first_touch, run_id=context.run_id,
                                      full_refresh=full_refresh_requested(context.run.tags))
        counts = key_check_counts(con, first_touch)
    if report.mode == "full":
        context.log.info(f"customer keys assigned to every component: {report.full_reason}")
    else:
        context.log.info(f"customer keys assigned again to the {report.components_recomputed} components the "
                         "identity graph wrote again; the others kept theirs")
    yield dg.MaterializeResult(metadata=report.to_metadata())
    yield dg.AssetCheckResult(
        check_name="one_key_per_component",
        passed=counts.components_without_one_key == 0 and counts.keys_on_two_components == 0,
        metadata={"components_without_exactly_one_key": counts.components_without_one_key,
                  "keys_on_two_components": counts.keys_on_two_components},
    )
    yield dg.AssetCheckResult(
        check_name="identifier_maps_to_one_customer",
        passed=counts.identifiers_not_on_one_customer == 0,
        metadata={"identifiers_not_on_exactly_one_customer": counts.identifiers_not_on_one_customer},
    )
