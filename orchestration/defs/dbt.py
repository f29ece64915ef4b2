"""The dbt project as Dagster assets: staging → intermediate → marts → segments, tests as asset checks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, DbtProjectPreparer, dbt_assets

from orchestration import dbt as dbt_runner
from orchestration.defs.resources import WAREHOUSE_POOL, current_settings
from orchestration.settings import DBT_PROJECT_DIR


class _PrivdomPreparer(DbtProjectPreparer):
    """`dbt parse` with privdom's vars and env (so build keeps partial parsing), under `dg dev`."""

    def prepare_if_dev(self, project: DbtProject) -> None:
        if self.using_dagster_dev() or not project.manifest_path.exists():
            self.prepare(project)

    def prepare(self, project: DbtProject) -> None:
        dbt_runner.parse(current_settings())


dbt_project = DbtProject(
    project_dir=DBT_PROJECT_DIR,
    profiles_dir=DBT_PROJECT_DIR,
    target=dbt_runner.DBT_TARGET,
    preparer=_PrivdomPreparer(),
)
dbt_project.prepare_if_dev()


class PrivdomDbtTranslator(DagsterDbtTranslator):
    """Asset keys are <layer>/<model> (e.g. marts/fct_aarrr_funnel); the layer is also the asset group."""

    def get_asset_key(self, dbt_resource_props: Mapping[str, Any]) -> dg.AssetKey:
        if dbt_resource_props["resource_type"] == "source":
            return super().get_asset_key(dbt_resource_props)
        return dg.AssetKey([dbt_resource_props["schema"], dbt_resource_props["name"]])

    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return dbt_resource_props.get("schema") or "dbt"


@dbt_assets(
    manifest=dbt_project.manifest_path,
    project=dbt_project,
    dagster_dbt_translator=PrivdomDbtTranslator(),
    pool=WAREHOUSE_POOL,
)
def privdom_dbt_models(context: dg.AssetExecutionContext, dbt: DbtCliResource):
    """dbt build (models and their tests) with privdom's settings passed as vars."""
    settings = current_settings()
    yield from dbt.cli(["build", *dbt_runner.dbt_vars_arg(settings)], context=context).stream()
