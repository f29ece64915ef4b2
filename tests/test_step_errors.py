"""What a launched run's failed step says (the UI, `dg launch`, the run log) when the warehouse cannot be used: a
file another process holds, an asset launched before anything upstream of it was ever built."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import dagster as dg
import duckdb
import pytest

pytestmark = pytest.mark.slow


@pytest.fixture
def job(tmp_path, monkeypatch, dbt_manifest):
    from orchestration.generate import generate

    data_dir = tmp_path / "data"
    generate(data_dir / "landing", customers=40, days=5, seed=11, dirty_rate=0.0)
    monkeypatch.setenv("PRIVDOM_HOME", str(data_dir))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    from orchestration.definitions import build_definitions

    return data_dir, build_definitions().resolve_implicit_global_asset_job_def()


def _failures(result) -> dict[str, object]:
    return {e.step_key: e.event_specific_data.error for e in result.all_events if e.event_type_value == "STEP_FAILURE"}


def test_a_step_that_finds_the_warehouse_held_by_another_process_fails_with_what_to_do(job):
    data_dir, job_def = job
    path = data_dir / "warehouse.duckdb"
    duckdb.connect(str(path)).close()
    code = textwrap.dedent(
        f"""
        import duckdb, time
        con = duckdb.connect({str(path)!r})
        print("held", flush=True)
        time.sleep(120)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert child.stdout.readline().strip() == "held"
        with dg.instance_for_test() as instance:
            result = job_def.execute_in_process(
                instance=instance, asset_selection=[dg.AssetKey(["raw", "orders"])], raise_on_error=False
            )
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        child.wait()
    error = _failures(result)["raw__orders"]
    # a Failure (its description is the step's error in the UI), not DuckDB's IO error through privdom's frames
    assert error.cls_name == "Failure", error.cls_name
    assert "in use by another process" in error.message and f"PID {child.pid}" in error.message
    assert "Close the other connection" in error.message


def test_a_model_launched_before_its_upstream_was_ever_built_says_to_build_the_graph_first(job):
    data_dir, job_def = job
    with dg.instance_for_test() as instance:
        result = job_def.execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(["marts", "dim_customers"])], raise_on_error=False
        )
    assert not result.success
    error = _failures(result)["dbt_models"]
    assert error.cls_name == "Failure", error.cls_name
    first = error.message.split("\n\n")[0]
    assert "is not in this warehouse yet" in first and "has never been materialized in this data directory" in first
    assert "`privdom run`" in first and "whole_graph" in first
    # dbt's own report stays below it, for whoever needs the detail
    assert "Catalog Error" in error.message and "dim_customers" in error.message


def test_the_hint_names_the_relation_dbt_could_not_find_and_nothing_else():
    from orchestration.defs.dbt import _missing_upstream

    text = (
        "Runtime Error in model dim_customers (models/marts/dim_customers.sql)\n"
        '  Catalog Error: Table with name "intermediate.int_customers__keyed" does not exist because schema '
        '"intermediate" does not exist.'
    )
    hint = _missing_upstream(text)
    assert hint.startswith("intermediate.int_customers__keyed is not in this warehouse yet: its asset "
                           "intermediate/int_customers__keyed")
    view = 'Catalog Error: View with name "staging.stg_orders" does not exist!'
    assert _missing_upstream(view).startswith("staging.stg_orders is not in this warehouse yet")
    # the schema exists and the table does not (DuckDB names the table alone), and a quoted three-part name
    alone = 'Catalog Error: Table with name stg_orders does not exist!\nDid you mean "stg_referrals"?'
    assert _missing_upstream(alone).startswith("stg_orders is not in this warehouse yet: its asset (or one further")
    three = 'Catalog Error: Table with name "warehouse"."staging"."stg_orders" does not exist'
    assert _missing_upstream(three).startswith("staging.stg_orders is not in this warehouse yet: its asset staging/stg_orders")
    # other catalog errors (a column, a function) are not about a missing upstream
    assert _missing_upstream('Binder Error: Referenced column "paid_at" not found in FROM clause!') is None
    assert _missing_upstream("Catalog Error: Scalar Function with name foo does not exist!") is None


def test_with_another_dbt_target_no_step_writes_the_warehouse(job, monkeypatch):
    """PRIVDOM_DBT_TARGET=spark in a Dagster deployment: the dbt steps refuse it, and so does every other step
    that writes the warehouse, before it writes (a sensor's runs loaded DuckDB on every tick, the Spark review)."""
    from orchestration import dbt as dbt_runner

    data_dir, job_def = job
    monkeypatch.setattr(dbt_runner, "DBT_TARGET", "spark")
    with dg.instance_for_test() as instance:
        result = job_def.execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(["raw", "orders"])], raise_on_error=False
        )
    error = _failures(result)["raw__orders"]
    assert error.cls_name == "Failure" and "PRIVDOM_DBT_TARGET=spark" in error.message
    assert not (data_dir / "warehouse.duckdb").exists()


def test_a_dbt_step_that_ends_before_its_evaluations_reach_dagster_leaves_its_build_marked(job, monkeypatch):
    """dagster-dbt hands a step's events to Dagster once dbt has exited: a step that ends in between (a kill, the
    OOM killer, Ctrl-C) has replaced tables whose tests never reported. Its mark stays, and the gates downstream
    wait for a whole build (tests/test_segments_gating.py); a step whose evaluations were handed over clears its
    own (tests/test_pipeline.py)."""
    from dagster_dbt.core.dbt_cli_invocation import DbtCliInvocation

    from orchestration import dbt as dbt_runner

    data_dir, job_def = job

    def killed(self):
        raise KeyboardInterrupt  # where a signal would land: dbt has exited, nothing was handed over yet

    monkeypatch.setattr(DbtCliInvocation, "get_error", killed)
    with dg.instance_for_test() as instance:
        result = job_def.execute_in_process(
            instance=instance, asset_selection=[dg.AssetKey(["staging", "stg_orders"])], raise_on_error=False
        )
    assert not result.success
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        (waiting,) = dbt_runner.untested_builds(con)
    assert waiting.startswith(f"dbt_staging (rebuilt by Dagster run {result.run_id[:8]} from ")


def test_a_whole_dbt_step_that_fails_leaves_the_marks_of_other_runs_builds(job):
    """A whole build of a step whose dbt fails skips the models downstream of the error: they keep what another
    run's build (killed inside the step) or `privdom dbt run` left, whose tests never reported to Dagster. That
    build's mark must stay, or members and exports materialized alone publish those tables on older evaluations
    (review of raw.dbt_untested_builds: a failing dim_customers was exported)."""
    from orchestration import dbt as dbt_runner
    from orchestration.defs.dbt import dbt_model_assets

    data_dir, job_def = job
    with duckdb.connect(str(data_dir / "warehouse.duckdb")) as con:
        dbt_runner.mark_untested(con, ["dbt_staging"], "0b35c56c-killed-run", "dbt_staging")
    (staging,) = [a for a in dbt_model_assets if a.op.name == "dbt_staging"]
    with dg.instance_for_test() as instance:
        # nothing was ever loaded: every staging model fails or is skipped, dbt exits with an error
        result = job_def.execute_in_process(instance=instance, asset_selection=list(staging.keys), raise_on_error=False)
    assert "dbt_staging" in _failures(result)
    with duckdb.connect(str(data_dir / "warehouse.duckdb"), read_only=True) as con:
        waiting = dbt_runner.untested_builds(con)
    assert [w.split(" (")[0] for w in waiting] == ["dbt_staging"]
    assert "Dagster run 0b35c56c" in waiting[0]
