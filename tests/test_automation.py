"""Daily batch-date partitions, the landing sensor and the daily schedule (orchestration/defs/automation.py)."""

from __future__ import annotations

import datetime as dt
import os
import shutil

import dagster as dg
import duckdb
import pytest

from orchestration import landing

pytestmark = pytest.mark.slow


@pytest.fixture
def env(tmp_path, monkeypatch, dbt_manifest):
    from orchestration.generate import generate
    from orchestration.settings import load_settings

    data_dir = tmp_path / "data"
    generate(data_dir / "landing", customers=60, days=12, seed=3, dirty_rate=0.0)
    monkeypatch.setattr(landing, "SETTLE_NS", 0)  # files written a moment ago count as complete here
    monkeypatch.setenv("PRIVDOM_HOME", str(data_dir))
    monkeypatch.setenv("DAGSTER_HOME", str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()
    from orchestration.definitions import build_definitions

    defs = build_definitions()
    return load_settings(data_dir), defs


def _ledger(settings) -> list[tuple]:
    con = duckdb.connect(str(settings.warehouse_path), read_only=True)
    try:
        return con.execute("select source, file_path, batch_date, status from raw.ingestion_ledger order by file_id").fetchall()
    finally:
        con.close()


def _ingest_assets(defs):
    repo = defs.get_repository_def()
    return [repo.assets_defs_by_key[dg.AssetKey(["raw", s])] for s in ("channel_events", "orders", "referrals")]


def test_a_partitioned_run_loads_only_its_batch_dates_and_an_unpartitioned_run_the_rest(env):
    settings, defs = env
    with dg.instance_for_test() as instance:
        result = dg.materialize(_ingest_assets(defs), partition_key="2024-01-03", instance=instance)
        assert result.success
        ledger = _ledger(settings)
        dated = [row for row in ledger if row[2] is not None]
        assert dated and {row[2] for row in dated} == {dt.date(2024, 1, 3)}

        result = dg.materialize(
            _ingest_assets(defs),
            tags={"dagster/asset_partition_range_start": "2024-01-05", "dagster/asset_partition_range_end": "2024-01-07"},
            instance=instance,
        )
        assert result.success
        dates = {row[2] for row in _ledger(settings) if row[2] is not None}
        assert dates == {dt.date(2024, 1, 3), dt.date(2024, 1, 5), dt.date(2024, 1, 6), dt.date(2024, 1, 7)}
        # every partition of the range gets the run's one result: it says so, and what each date brought
        loaded = {}
        for source, path, batch_date, status in _ledger(settings):
            if source == "orders" and batch_date and batch_date >= dt.date(2024, 1, 5):
                loaded.setdefault(batch_date.isoformat(), 0)
                loaded[batch_date.isoformat()] += 1
        event = instance.get_latest_materialization_event(dg.AssetKey(["raw", "orders"]))
        materialization = event.asset_materialization
        assert materialization.partition in {"2024-01-05", "2024-01-06", "2024-01-07"}
        meta = materialization.metadata
        assert meta["batch_dates"].value.startswith("2024-01-05…2024-01-07 (3 batch dates): the other figures are this run's totals")
        by_date = meta["by_batch_date"].value
        assert {d: v["new_files"] for d, v in by_date.items()} == loaded
        assert sum(v["rows_loaded"] for v in by_date.values()) == meta["rows_loaded"].value

        assert dg.materialize(_ingest_assets(defs), instance=instance).success
        delivered = {p for p in landing.snapshot(settings.landing_dir)}
        assert {row[1] for row in _ledger(settings)} == delivered
        # the unpartitioned run recorded the batch dates it loaded as materialized partitions
        materialized = instance.get_materialized_partitions(dg.AssetKey(["raw", "orders"]))
        order_dates = {row[2].isoformat() for row in _ledger(settings) if row[0] == "orders" and row[3] == "loaded"}
        assert order_dates <= materialized


def test_sensor_requests_one_run_for_the_dates_of_new_files_then_skips(env, tmp_path):
    settings, defs = env
    sensor = defs.get_repository_def().get_sensor_def("landing_files_sensor")
    with dg.instance_for_test() as instance:
        first = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(), instance=instance, cursor=None))
        assert len(first.run_requests) == 1
        tags = first.run_requests[0].tags
        assert (tags["dagster/asset_partition_range_start"], tags["dagster/asset_partition_range_end"]) == ("2024-01-01", "2024-01-12")

        again = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(), instance=instance, cursor=first.cursor))
        assert not again.run_requests and again.skip_message

        # a late delivery for an old batch date: one run for that date's partition
        source = settings.landing_dir / "channel_events" / "channel_events_20240102.csv"
        late = settings.landing_dir / "channel_events" / "channel_events_20240102_late.csv"
        shutil.copyfile(source, late)
        os.utime(late)
        late_tick = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(), instance=instance, cursor=again.cursor or first.cursor))
        assert [r.partition_key for r in late_tick.run_requests] == ["2024-01-02"]
        assert late_tick.run_requests[0].run_key != first.run_requests[0].run_key


