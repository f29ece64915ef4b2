"""Schedules and sensors: the pipeline running itself day after day.

- ``landing_files_sensor`` (every minute): when files appear or change under landing/, one run of the whole
  graph for the batch dates of those files (a partition range; the ingest assets load it in one step).
- ``daily_full_graph`` (02:00 Asia/Shanghai): one unpartitioned run of the whole graph, which loads every
  new file whatever its date (including files the sensor missed or whose run failed) and moves the data's
  end forward for the marts and segments.

- ``abandoned_cli_runs_sensor`` (every minute, on by default): housekeeping, no run of its own; marks the runs of
  a killed `privdom run` failed and frees the pool slot they kept, so the runs queued behind it go on.

The first two start stopped: turn them on in the UI (Automation) or with `dagster schedule start` / `dagster sensor
start`; they need the Dagster daemon, which `privdom ui` (dagster dev) runs.
"""

from __future__ import annotations

import json
import time

import dagster as dg

from orchestration import landing
from orchestration.defs.partitions import partition_keys_of
from orchestration.defs.resources import current_settings
from orchestration.settings import TIMEZONE

WHOLE_GRAPH = dg.AssetSelection.all()

whole_graph = dg.define_asset_job(
    name="whole_graph",
    selection=WHOLE_GRAPH,
    description=(
        "Every asset and check: ingest → dbt build → checks → exports, as `privdom run` runs them. "
        "Unpartitioned, the ingest steps load every new landing file; with a partition or a range, the new "
        "files of those batch dates."
    ),
)
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def run_request_for(change: landing.LandingChange, settled_before_ns: int | None = None) -> dg.RunRequest:
    """One run for all changed files: the partition range of their batch dates (unpartitioned if none is a
    partition: undated files, or dates before partitions_start_date). With `settled_before_ns`, the run's ingest
    steps leave files modified after it for a later run (landing.SETTLED_BEFORE_TAG): a file still being copied
    in may be of a date the run loads."""
    keys = partition_keys_of(change.batch_dates)
    tags = {"privdom/trigger": "landing_files_sensor", "privdom/new_files": str(len(change.paths))}
    if settled_before_ns is not None:
        tags[landing.SETTLED_BEFORE_TAG] = str(settled_before_ns)
    if keys and len(keys) == len(change.batch_dates) and not change.undated:
        if keys[0] == keys[-1]:
            return dg.RunRequest(run_key=change.digest, partition_key=keys[0], tags=tags)
        tags.update({RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]})
    return dg.RunRequest(run_key=change.digest, tags=tags)


@dg.sensor(
    name="landing_files_sensor",
    target=whole_graph,
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Starts a run of the whole graph for the batch dates of new or changed landing files.",
)
def landing_files_sensor(context: dg.SensorEvaluationContext):
    settings = current_settings()
    listed_at_ns = time.time_ns()
    current = landing.snapshot(settings.landing_dir)
    previous = json.loads(context.cursor) if context.cursor else {}
    now_ns = time.time_ns()
    change = landing.changes(previous, current, now_ns)
    # moved on by every tick, also one that skips: its time is what keeps the cursor small
    context.update_cursor(json.dumps(landing.cursor_after(previous, current, change, listed_at_ns),
                                     sort_keys=True, separators=(",", ":")))
    if change is None:
        return dg.SkipReason(f"no new landing files in {settings.landing_dir}")
    if not change.paths:
        return dg.SkipReason(
            f"{len(change.waiting)} landing file(s) modified in the last {landing.SETTLE_NS // 1_000_000_000} s, "
            f"perhaps still being copied in, wait for a later tick: {', '.join(change.waiting[:5])}"
        )
    if change.waiting:
        context.log.info(f"{len(change.waiting)} landing file(s) modified in the last "
                         f"{landing.SETTLE_NS // 1_000_000_000} s wait for a later tick: {', '.join(change.waiting[:5])}")
    context.log.info(
        f"{len(change.paths)} new or changed landing file(s), batch dates "
        f"{change.batch_dates[0] if change.batch_dates else '-'} .. {change.batch_dates[-1] if change.batch_dates else '-'}"
    )
    return run_request_for(change, now_ns - landing.SETTLE_NS)


@dg.sensor(
    name="abandoned_cli_runs_sensor",
    minimum_interval_seconds=60,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description=(
        "Housekeeping, on while `privdom ui` runs: a `privdom run` whose process was killed (kill -9, the OOM "
        "killer, a closed container) stays Started and keeps the pool `warehouse`, and every UI, sensor and "
        "schedule run queued behind it for good. When no `privdom run` holds the data directory's run lock, such "
        "runs are marked failed and their pool slots freed, as the next `privdom run` does."
    ),
)
def abandoned_cli_runs_sensor(context: dg.SensorEvaluationContext):
    from orchestration.locking import RUN_LOCK_FILE_NAME, WarehouseBusyTimeout, warehouse_lock
    from orchestration.runner import _fail_abandoned_runs

    settings = current_settings()
    try:
        # not waited for: a live `privdom run` (or unload, prune) holds it, and its runs are its own
        with warehouse_lock(settings.data_dir, name=RUN_LOCK_FILE_NAME, what="privdom ui (abandoned runs)",
                            log=lambda message: None, timeout=0):
            done = _fail_abandoned_runs(context.instance, by="`privdom ui`'s housekeeping sensor abandoned_cli_runs_sensor")
    except WarehouseBusyTimeout:
        return dg.SkipReason("a privdom command holds the run lock: its runs are alive")
    for line in done:
        context.log.warning(line)
    return dg.SkipReason("; ".join(done) if done else "no abandoned `privdom run` run")


daily_full_graph = dg.ScheduleDefinition(
    name="daily_full_graph",
    cron_schedule="0 2 * * *",
    execution_timezone=TIMEZONE,
    target=whole_graph,
    default_status=dg.DefaultScheduleStatus.STOPPED,
    description="Every day at 02:00 Asia/Shanghai: the whole graph, every new landing file, unpartitioned.",
    tags={"privdom/trigger": "daily_full_graph"},
)

