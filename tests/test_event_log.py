"""Dagster's event log with kept connections (orchestration/event_log.py) in privdom's instance config, and
dagster-dbt's dbt version without a `dbt --version` process (orchestration/defs/resources.py)."""

from __future__ import annotations

import inspect
import os
import re
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import dagster as dg
import pytest
from dagster._core.events.log import EventLogEntry
from dagster._core.storage.event_log.sqlite.sqlite_event_log import SqliteEventLogStorage

from orchestration.cli import _prepare_environment, instance_config_text
from orchestration.event_log import KEPT_FILES, PrivdomSqliteEventLogStorage
from orchestration.settings import load_settings

DAYS = dg.StaticPartitionsDefinition([f"2024-01-{d:02d}" for d in range(1, 6)])


@dg.asset(partitions_def=DAYS)
def daily(context) -> None:
    context.log.info(f"partitions {context.partition_keys}")


def _job():
    return dg.Definitions(assets=[daily]).resolve_implicit_global_asset_job_def()


def _run_all_days(instance) -> str:
    result = _job().execute_in_process(
        instance=instance,
        tags={"dagster/asset_partition_range_start": "2024-01-01", "dagster/asset_partition_range_end": "2024-01-05"},
    )
    assert result.success
    return result.run_id


def _log_entry(run_id: str, message: str) -> EventLogEntry:
    return EventLogEntry(
        error_info=None, level="INFO", user_message=message, run_id=run_id, timestamp=time.time(),
        step_key=None, job_name=None, dagster_event=None,
    )


@pytest.fixture
def data_settings(tmp_path):
    settings = load_settings(tmp_path / "data")
    _prepare_environment(settings)
    return settings


def test_instance_config_puts_the_event_log_where_dagsters_default_does(data_settings, tmp_path):
    """The data directory's instance uses privdom's class on the files Dagster's default storage uses, so
    a data directory's run history from before stays readable; any directory name is a valid YAML string."""
    with dg.DagsterInstance.from_config(str(data_settings.dagster_home)) as instance:
        storage = instance.event_log_storage
        assert type(storage) is PrivdomSqliteEventLogStorage
        assert storage._base_dir == str(data_settings.dagster_home / "history" / "runs")
        assert storage.supports_global_concurrency_limits  # the warehouse pool lives in the event log
    odd = load_settings(tmp_path / "a dir: with 'quotes', \"both\", - [x] & {y}")  # ('#' is refused: settings)
    assert f'"{odd.dagster_home}/history/runs"'.replace('"both"', '\\"both\\"') in instance_config_text(odd)
    _prepare_environment(odd)
    with dg.DagsterInstance.from_config(str(odd.dagster_home)) as instance:
        assert instance.event_log_storage._base_dir == str(odd.dagster_home / "history" / "runs")


def test_history_written_by_dagsters_default_storage_is_read_and_extended(data_settings):
    """Runs logged by Dagster's own SqliteEventLogStorage (privdom's config before this class) are read by
    privdom's, and the partitions they materialized stay materialized."""
    home = data_settings.dagster_home
    privdom_config = (home / "dagster.yaml").read_text(encoding="utf-8")
    (home / "dagster.yaml").write_text(privdom_config.split("event_log_storage:")[0], encoding="utf-8")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.event_log_storage) is SqliteEventLogStorage
        old_run = _run_all_days(instance)
        old_count = len(instance.all_logs(old_run))
    (home / "dagster.yaml").write_text(privdom_config, encoding="utf-8")
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.event_log_storage) is PrivdomSqliteEventLogStorage
        assert len(instance.all_logs(old_run)) == old_count
        new_run = _run_all_days(instance)
        materialized = instance.get_materialized_partitions(daily.key)
        assert materialized == set(DAYS.get_partition_keys())
        records = instance.fetch_materializations(daily.key, limit=100).records
        assert Counter(r.run_id for r in records) == {old_run: 5, new_run: 5}
        assert len(instance.all_logs(new_run)) == old_count


