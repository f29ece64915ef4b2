"""Objects that live as long as the process, kept out of the garbage collector's full passes.

Python's cyclic garbage collector now and then makes a full pass over every object it tracks. Once Dagster's
definitions (with dbt's manifest) are built and Great Expectations is imported, that is several hundred
thousand objects that stay alive to the end: a new day on a 1M-customer history spent 1.50 s in 11 such passes
(docs/performance.md, "Eighteenth session"). `gc.freeze()` moves every object tracked at that moment into
the permanent generation, which later passes skip: 0.41 s in 12 passes, the same cycles freed.

Only in a process that runs one command and ends: the `privdom` console script (orchestration.cli.run)
turns it on (`privdom run`, and `privdom demo`, which generates and then runs once). There `freeze()` is called
twice: when the run's definitions are built (orchestration/runner.py) and when GX is first imported
(orchestration/quality), which is inside the first ingest step with rows to validate when the run validates in
its own process (PRIVDOM_GX_WARM=0). The validation worker of a run (orchestration/validation_worker.py), a
process for that run only, turns it on too: there GX's import is frozen as it warms up. What is garbage at
such a moment is kept instead of freed (~200 objects measured after the definitions, ~10 after GX's import),
and so is what is alive then and becomes garbage in a reference cycle later: at the second freeze, that step's
own objects (its context, the ingest's report and ledger rows; its Parquet parts are closed explicitly), one
step's worth. Everywhere else (a test session, `dagster dev`'s code server, a notebook) `freeze()` does
nothing: a process that runs many runs would keep each run's garbage.
"""

from __future__ import annotations

import gc

_enabled = False


def enable() -> None:
    """Let `freeze()` freeze: for a process that runs one command and exits (orchestration.cli.run)."""
    global _enabled
    _enabled = True


def enabled() -> bool:
    return _enabled


def freeze() -> bool:
    """Move every object tracked now into the permanent generation, where this process allows it (`enable`).
    Returns whether it did."""
    if not _enabled:
        return False
    gc.freeze()
    return True
