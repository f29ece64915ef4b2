"""The BI copy (orchestration/bi.py) as the last asset of the graph: published after the marts build."""

import json

import dagster as dg

from orchestration import bi
from orchestration.defs.dbt import dbt_project
from orchestration.defs.resources import WAREHOUSE_POOL, PrivdomResource

BI_COPY = dg.AssetKey(["bi", "warehouse_copy"])


def _published_model_keys() -> list[dg.AssetKey]:
    """Every table of a published schema (marts, segments): the dbt models, and the segment tables the
    segments assets write (defs/segments.py). The copy waits for all of them."""
    from orchestration.defs.segments import DEFINITIONS_KEY, MEMBERS_KEY

    manifest = json.loads(dbt_project.manifest_path.read_text(encoding="utf-8"))
    models = {
        dg.AssetKey([node["schema"], node["name"]])
        for node in manifest["nodes"].values()
        if node["resource_type"] in ("model", "snapshot", "seed") and node["schema"] in bi.BI_SCHEMAS
    }
    return sorted(models | {DEFINITIONS_KEY, MEMBERS_KEY}, key=lambda k: k.path)


@dg.asset(
    key=BI_COPY,
    group_name="bi",
    kinds={"duckdb", "parquet"},
    pool=WAREHOUSE_POOL,
    deps=_published_model_keys(),
    description=(
        "Read-only copy of the schemas marts and segments for BI tools, replaced atomically after each "
        "successful build: bi/warehouse.duckdb (one DuckDB file), bi/parquet/<schema>/<table>.parquet and "
        "bi/manifest.json. BI tools connect here, never to warehouse.duckdb, which a run holds for writing."
    ),
)
def bi_warehouse_copy(context: dg.AssetExecutionContext, privdom: PrivdomResource):
    from orchestration.defs.segments import MEMBERS_GATES, refuse_if_blocked, refuse_if_untested

    # in a run, Dagster skips this step when the members' blocking checks fail; materialized on its own it looks
    # them up, as the exports do, so that a held-back run's marts and members are not published after all
    refuse_if_blocked(context, MEMBERS_GATES, "BI copy")
    settings = privdom.settings()
    # the tables' and columns' dbt docs, as comments in the copy (dbt's manifest as the run finds it)
    docs = bi.docs_from_manifest(json.loads(dbt_project.manifest_path.read_text(encoding="utf-8")))
    with privdom.writer(context), privdom.connect() as con:
        refuse_if_untested(context, con, "BI copy")
        publication = bi.publish(con, settings.bi_dir, run_id=context.run_id, docs=docs)
    if publication.comments_error:
        context.log.warning(f"the BI copy is published without its tables' descriptions: {publication.comments_error}")
    return dg.MaterializeResult(
        metadata={
            "path": dg.MetadataValue.path(str(publication.database)),
            "tables": len(publication.tables),
            "dagster/row_count": sum(publication.tables.values()),
            "rows_by_table": dg.MetadataValue.json(publication.tables),
            "parquet_dir": dg.MetadataValue.path(str(settings.bi_dir / "parquet")),
        }
    )