def test_connections_are_kept_per_file_and_closed_beyond_the_limit(data_settings):
    with dg.DagsterInstance.from_config(str(data_settings.dagster_home)) as instance:
        storage = instance.event_log_storage
        storage.store_event(_log_entry("run-a", "one"))
        engine = storage._engines["run-a"][0]
        storage.store_event(_log_entry("run-a", "two"))
        assert storage._engines["run-a"][0] is engine  # the same engine, not a new one per write
        assert [e.user_message for e in instance.all_logs("run-a")] == ["one", "two"]
        for i in range(KEPT_FILES + 2):
            storage.store_event(_log_entry(f"run-{i}", "x"))
        assert len(storage._engines) == KEPT_FILES
        assert "run-a" not in storage._engines  # least recently used, closed
        assert _open_files(storage, "run-a") == 0 and _open_files(storage, f"run-{KEPT_FILES + 1}") > 0
        assert [e.user_message for e in instance.all_logs("run-a")] == ["one", "two"]  # reopened to read
        storage.wipe()
        assert set(storage._engines) == {"index"}  # closed before the files went; the index was emptied after
        assert instance.all_logs("run-a") == []
        storage.store_event(_log_entry("run-a", "after wipe"))
        assert [e.user_message for e in instance.all_logs("run-a")] == ["after wipe"]
    assert storage._engines == {}  # the instance's dispose closed them


def _open_files(storage, shard: str) -> int:
    """This process's open file descriptors on a shard's file (its -wal and -shm included)."""
    path = storage.path_for_shard(shard)
    fds = Path("/proc/self/fd")
    return sum(1 for fd in fds.iterdir() if os.path.realpath(fd).startswith(path)) if fds.exists() else 0


def test_a_run_file_deleted_by_another_process_is_opened_again_not_written_blind(data_settings):
    """`dagster run wipe` in another process deletes the run files this process has open. A kept connection
    would go on writing into the deleted file, where nobody reads; privdom's storage notices the file is
    gone, and what it writes next is in the new file that every process reads."""
    with dg.DagsterInstance.from_config(str(data_settings.dagster_home)) as instance:
        storage = instance.event_log_storage
        storage.store_event(_log_entry("run-a", "before"))
        wipe = (
            "import dagster as dg, sys\n"
            "with dg.DagsterInstance.from_config(sys.argv[1]) as i:\n"
            "    i.event_log_storage.wipe()\n"
        )
        subprocess.run([sys.executable, "-c", wipe, str(data_settings.dagster_home)], check=True)
        assert instance.all_logs("run-a") == []  # not the wiped event through the old file
        storage.store_event(_log_entry("run-a", "after wipe"))
    with dg.DagsterInstance.from_config(str(data_settings.dagster_home)) as other:
        assert [e.user_message for e in other.all_logs("run-a")] == ["after wipe"]


def test_a_watcher_of_the_run_file_sees_each_event_while_the_connection_stays_open(data_settings):
    """Dagster's UI follows a run live by watching the run's SQLite file for changes. With the connection
    kept open, a write goes to the write-ahead log; the checkpoint after it brings it into the file."""
    with dg.DagsterInstance.from_config(str(data_settings.dagster_home)) as instance:
        storage = instance.event_log_storage
        storage.store_event(_log_entry("live", "first"))  # creates the run's file
        seen: list[str] = []
        arrived = threading.Event()

        def callback(entry, cursor):
            seen.append(entry.user_message)
            if entry.user_message == "third":
                arrived.set()

        storage.watch("live", None, callback)
        try:
            storage.store_event(_log_entry("live", "second"))
            storage.store_event(_log_entry("live", "third"))
            assert arrived.wait(10), f"the watcher saw only {seen}"
        finally:
            storage.end_watch("live", callback)
        assert seen[-2:] == ["second", "third"]


def test_dagsters_storage_still_writes_through_the_connection_method_privdom_replaces():
    """If a Dagster upgrade stops writing through `_connect`, the saving would silently go: fail instead."""
    assert "self._connect(" in inspect.getsource(SqliteEventLogStorage.run_connection)
    assert "self._connect(" in inspect.getsource(SqliteEventLogStorage.index_connection)
    assert list(inspect.signature(SqliteEventLogStorage._connect).parameters) == ["self", "shard"]
    source = inspect.getsource(SqliteEventLogStorage.__init__)
    assert "self._db_lock" in source and "self._initialized_dbs" in source


def test_dbt_version_for_dagster_dbt_comes_from_the_package_not_a_process(monkeypatch):
    from dagster_dbt.core import resource as dagster_dbt_resource

    from orchestration.defs.resources import resources

    dbt = resources().resources["dbt"]
    output = subprocess.check_output([dbt.dbt_executable, "--version"], text=True)
    expected = re.search(r"(\d+\.\d+\.\d+)", output).group(1)

    def no_process(*args, **kwargs):
        raise AssertionError(f"dbt started as a process: {args}")

    monkeypatch.setattr(dagster_dbt_resource, "check_output", no_process)
    fresh = resources().resources["dbt"]
    assert str(fresh._cli_version) == expected
    # dagster-dbt still reads it from the property privdom overrides
    assert "self._cli_version" in inspect.getsource(type(fresh).__mro__[1].cli)