def test_sensor_run_request_runs_the_whole_graph(env):
    """The sensor's request (a partition range over the whole graph) executes on the sensor's own job,
    `whole_graph`: raw partitions + dbt."""
    settings, defs = env
    sensor = defs.get_repository_def().get_sensor_def("landing_files_sensor")
    job = defs.get_repository_def().get_job("whole_graph")
    assert sensor.job_name == "whole_graph"
    with dg.instance_for_test() as instance:
        request = sensor.evaluate_tick(dg.build_sensor_context(repository_def=defs.get_repository_def(), instance=instance)).run_requests[0]
        result = job.execute_in_process(instance=instance, tags=request.tags, raise_on_error=False)
        failures = [e.step_key for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
        assert result.success, failures
        assert instance.get_materialized_partitions(dg.AssetKey(["raw", "referrals"])) >= {"2024-01-01", "2024-01-12"}
        assert instance.get_latest_materialization_event(dg.AssetKey(["marts", "dim_customers"])) is not None
        assert (settings.bi_dir / "warehouse.duckdb").exists()


def test_daily_schedule_targets_the_whole_graph_at_2am_shanghai(env):
    _, defs = env
    schedule = defs.get_repository_def().get_schedule_def("daily_full_graph")
    assert schedule.cron_schedule == "0 2 * * *" and schedule.execution_timezone == "Asia/Shanghai"
    with dg.instance_for_test() as instance:
        data = schedule.evaluate_tick(dg.build_schedule_context(instance=instance))
    assert len(data.run_requests) == 1 and data.run_requests[0].partition_key is None


def test_the_ingest_step_splits_the_memory_limit_between_the_load_and_the_validation(env, monkeypatch):
    """GX's DuckDB runs beside the warehouse's during the load: three quarters of duckdb_memory_limit for the
    warehouse connection, one quarter for GX, so that together they stay within the setting (2.5GB)."""
    import orchestration.defs.ingest as ingest_defs

    settings, defs = env
    seen: dict[str, list] = {"load": [], "gx": []}
    real_ingest, real_validate = ingest_defs.ingest_source, ingest_defs.gx_worker.validate

    def ingest(con, *args, **kwargs):
        seen["load"].append(con.execute("select current_setting('memory_limit')").fetchone()[0])
        return real_ingest(con, *args, **kwargs)

    def validate(source, frame, *, memory_limit=None):
        seen["gx"].append(memory_limit)
        return real_validate(source, frame, memory_limit=memory_limit)

    monkeypatch.setattr(ingest_defs, "ingest_source", ingest)
    monkeypatch.setattr(ingest_defs.gx_worker, "validate", validate)  # the step validates through it
    with dg.instance_for_test() as instance:
        assert dg.materialize(_ingest_assets(defs), instance=instance).success
    assert seen["load"] == ["1.7 GiB"] * 3  # 1,875,000,000 bytes
    assert seen["gx"] == ["625000000B"] * 3


def test_dg_launch_runs_one_batch_date_then_the_whole_graph_each_in_one_process(tmp_path):
    """README's `dg launch` commands, as a user types them: `--assets '*' --partition D` loads the files of batch
    date D and builds everything downstream; `--job whole_graph` (the schedule's and the sensor's job) loads every
    other new file, as `privdom run` does. A launched run executes its steps in its own process
    (orchestration/defs/execution.py), not in a process per step."""
    import subprocess
    import sys
    from pathlib import Path

    from orchestration.generate import generate

    data_dir = tmp_path / "data"
    warehouse = data_dir / "warehouse.duckdb"
    generate(data_dir / "landing", customers=60, days=12, seed=3, dirty_rate=0.0)
    # as README has it: no activated environment (VIRTUAL_ENV unset), .venv/bin/dg called by its path
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PRIVDOM_", "DAGSTER_")) and k != "VIRTUAL_ENV"}
    env.update(PRIVDOM_HOME=str(data_dir), DAGSTER_HOME=str(tmp_path / "dagster"))
    (tmp_path / "dagster").mkdir()

    def launch(*args: str) -> None:
        proc = subprocess.run(
            [str(Path(sys.executable).with_name("dg")), "launch", *args],
            cwd=Path(__file__).resolve().parents[1], env=env, capture_output=True, text=True, timeout=600,
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        # README calls .venv/bin/dg without activating the environment ([tool.dg.cli] suppress_warnings)
        assert "virtual environment does not match" not in proc.stderr, proc.stderr[-3000:]

    def query(sql: str) -> list[tuple]:
        con = duckdb.connect(str(warehouse), read_only=True)
        try:
            return con.execute(sql).fetchall()
        finally:
            con.close()

    launch("--assets", "*", "--partition", "2024-01-03")
    assert query("select distinct batch_date from raw.ingestion_ledger where batch_date is not null") == [(dt.date(2024, 1, 3),)]
    assert query("select count(*) from marts.dim_customers")[0][0] > 0

    launch("--job", "whole_graph")
    assert query("select count(distinct batch_date) from raw.ingestion_ledger")[0][0] == 12
    assert list((data_dir / "exports").glob("*/LATEST")), "no segment export was published"
    with dg.DagsterInstance.from_config(str(tmp_path / "dagster")) as instance:
        run = instance.get_runs(filters=dg.RunsFilter(job_name="whole_graph"))[0]
        assert run.status == dg.DagsterRunStatus.SUCCESS
        steps = [e.dagster_event for e in instance.all_logs(run.run_id)
                 if e.dagster_event and e.dagster_event.event_type_value == "STEP_START"]
    assert len(steps) >= 10
    assert len({e.pid for e in steps}) == 1, "the steps ran in more than one process"
