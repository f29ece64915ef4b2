-- One row per customer: purchases and the funnel steps that depend on them (SPEC §4), all as of the data's end.
-- An order counts as a purchase, revenue and activity at paid_at, when its status is paid-like. Windows are
-- exact elapsed time [t, t + N × 24 h) with N from the dbt vars.
--   is_activated  : first paid order within activation_window_days of acquired_at
--   is_retained   : activated, and a paid-like order or an engage event in
--                   [acquired_at + retention_start_days, acquired_at + retention_end_days)
--   is_repurchased: activated, and another paid-like order, not refunded, paid in
--                   [first_paid_at, first_paid_at + repurchase_window_days)
-- Nothing here depends on the data's end or on other customers, so on DuckDB the model is incremental: a build
-- computes again the customers of the components the identity graph wrote again since this model last ran,
-- after the pre-hook deleted their rows and those of keys that no longer exist. A customer's orders, engage
-- events and acquired_at can change only then: a new order version or event (or an identical re-delivery that
-- re-ranks a tie) makes the graph write its record again, and keys and first touches change only for changed
-- components (docs/DECISIONS.md, "Steps after the graph take in its changes"). The window vars are in the
-- incremental fingerprint: changing one rebuilds it.
{{ config(
    materialized=privdom_incremental_materialization(),
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ privdom_customers_delete_scope('int_customers__purchases') }}",
    post_hook="{{ privdom_mark_graph_consumed('int_customers__purchases', after=['int_customer_keys', 'int_components__first_touch', 'int_orders__customers', 'int_channel_events__customers']) }}"
) }}

with customers as (
    select customer_key, acquired_at from {{ ref('int_customers__keyed') }}
    {%- if is_incremental() %}
    where customer_key in ({{ privdom_customers_scope('int_customers__purchases') }})
    {%- endif %}
),

paid_orders as (
    select *
    from {{ ref('int_orders__customers') }}
    where is_paid_like and paid_at is not null and customer_key is not null
    {%- if is_incremental() %}
        and customer_key in (select customer_key from customers)
    {%- endif %}
),

engage_events as (
    select customer_key, occurred_at
    from {{ ref('int_channel_events__customers') }}
    where event_type = 'engage' and customer_key is not null
    {%- if is_incremental() %}
        and customer_key in (select customer_key from customers)
    {%- endif %}
),

first_paid as (
    {{ first_row_per('paid_orders', 'customer_key', 'paid_at, order_id', 'customer_key, order_id, paid_at') }}
),

order_totals as (
    select
        customer_key,
        count(*) as paid_orders,
        max(paid_at) as last_paid_at,
        sum(net_revenue) as net_revenue,
        cast(sum(points_redeemed) as bigint) as points_redeemed  -- BIGINT, not DuckDB's HUGEINT sum
    from paid_orders
    group by customer_key
),

last_engage as (
    select customer_key, max(occurred_at) as last_engaged_at
    from engage_events
    group by customer_key
),

base as (
    select
        c.customer_key,
        c.acquired_at,
        f.order_id as first_paid_order_id,
        f.paid_at as first_paid_at,
        t.last_paid_at,
        coalesce(t.paid_orders, 0) as paid_orders,
        cast(coalesce(t.net_revenue, 0) as decimal(18, 2)) as net_revenue,
        coalesce(t.points_redeemed, 0) as points_redeemed,
        e.last_engaged_at,
        coalesce(
            f.paid_at >= c.acquired_at
            and f.paid_at < {{ privdom_add_days('c.acquired_at', var('activation_window_days')) }},
            false
        ) as is_activated
    from customers as c
    left join first_paid as f
        on f.customer_key = c.customer_key
    left join order_totals as t
        on t.customer_key = c.customer_key
    left join last_engage as e
        on e.customer_key = c.customer_key
),

retention_activity as (
    select distinct b.customer_key
    from base as b
    inner join (
        select customer_key, paid_at as active_at from paid_orders
        union all
        select customer_key, occurred_at from engage_events
    ) as a
        on a.customer_key = b.customer_key
    where b.is_activated
      and a.active_at >= {{ privdom_add_days('b.acquired_at', var('retention_start_days')) }}
      and a.active_at < {{ privdom_add_days('b.acquired_at', var('retention_end_days')) }}
),

repurchases as (
    select distinct b.customer_key
    from base as b
    inner join paid_orders as o
        on o.customer_key = b.customer_key
    where b.is_activated
      and o.order_id <> b.first_paid_order_id
      and not o.is_fully_refunded
      and o.paid_at >= b.first_paid_at
      and o.paid_at < {{ privdom_add_days('b.first_paid_at', var('repurchase_window_days')) }}
)

select
    b.customer_key,
    b.first_paid_at,
    b.first_paid_order_id,
    b.last_paid_at,
    b.paid_orders,
    b.net_revenue,
    b.points_redeemed,
    b.last_engaged_at,
    -- last paid order or engage event; acquired_at when there is none
    case
        when b.last_paid_at is null and b.last_engaged_at is null then b.acquired_at
        when b.last_engaged_at is null or b.last_paid_at >= b.last_engaged_at then b.last_paid_at
        else b.last_engaged_at
    end as last_activity_at,
    b.is_activated,
    r.customer_key is not null as is_retained,
    p.customer_key is not null as is_repurchased
from base as b
left join retention_activity as r
    on r.customer_key = b.customer_key
left join repurchases as p
    on p.customer_key = b.customer_key
