-- One row per Asia/Shanghai calendar month from the month of the data's first timestamp to the month of its
-- end (SPEC §4: "months from the data's first timestamp to its end"). Monthly marts are snapshots at each
-- month's end — the instant the next month begins — or at the data's end for the month that holds it.
with bounds as (
    select
        {{ privdom_local_period_start('month', 'data_start_at') }} as first_month,
        {{ privdom_local_period_start('month', 'data_end_at') }} as last_month,
        data_start_at,
        data_end_at
    from {{ ref('int_data_end') }}
    where data_end_at is not null
),

months as (
    {{ privdom_month_series('bounds', 'first_month', 'last_month') }}
)

select
    m.period_month,
    {{ privdom_local_date_start('m.period_month') }} as month_start_at,
    {{ privdom_local_date_start(privdom_add_months('m.period_month', 1)) }} as next_month_start_at,
    m.period_month = b.last_month as holds_data_end,
    case
        when m.period_month = b.last_month then b.data_end_at
        else {{ privdom_local_date_start(privdom_add_months('m.period_month', 1)) }}
    end as snapshot_at
from months as m
cross join bounds as b
