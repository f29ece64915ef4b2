-- One row: the data's end, "now" for open windows, recency, lifecycle and segments (SPEC §4). It is the latest
-- timestamp of any loaded row: every timestamp column of every staged row and version (channel events'
-- occurred_at; orders' created_at, paid_at, updated_at; referrals' invited_at, updated_at). Never the wall clock.
-- data_start_at is the earliest of the same timestamps.
with all_timestamps as (
    select occurred_at as ts from {{ ref('stg_channel_events') }}
    union all
    select created_at from {{ ref('stg_orders__versions') }}
    union all
    select paid_at from {{ ref('stg_orders__versions') }}
    union all
    select updated_at from {{ ref('stg_orders__versions') }}
    union all
    select invited_at from {{ ref('stg_referrals__versions') }}
    union all
    select updated_at from {{ ref('stg_referrals__versions') }}
)

select
    max(ts) as data_end_at,
    min(ts) as data_start_at
from all_timestamps
