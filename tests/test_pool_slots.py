"""A `warehouse` pool slot kept by a finished run of another launcher (a UI or `dg launch` run whose worker was
killed inside a step: Dagster marks it failed and keeps the slot) is freed by the next `privdom run`, which
waited for it for ever, silently, at full CPU (concurrency review); the daemon of `privdom ui` frees such slots
too (run_monitoring in orchestration/dagster.yaml)."""

from __future__ import annotations

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.utils import make_new_run_id

from orchestration.runner import _fail_abandoned_runs


@dg.asset
def _noop():
    return 1


def test_a_finished_ui_runs_kept_slot_is_freed_and_a_live_ones_is_not(tmp_path):
    with dg.instance_for_test(temp_dir=str(tmp_path), overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        dead = dg.materialize([_noop], instance=instance).run_id  # finished (SUCCESS here; FAILURE after a kill)
        live = instance.add_run(DagsterRun(job_name="whole_graph", run_id=make_new_run_id(),
                                           status=dg.DagsterRunStatus.STARTED))
        storage = instance.event_log_storage
        storage.set_concurrency_slots("warehouse", 1)
        assert storage.claim_concurrency_slot("warehouse", dead, "dbt_staging").is_claimed
        assert _fail_abandoned_runs(instance) == [f"freed the `warehouse` pool slot kept by run {dead}, which has ended"]
        assert [s.run_id for s in storage.get_concurrency_info("warehouse").claimed_slots] == []
        # a run not finished and not launched by `privdom run` may be alive (the UI's): its slot is left
        assert storage.claim_concurrency_slot("warehouse", live.run_id, "raw__orders").is_claimed
        assert _fail_abandoned_runs(instance) == []
        assert [s.run_id for s in storage.get_concurrency_info("warehouse").claimed_slots] == [live.run_id]


def test_the_ui_daemon_frees_the_slots_of_finished_runs(tmp_path):
    """The instance privdom writes for a data directory runs the monitoring daemon, which frees a finished run's
    slots after a minute: without it a UI run killed inside a step held the pool until someone deleted the run."""
    from orchestration.cli import instance_config_text
    from orchestration.settings import load_settings

    settings = load_settings(tmp_path / "data")
    settings.dagster_home.mkdir(parents=True)
    (settings.dagster_home / "dagster.yaml").write_text(instance_config_text(settings), encoding="utf-8")
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] == 60
        assert "MONITORING" in instance.get_required_daemon_types()


def test_the_ui_daemon_purges_old_schedule_and_sensor_ticks(tmp_path):
    """Dagster's defaults keep every schedule tick and every sensor tick but the skipped ones for good (long-horizon
    review): the instance privdom writes keeps them 90 days, skipped sensor ticks 7."""
    from dagster._core.definitions.run_request import InstigatorType
    from dagster._core.scheduler.instigation import TickStatus

    from orchestration.cli import instance_config_text
    from orchestration.settings import load_settings

    settings = load_settings(tmp_path / "data")
    settings.dagster_home.mkdir(parents=True)
    (settings.dagster_home / "dagster.yaml").write_text(instance_config_text(settings), encoding="utf-8")
    with dg.DagsterInstance.from_config(str(settings.dagster_home)) as instance:
        schedule = instance.get_tick_retention_settings(InstigatorType.SCHEDULE)
        sensor = instance.get_tick_retention_settings(InstigatorType.SENSOR)
    assert {schedule[s] for s in TickStatus} == {90}
    assert sensor[TickStatus.SKIPPED] == 7
    assert {sensor[s] for s in (TickStatus.SUCCESS, TickStatus.FAILURE, TickStatus.STARTED)} == {90}


def test_the_ui_marks_a_killed_privdom_runs_run_failed_once_no_privdom_run_holds_the_run_lock(tmp_path, monkeypatch):
    """A `privdom run` killed with -9 left its run Started, holding the pool `warehouse`: every UI, sensor and
    schedule run stayed Queued until someone terminated it in the UI or ran `privdom run` (UI review). The
    housekeeping sensor `privdom ui` runs does what the next `privdom run` does, when no privdom command holds
    the run lock (one that does may own the run)."""
    import subprocess
    import sys
    import textwrap

    from orchestration.defs.automation import abandoned_cli_runs_sensor
    from orchestration.locking import RUN_LOCK_FILE_NAME, lock_path
    from orchestration.runner import LAUNCHER_TAG

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    monkeypatch.setenv("PRIVDOM_HOME", str(data_dir))
    (tmp_path / "dagster").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster"), overrides={"concurrency": {"pools": {"default_limit": 1}}}) as instance:
        killed = instance.add_run(DagsterRun(job_name="__ASSET_JOB", run_id=make_new_run_id(), tags={LAUNCHER_TAG: "cli"},
                                             status=dg.DagsterRunStatus.STARTED))
        storage = instance.event_log_storage
        storage.set_concurrency_slots("warehouse", 1)
        assert storage.claim_concurrency_slot("warehouse", killed.run_id, "dbt_models").is_claimed

        # a privdom run holds the run lock (another process): its runs are alive, nothing is touched
        holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
            import fcntl, os, sys, time
            fd = os.open({str(lock_path(data_dir, RUN_LOCK_FILE_NAME))!r}, os.O_RDWR | os.O_CREAT)
            fcntl.flock(fd, fcntl.LOCK_EX)
            print("held", flush=True)
            sys.stdin.read()
            """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        try:
            assert holder.stdout.readline().strip() == "held"
            busy = abandoned_cli_runs_sensor(dg.build_sensor_context(instance=instance))
            assert "holds the run lock" in busy.skip_message
            assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.STARTED
        finally:
            holder.stdin.close()
            holder.wait(timeout=30)

        done = abandoned_cli_runs_sensor(dg.build_sensor_context(instance=instance))
        assert f"run {killed.run_id} was left unfinished by a killed process; marked failed" in done.skip_message
        assert instance.get_run_by_id(killed.run_id).status == dg.DagsterRunStatus.FAILURE
        # the run's failure says who marked it (it said "the next `privdom run`", which never came)
        (failure,) = [e for e in instance.all_logs(killed.run_id) if e.dagster_event and e.dagster_event.event_type_value == "PIPELINE_FAILURE"]
        assert "Marked failed by `privdom ui`'s housekeeping sensor abandoned_cli_runs_sensor" in failure.message
        assert [s.run_id for s in storage.get_concurrency_info("warehouse").claimed_slots] == []
        assert abandoned_cli_runs_sensor(dg.build_sensor_context(instance=instance)).skip_message == (
            "no abandoned `privdom run` run")
