"""The dbt project as Dagster assets: staging → intermediate → marts → segments, tests as asset checks."""


from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from dagster_dbt.dbt_project import using_dagster_dev

from orchestration import dbt as dbt_runner
from orchestration import preview, warehouse
from orchestration.defs.resources import WAREHOUSE_POOL, PrivdomResource, current_settings
from orchestration.settings import DBT_PROJECT_DIR


dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR, target=dbt_runner.DBT_TARGET)
# Under `dg dev` / `dagster dev`, re-parse so edits show up; the parse uses privdom's vars and env (the
# default preparer would not, and build would then lose partial parsing). Elsewhere the manifest comes from
# the `dbt parse` that `privdom run`, CI and the tests run first; a missing one is made here as a last resort.
if using_dagster_dev() or not dbt_project.manifest_path.exists():
    dbt_runner.parse(current_settings())


class PrivdomDbtTranslator(DagsterDbtTranslator):
    """Asset keys are <layer>/<model> (e.g. marts/fct_aarrr_funnel); the layer is also the asset group."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_asset_key(dbt_resource_props)
        return dg.AssetKey([dbt_resource_props["schema"], dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return dbt_resource_props.get("schema") or "dbt"


# The dbt graph is cut in three around the identity assets (Python, because stable keys are state, not a
# model): staging → [identity graph] → identity inputs (first touch per component) → [customer keys] → the
# rest. One @dbt_assets per part keeps Dagster's step graph acyclic.
DBT_SELECTIONS = {
    "dbt_staging": ("path:models/staging", None),
    "dbt_identity_inputs": ("tag:identity_input", None),
    # Selected by path, not as "everything but staging": a test that reconciles a mart with staging is then
    # selected here (eager) and becomes an asset check of the mart; at run time "buildable" indirect selection
    # runs it in this step, once both parents exist.
    "dbt_models": ("path:models/intermediate path:models/marts", "tag:identity_input"),
}


def _build_dbt_assets(name: str, select: str, exclude: str | None) -> dg.AssetsDefinition:
    @dbt_assets(
        name=name,
        manifest=dbt_project.manifest_path,
        project=dbt_project,
        select=select,
        exclude=exclude or "",
        dagster_dbt_translator=PrivdomDbtTranslator(),
        pool=WAREHOUSE_POOL,
    )
    def _dbt(context: dg.AssetExecutionContext, dbt: DbtCliResource, privdom: PrivdomResource):
        """dbt build (models and their tests) with privdom's settings passed as vars.

        The events are collected until dbt exits (it holds DuckDB's write lock until then), then each
        model's materialization gets its row count and a masked preview, read in this process.
        """
        settings = current_settings()
        with privdom.writer(context):
            warehouse.ensure_not_locked(settings.warehouse_path)
            invocation = dbt.cli(["build", *dbt_runner.dbt_vars_arg(settings)], context=context, raise_on_error=False)
            events = list(invocation.stream())
            error = invocation.get_error()
            with privdom.connect() as con:
                for event in events:
                    yield _with_table_metadata(context, con, event)
        if error is not None:
            text = str(error)
            if warehouse.is_lock_conflict(text):
                raise warehouse.locked_error(settings.warehouse_path, text) from error
            raise error

    return _dbt


def _with_table_metadata(context: dg.AssetExecutionContext, con, event):
    if not isinstance(event, dg.Output):
        return event
    key = context.asset_key_for_output(event.output_name)
    if len(key.path) != 2:
        return event
    schema, table = key.path
    rows = preview.row_count(con, schema, table)
    if rows is None:
        return event
    extra = {"dagster/row_count": rows}
    sample = preview.preview_markdown(con, schema, table)
    if sample:
        extra["preview"] = dg.MetadataValue.md(sample)
    return event.with_metadata({**event.metadata, **extra})


dbt_model_assets = [_build_dbt_assets(name, *selection) for name, selection in DBT_SELECTIONS.items()]
