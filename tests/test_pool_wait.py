"""`privdom run` says on the terminal when a step waits for the pool `warehouse` held by another run (a UI,
schedule or `dg launch` run), who holds it and when the wait ends, and Ctrl-C stops such a wait. The review had
`privdom run` print nothing for ten minutes behind the slot of a killed `dg launch` run, at ~80 % CPU, ignoring
Ctrl-C and SIGTERM: Dagster's in-process executor logs the wait at DEBUG (into the run log) and never looks at a
captured interrupt while it waits."""

from __future__ import annotations

import os
import signal
import threading
import time

import dagster as dg
from dagster._core.storage.dagster_run import DagsterRun
from dagster._core.utils import make_new_run_id

from orchestration.runner import _PoolWaitReporter


@dg.asset(pool="warehouse")
def _writes_the_warehouse():
    return 1


def _run(instance, run_id):
    job = dg.Definitions(assets=[_writes_the_warehouse]).resolve_implicit_global_asset_job_def()
    return job.execute_in_process(instance=instance, run_id=run_id, raise_on_error=False)


def _blocked_instance(tmp_path):
    """An instance whose one `warehouse` slot a run launched from the UI (still started) holds."""
    instance = dg.instance_for_test(temp_dir=str(tmp_path), overrides={"concurrency": {"pools": {"default_limit": 1}}})
    held = instance.__enter__()
    blocker = held.add_run(DagsterRun(job_name="whole_graph", run_id=make_new_run_id(), status=dg.DagsterRunStatus.STARTED,
                                      tags={"dagster/from_ui": "true"}))
    held.event_log_storage.set_concurrency_slots("warehouse", 1)
    assert held.event_log_storage.claim_concurrency_slot("warehouse", blocker.run_id, "dbt_models").is_claimed
    return instance, held, blocker


def _wait_for(lines, text, seconds=60.0):
    deadline = time.monotonic() + seconds
    while not any(text in line for line in lines):
        assert time.monotonic() < deadline, (text, lines)
        time.sleep(0.1)


def test_a_run_waiting_for_the_pool_says_who_holds_it_and_when_it_is_free(tmp_path):
    instance, held, blocker = _blocked_instance(tmp_path)
    lines: list[str] = []
    run_id = make_new_run_id()

    def free_later():
        _wait_for(lines, "waiting for the warehouse")
        held.event_log_storage.free_concurrency_slots_for_run(blocker.run_id)

    freer = threading.Thread(target=free_later, daemon=True)
    freer.start()
    try:
        with _PoolWaitReporter(held, run_id, lines.append, poll_seconds=0.2, told_after_seconds=0) as reporter:
            result = _run(held, run_id)
        freer.join(5)
    finally:
        instance.__exit__(None, None, None)
    assert result.success and not reporter.interrupted
    waiting = [line for line in lines if "waiting for the warehouse" in line]
    assert len(waiting) == 1, lines
    assert f"run {blocker.run_id} (step dbt_models; launched by the UI or `dg launch`" in waiting[0]
    assert "status STARTED" in waiting[0] and "Ctrl-C" in waiting[0]
    assert "_writes_the_warehouse starts when it is free" in waiting[0]
    assert any("the warehouse is free after" in line for line in lines[lines.index(waiting[0]):]), lines


def test_ctrl_c_stops_a_run_waiting_for_the_pool(tmp_path):
    instance, held, blocker = _blocked_instance(tmp_path)
    lines: list[str] = []
    run_id = make_new_run_id()

    def interrupt_later():
        _wait_for(lines, "waiting for the warehouse")
        os.kill(os.getpid(), signal.SIGINT)  # as Ctrl-C: Dagster's handler records it

    interrupter = threading.Thread(target=interrupt_later, daemon=True)
    interrupter.start()
    started = time.monotonic()
    try:
        with _PoolWaitReporter(held, run_id, lines.append, poll_seconds=0.2, told_after_seconds=0) as reporter:
            result = _run(held, run_id)
        interrupter.join(5)
        assert held.get_run_by_id(run_id).status == dg.DagsterRunStatus.FAILURE
        # the interrupted run left no claim behind it
        info = held.event_log_storage.get_concurrency_info("warehouse")
        assert {s.run_id for s in info.claimed_slots} == {blocker.run_id}
    finally:
        instance.__exit__(None, None, None)
    assert time.monotonic() - started < 60, "the interrupt was not heeded"
    assert reporter.interrupted and not result.success
    assert any("interrupted while waiting for the warehouse" in line for line in lines), lines


@dg.asset
def _first():
    return 1


@dg.asset
def _second(_first):
    raise RuntimeError("no")


def test_each_step_is_told_as_it_starts_and_a_failed_one_as_it_fails(tmp_path):
    """Dagster's log goes to the run log, so the terminal showed nothing for a whole run (44 s at 300 customers ×
    60 days; the benchmark's full run takes minutes) until the summary: each step now says so as it starts."""
    lines: list[str] = []
    job = dg.Definitions(assets=[_first, _second]).resolve_implicit_global_asset_job_def()
    run_id = make_new_run_id()
    with dg.instance_for_test(temp_dir=str(tmp_path)) as instance:
        with _PoolWaitReporter(instance, run_id, lines.append, poll_seconds=0.1, steps=True):
            job.execute_in_process(instance=instance, run_id=run_id, raise_on_error=False)
    assert [line.split(" (")[0] for line in lines] == [
        "privdom: step 1 of 2: _first", "privdom: step 2 of 2: _second", "privdom: step _second failed"], lines


def test_a_step_waiting_for_a_slot_sleeps_until_its_next_claim_check():
    """Dagster 1.13 returned min(0, ...) as the time to a waiting step's next claim check, so its run loop never
    slept: ~80 % of a core for as long as the wait (ten minutes in the review). The definitions install the
    interval meant (orchestration/pool_wait.py), at most a second so that a Ctrl-C is heeded soon."""
    import types

    import orchestration.defs.resources  # noqa: F401 - loading the definitions installs it
    from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext

    from orchestration import pool_wait

    assert InstanceConcurrencyContext.interval_to_next_pending_claim_check is pool_wait._interval_to_next_pending_claim_check
    now = time.time()
    context = types.SimpleNamespace(_pending_claims={"a", "b"}, _pending_timeouts={"a": now + 0.5, "b": now + 9})
    assert 0.3 < pool_wait._interval_to_next_pending_claim_check(context) <= 0.5
    context._pending_timeouts = {"a": now + 9, "b": now + 12}
    assert pool_wait._interval_to_next_pending_claim_check(context) == pool_wait.MAX_SLEEP_SECONDS
    context._pending_timeouts = {"a": now - 1, "b": now + 12}  # one is due: checked now
    assert pool_wait._interval_to_next_pending_claim_check(context) == 0.0
    context._pending_timeouts = {"a": now + 9}  # one has no timeout yet: checked now
    assert pool_wait._interval_to_next_pending_claim_check(context) == 0.0
    context._pending_claims = set()
    assert pool_wait._interval_to_next_pending_claim_check(context) == 0.0
