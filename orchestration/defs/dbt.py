"""The dbt project as Dagster assets: staging → intermediate → marts → segments, tests as asset checks."""


import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, DbtProject, dbt_assets
from dagster_dbt.dbt_project import using_dagster_dev

from orchestration import dbt as dbt_runner
from orchestration import preview, warehouse
from orchestration import validation_worker as gx_worker
from orchestration.defs.resources import WAREHOUSE_POOL, PrivdomResource, current_settings
from orchestration.settings import DBT_PROJECT_DIR


dbt_project = DbtProject(project_dir=DBT_PROJECT_DIR, profiles_dir=DBT_PROJECT_DIR, target=dbt_runner.DBT_TARGET)


def prepare_manifest() -> None:
    """The manifest @dbt_assets reads below. Under `dg` / `dagster dev` (`privdom ui`, `dg launch`, `dg check
    defs`, and every run the UI's daemon or webserver starts: they inherit `DAGSTER_IS_DEV_CLI`), dbt's project
    is parsed again when anything a parse reads changed (every project file, the vars, the environment:
    parse_fingerprint), so edits show up; with privdom's vars and env (the default preparer would not, and build
    would then lose partial parsing). It parsed on every such import, 7-10 s, and its manifest then differed
    from the one every other data directory's next `privdom run` had parsed, which parsed again in turn
    (multi-brand review). Elsewhere the manifest comes from the `dbt parse` that `privdom run`, CI and the tests
    run first; a missing one is made here as a last resort."""
    if using_dagster_dev() or not dbt_project.manifest_path.exists():
        dbt_runner.parse_if_changed(current_settings())


prepare_manifest()


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
        """dbt build (models and their data tests; unit tests run in the test suite) with privdom's settings
        passed as vars.

        The events are collected until dbt exits (it holds DuckDB's write lock until then), then each
        model's materialization gets its row count and a masked preview, read in this process.
        """
        # (a dbt target other than duckdb is refused by privdom.writer below, as in every step that writes)
        # every raw asset of the run has validated (all are upstream of staging): the validation worker's
        # memory goes back before dbt's DuckDB takes its share (orchestration/validation_worker.py)
        gx_worker.release()
        settings = current_settings()
        fingerprint = dbt_runner.incremental_fingerprint(settings)
        with privdom.writer(context):
            warehouse.ensure_not_locked(settings.warehouse_path)
            whole = _whole_step(context)
            with privdom.connect() as con:
                reason = _full_refresh_reason(context, dbt_runner.recorded_fingerprint(con, name), fingerprint)
                if reason:  # until this build succeeds whole, its models match no recorded fingerprint
                    dbt_runner.invalidate_fingerprint(con, name)
                # what this build's tests will have covered when it succeeds (staging only; see _whole_step)
                through = dbt_runner.loaded_through(con) if name == "dbt_staging" and whole else None
                # a build of part of the step must not move the models' places in the graph's change log
                marks = None if whole else dbt_runner.graph_marks(con)
                # until Dagster has this build's test evaluations, the gates downstream wait (dbt_runner.UNTESTED_TABLE)
                dbt_runner.mark_untested(con, [name], context.run_id, name)
            # Unit tests check the SQL, not the data: the same code gives the same answer every run, so they run
            # in the test suite (tests/test_pipeline.py), not in every build (dbt's advice for production).
            args = ["build", "--exclude-resource-type", "unit_test", *dbt_runner.dbt_vars_arg(settings)]
            if not dbt_runner.colour_wanted():  # the run's log file, the UI's captured output
                args.append("--no-use-colors")
            if reason and whole:
                context.log.info(f"incremental models of {name} are rebuilt from raw: {reason}")
            elif reason:
                context.log.info(f"the selected incremental models of {name} are rebuilt from raw ({reason}); the "
                                 f"step's others keep what they hold until its next whole build (`privdom run`, or "
                                 "the job whole_graph)")
            if reason:
                args.append("--full-refresh")
            # the folder dagster-dbt would name (<step>-<run id>-<random>, as prune_invocation_dirs finds it), seeded
            # with this data directory's partial-parse file, not the last parse's of any data directory
            target_path = dbt_runner.invocation_dir(name, context.run.run_id)
            dbt_runner.seed_partial_parse(settings, target_path)
            invocation = dbt.cli(args, context=context, raise_on_error=False, target_path=target_path)
            events = list(invocation.stream())
            error = invocation.get_error()
            with privdom.connect() as con:
                if not whole:
                    dbt_runner.restore_graph_marks(con, marks)
                # only a whole build has rebuilt every incremental model of the step under this fingerprint
                stale = dbt_runner.stale_upstream(con, name, fingerprint) if error is None and whole else None
                if stale:
                    # built from an earlier step's tables that are still to be rebuilt from raw (an unload, a run of
                    # only the later steps, or one that was going on when `privdom unload` ran): rebuilt again
                    upstream, recorded = stale
                    dbt_runner.invalidate_fingerprint(
                        con, name, marker=dbt_runner.UNLOADED if recorded == dbt_runner.UNLOADED else dbt_runner.INCOMPLETE)
                    context.log.warning(f"{name} was built from {upstream}'s models, which are still to be rebuilt "
                                        f"from raw ({recorded or 'never built'}): its next build rebuilds from raw too")
                elif error is None and whole:
                    stamp = dbt_runner.newest_build_stamp(con) if name == "dbt_models" else None
                    dbt_runner.record_fingerprint(con, name, fingerprint, tested_through=through, tested_built_at=stamp)
                # yielded once the connection and the lock are let go: Dagster raises a Ctrl-C where the step is
                # resumed and never closes this generator, and a yield in here left both held by the process (the
                # run's summary then failed to open the warehouse, in a traceback)
                outputs = [_with_reason(context, con, _with_table_metadata(context, con, event), invocation.target_path)
                           for event in events]
        yield from outputs
        # the evaluations are Dagster's now: the gates downstream may go by them (a step failing anyway on a
        # warehouse it could not open keeps its row: its dbt may have replaced nothing, but the gates then wait).
        # Only a whole build that succeeded rebuilt and tested every table of the step: one that failed skipped
        # the models downstream of its error, which keep what another build (a killed run's, `privdom dbt`'s)
        # left untested, so those builds' rows stay.
        try:
            with privdom.writer(context), privdom.connect() as con:
                dbt_runner.clear_untested(con, name, context.run_id, whole=whole and error is None)
        except Exception:
            if error is None:
                raise
        # this invocation's target directory stays (run_results.json for whoever reads it); older ones go
        removed = dbt_runner.prune_invocation_dirs(name)
        if removed:
            context.log.debug(f"removed {removed} old dbt target directories of {name}")
        if error is not None:
            text = str(error)
            if warehouse.is_lock_conflict(text):
                raise dg.Failure(description=str(warehouse.locked_error(settings.warehouse_path, text))) from None
            missing = _missing_upstream(text)
            if missing:
                raise dg.Failure(description=f"{missing}\n\n{text}") from None
            raise error

    return _dbt


