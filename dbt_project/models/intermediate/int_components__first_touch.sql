{{ config(
    tags=['identity_input'],
    materialized=privdom_incremental_materialization(),
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ privdom_first_touch_delete_scope() }}",
    post_hook="{{ privdom_mark_graph_consumed('int_components__first_touch') }}"
) }}
-- One row per identity component: when and how it was acquired (SPEC §4 "Acquired"). A component with no
-- acquiring touch (only ending or consent events, or only appearances as a referrer or as the referee of a
-- referral that never reached clicked) is acquired at its earliest row, channel unknown.
-- Incremental on DuckDB: a build computes again only the components in privdom_first_touch_scope() (those
-- the identity graph wrote again since this model last ran, and the referees of their referrals), after the
-- pre-hook deleted their rows; everything when the graph was built in full since (docs/DECISIONS.md).
with
{%- if is_incremental() %}
records as (
    select * from {{ source('identity', 'int_identity__records') }}
    where {{ privdom_graph_full_recompute('int_components__first_touch') }}
        or component_id in ({{ privdom_first_touch_scope() }})
),

touches as (
    {{ privdom_touches('records', source('identity', 'int_identity__records')) }}
),
{%- else %}
touches as (
    select * from {{ ref('int_touches__unioned') }}
),

records as (
    select * from {{ source('identity', 'int_identity__records') }}
),
{%- endif %}

-- Only touches at their component's earliest touched_at can come first, so the others are dropped before the
-- ranking: at 1M customers the window over all 11M touches cost more than this aggregate and join (8.2 s ->
-- 6.0 s for the model, docs/performance.md). touched_at is never NULL (the contract requires occurred_at,
-- created_at and updated_at); were one NULL, min() would skip it, so a timed touch wins on every engine (Spark
-- sorts NULLs first, DuckDB last), and NULL matches NULL when a component has no timed touch at all.
earliest_touch_times as (
    select component_id, min(touched_at) as touched_at
    from touches
    group by component_id
),

earliest_touches as (
    select t.*
    from touches as t
    inner join earliest_touch_times as m
        on m.component_id = t.component_id
        and m.touched_at is not distinct from t.touched_at
),

ranked_touches as (
    {{ first_row_per('earliest_touches', 'component_id', 'touched_at, touch_priority, tie_breaker, record_id') }}
),

-- Earliest row of each component, whatever it was: fallback acquisition time.
record_times as (
    select r.component_id, e.occurred_at as seen_at
    from records as r
    inner join {{ ref('stg_channel_events') }} as e
        on r.source = 'channel_events' and r.record_id = e.event_id
    union all
    select r.component_id, o.created_at as seen_at
    from records as r
    inner join {{ ref('stg_orders') }} as o
        on r.source = 'orders' and r.record_id = o.order_id
    union all
    select r.component_id, v.first_seen_at as seen_at
    from records as r
    inner join (
        select referral_id, min(least(invited_at, updated_at)) as first_seen_at
        from {{ ref('stg_referrals__versions') }}
        group by referral_id
    ) as v
        on r.source = 'referrals' and r.record_id = v.referral_id
),

earliest_rows as (
    select component_id, min(seen_at) as first_seen_at
    from record_times
    group by component_id
)

select
    e.component_id,
    coalesce(t.touched_at, e.first_seen_at) as acquired_at,
    coalesce(t.acquisition_channel, 'unknown') as acquisition_channel,
    t.acquisition_campaign,
    t.referrer_component_id as acquisition_referrer_component_id,
    t.touch_source as acquisition_source,
    t.record_id as acquisition_record_id,
    e.first_seen_at
from earliest_rows as e
left join ranked_touches as t
    on t.component_id = e.component_id
