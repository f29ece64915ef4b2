"""A step waiting for a pool slot sleeps between its claim checks, instead of spinning.

Dagster 1.13's ``InstanceConcurrencyContext.interval_to_next_pending_claim_check`` returns ``min(0, ...)``, which
is never above 0, so ``ActiveExecution.sleep_til_ready`` never sleeps: a run whose step waits for the pool
`warehouse` (another run holds it) loops at ~80 % of a core until the slot is free. The wait review saw a
`privdom run` spin like that for ten minutes behind the slot of a killed `dg launch` run, taking a core from the
run it waited for on a 2-core machine. The interval meant is the time to the next claim check (Dagster backs off
from 0 s to 15 s); it is used here, at most ``MAX_SLEEP_SECONDS`` so that a Ctrl-C (which the in-process
executor does not look at while it waits: runner._PoolWaitReporter stops the run) still ends it soon.

Applied when the definitions are loaded (orchestration/defs/resources.py), so in `privdom run`, the UI's and
`dg launch`'s run workers alike. Left alone when Dagster's class no longer looks as it did (a fixed release):
tests/test_pool_wait.py then fails, saying so.
"""

from __future__ import annotations

import time

MAX_SLEEP_SECONDS = 1.0


def _interval_to_next_pending_claim_check(self) -> float:
    if not self._pending_claims:
        return 0.0
    now = time.time()
    waits = [ready_at - now for ready_at in self._pending_timeouts.values()]
    # a claim without a timeout is checked now; else sleep until the first one is due, at most MAX_SLEEP_SECONDS
    if not waits or len(waits) < len(self._pending_claims):
        return 0.0
    return max(0.0, min(MAX_SLEEP_SECONDS, *waits))


def apply() -> bool:
    """Install the interval on Dagster's class; whether it is in place."""
    try:
        from dagster._core.execution.plan.instance_concurrency_context import InstanceConcurrencyContext
    except ImportError:
        return False
    current = getattr(InstanceConcurrencyContext, "interval_to_next_pending_claim_check", None)
    if current is _interval_to_next_pending_claim_check:
        return True
    if current is None or not hasattr(InstanceConcurrencyContext, "claim"):
        return False
    InstanceConcurrencyContext.interval_to_next_pending_claim_check = _interval_to_next_pending_claim_check
    return True