# DuckDB's words for a missing table or view: `Table with name "intermediate.int_x" does not exist because schema
# …` when the schema is missing too, `Table with name stg_orders does not exist!` when only the table is
_MISSING_RELATION = re.compile(r'(?:Table|View) with name ((?:"?[A-Za-z0-9_]+"?\.){0,2}"?[A-Za-z0-9_]+"?) does not exist')


def _missing_upstream(text: str) -> str | None:
    """What to do when a model read a table this warehouse does not have yet (an asset launched without its
    upstream on a data directory where the upstream was never materialized, or before a newer release's new
    model was first built), or None for any other error."""
    found = _MISSING_RELATION.search(text)
    if not found:
        return None
    parts = found.group(1).replace('"', "").split(".")  # [catalog.][schema.]name
    schema, name = (parts[-2], parts[-1]) if len(parts) > 1 else (None, parts[-1])
    what = f"{schema}.{name}" if schema else name
    asset = f"its asset {schema}/{name}" if schema else "its asset"
    return (
        f"{what} is not in this warehouse yet: {asset} (or one further upstream) has never been materialized in "
        "this data directory. Build the graph once first (`privdom run`, or `dg launch --job whole_graph`, or the "
        "job whole_graph in the UI); a single asset can be materialized on its own after that."
    )


def _whole_step(context: dg.AssetExecutionContext) -> bool:
    """Whether this step builds all of its models and runs all of its tests, as dagster-dbt decides it (it
    then passes its whole selection; a subset — some assets picked in the UI, checks turned off, a re-execution
    from a failure — runs only part of them, and the singular tests not at all). Only a whole staging build
    may move the record of what the tests have covered (macros/data_tests/privdom_rows_to_test.sql), record the
    incremental fingerprint, and move its models' places in the identity graph's change log."""
    a = context.assets_def
    return a.keys_by_output_name == a.node_keys_by_output_name and (
        a.check_specs_by_output_name == a.node_check_specs_by_output_name
    )


def _full_refresh_reason(context: dg.AssetExecutionContext, recorded: str | None, fingerprint: str) -> str | None:
    """Why this step's incremental models must be rebuilt from raw, or None: they can take in new rows only."""
    if dbt_runner.full_refresh_requested(context.run.tags):
        return f"the run has tag {dbt_runner.FULL_REFRESH_TAG}"
    return dbt_runner.rebuild_reason(recorded, fingerprint)


def _with_reason(context: dg.AssetExecutionContext, con, event, target_path: Path):
    """A failed singular test that returns a `reason` column (tests/triangle_has_baseline_month.sql) says why on
    its check and in the run log: dbt itself reports only how many rows it returned. The test's SQL, as this
    build compiled it, is read again on the warehouse the build left."""
    if not isinstance(event, dg.AssetCheckResult) or event.passed or event.description:
        return event
    # compiled/<project>/tests/[<folder>/]<name>.sql, in this invocation's own target directory; a generic
    # test's compiled SQL lives under models/, and what it returns is rows, which dbt's count describes
    tests = target_path / "compiled" / dbt_project.name / "tests"
    path = next(tests.rglob(f"{event.check_name}.sql"), None) if tests.is_dir() else None
    if path is None:
        return event
    try:
        with con.cursor() as cur:
            rel = cur.sql(path.read_text(encoding="utf-8"))
            if "reason" not in rel.columns:
                return event
            reasons = [r for (r,) in rel.select("reason").limit(3).fetchall() if r]
    except (duckdb.Error, OSError, UnicodeDecodeError) as exc:  # the check's result stands; its explanation is lost
        context.log.debug(f"could not read the reason of {event.check_name}: {exc}")
        return event
    if not reasons:
        return event
    text = "; ".join(reasons)
    context.log.warning(f"{event.check_name}: {text}")
    return dg.AssetCheckResult(passed=event.passed, asset_key=event.asset_key, check_name=event.check_name,
                               metadata=event.metadata, severity=event.severity, description=text)


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
