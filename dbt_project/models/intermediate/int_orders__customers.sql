-- One row per order in its current state (SPEC §2), with its buyer's customer_key and net revenue (SPEC §4):
-- gross − discount − refund for paid-like statuses (paid, shipped, completed, refunded, partially_refunded), else 0.
-- Incremental on DuckDB (delete+insert by order_id): a build writes again the orders whose current version
-- came, first or again (stg_orders.last_file_id: an identical re-delivery can make an old version current
-- again), in a file newer than any it holds (file_id) and the orders of the components the identity graph wrote
-- again since this model last ran (their buyer's customer_key may have changed; no other order's can, and a
-- new version, or an identical re-delivery that re-ranks a tie, makes the graph write its order's record
-- again); everything when the graph was built in full
-- since (docs/DECISIONS.md, "Steps after the graph take in its changes").
{{ config(
    materialized=privdom_incremental_materialization(),
    incremental_strategy='delete+insert',
    unique_key='order_id',
    on_schema_change='fail',
    post_hook="{{ privdom_mark_graph_consumed('int_orders__customers', after=['int_customer_keys']) }}"
) }}

with
{%- if is_incremental() %}
changed_buyers as (
    select record_id from {{ source('identity', 'int_identity__records') }}
    where source = 'orders' and role = 'buyer'
        and component_id in ({{ privdom_graph_changed_components('int_orders__customers') }})
),
{%- endif %}

orders as (
    select * from {{ ref('stg_orders') }}
    {%- if is_incremental() %}
    where {{ privdom_graph_full_recompute('int_orders__customers') }}
        or last_file_id > (select coalesce(max(file_id), 0) from {{ this }})
        or order_id in (select record_id from changed_buyers)
    {%- endif %}
),

-- every buyer of the orders written (an order of a newer file keeps its buyer's key even when no graph build
-- has logged its component yet: a dbt build by hand)
buyers as (
    select r.record_id, k.customer_key
    from {{ source('identity', 'int_identity__records') }} as r
    inner join {{ source('identity', 'int_customer_keys') }} as k
        on k.component_id = r.component_id
    where r.source = 'orders' and r.role = 'buyer'
    {%- if is_incremental() %}
        and r.record_id in (select order_id from orders)
    {%- endif %}
),

flagged as (
    select
        o.*,
        o.status in ('paid', 'shipped', 'completed', 'refunded', 'partially_refunded') as is_paid_like
    from orders as o
)

select
    o.order_id,
    o.file_id,
    b.customer_key,
    o.status,
    o.channel,
    o.created_at,
    o.paid_at,
    o.updated_at,
    o.is_paid_like,
    o.status = 'refunded' as is_fully_refunded,
    o.gross_amount,
    o.discount_amount,
    o.refund_amount,
    cast(
        case
            when o.is_paid_like
                then coalesce(o.gross_amount, 0) - coalesce(o.discount_amount, 0) - coalesce(o.refund_amount, 0)
            else 0
        end as decimal(18, 2)
    ) as net_revenue,
    coalesce(o.points_redeemed, 0) as points_redeemed,
    o.referral_code
from flagged as o
left join buyers as b
    on b.record_id = o.order_id
