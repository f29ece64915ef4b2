"""Where a launched run's steps execute: in the run's own process, one after another.

Every step that touches the warehouse is in the `warehouse` pool (one slot: DuckDB allows one writing process
per file), and every executable step touches it, so steps never run side by side. Dagster's default for a
launched run (the UI, the daemon's schedule and sensor runs, `dg launch`) is the multiprocess executor, a new
process per step: each imports Dagster, dbt and these definitions again (~5 s a step on 2 cores, about a
minute a run) to run one step at a time anyway. `privdom run` executes in-process too
(`execute_in_process`). Once steps can run in parallel (the warehouse on Spark, docs/scale-out.md), set
`dg.multiprocess_executor` or a cluster executor here.
"""

import dagster as dg

defs = dg.Definitions(executor=dg.in_process_executor)
