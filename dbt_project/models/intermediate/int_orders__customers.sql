-- One row per order in its current state (SPEC §2), with its buyer's customer_key and net revenue (SPEC §4):
-- gross − discount − refund for paid-like statuses (paid, shipped, completed, refunded, partially_refunded), else 0.
with orders as (
    select * from {{ ref('stg_orders') }}
),

buyers as (
    select r.record_id, k.customer_key
    from {{ source('identity', 'int_identity__records') }} as r
    inner join {{ source('identity', 'int_customer_keys') }} as k
        on k.component_id = r.component_id
    where r.source = 'orders' and r.role = 'buyer'
),

flagged as (
    select
        o.*,
        o.status in ('paid', 'shipped', 'completed', 'refunded', 'partially_refunded') as is_paid_like
    from orders as o
)

select
    o.order_id,
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
