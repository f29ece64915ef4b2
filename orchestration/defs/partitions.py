"""Daily partitions by batch date (SPEC §2: a landing file is a batch of one Asia/Shanghai day).

A partition of raw/<source> is "every file delivered for that batch date is ingested". Partitioned runs
(the landing sensor, backfills) load the new files of their dates; an unpartitioned run (`privdom run`,
the daily schedule) loads every new file and records the batch dates it loaded as partitions.
"""

from __future__ import annotations

import datetime as dt

import dagster as dg

from orchestration.defs.resources import current_settings
from orchestration.settings import TIMEZONE

# end_offset=1: today's (Shanghai) batch is a partition as soon as its files arrive.
BATCH_DATE_PARTITIONS = dg.DailyPartitionsDefinition(
    start_date=current_settings().partitions_start_date, timezone=TIMEZONE, end_offset=1
)


def batch_date_range(context: dg.AssetExecutionContext) -> tuple[dt.date, dt.date] | None:
    """The run's batch dates (first, last), or None for an unpartitioned run (every new file)."""
    if not context.has_partition_key and not context.has_partition_key_range:
        return None
    keys = context.partition_key_range
    return dt.date.fromisoformat(keys.start), dt.date.fromisoformat(keys.end)


def partition_keys_of(dates) -> list[str]:
    """The given batch dates that are partitions (a date before partitions_start_date is not)."""
    first = BATCH_DATE_PARTITIONS.get_first_partition_key()
    last = BATCH_DATE_PARTITIONS.get_last_partition_key()
    keys = {d.isoformat() for d in dates if d is not None}
    return sorted(k for k in keys if first is not None and first <= k <= last)
