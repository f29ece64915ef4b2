-- One row per order in its current state (SPEC §2: the latest version), with its buyer and the calendar
-- fields the monthly marts share. Net revenue is defined once, in int_orders__customers (SPEC §4: gross −
-- discount − refund for paid-like statuses, 0 otherwise). An order touches its buyer at created_at and counts
-- as a purchase, revenue and activity at paid_at; months are Asia/Shanghai calendar months whatever offset the
-- raw timestamps carried.
with orders as (
    select * from {{ ref('int_orders__customers') }}
),

purchases as (
    select customer_key, first_paid_order_id, first_paid_at
    from {{ ref('int_customers__purchases') }}
),

dated as (
    select
        o.*,
        {{ privdom_local_period_start('day', 'o.created_at') }} as created_date,
        {{ privdom_local_period_start('month', 'o.created_at') }} as created_month,
        case when o.is_paid_like then {{ privdom_local_period_start('day', 'o.paid_at') }} end as paid_date,
        case when o.is_paid_like then {{ privdom_local_period_start('month', 'o.paid_at') }} end as paid_month,
        {{ privdom_local_period_start('month', 'p.first_paid_at') }} as purchase_cohort_month,
        coalesce(o.order_id = p.first_paid_order_id, false) as is_first_paid_order
    from orders as o
    left join purchases as p
        on p.customer_key = o.customer_key
)

select
    order_id,
    customer_key,
    status,
    channel,
    created_at,
    paid_at,
    updated_at,
    created_date,
    created_month,
    paid_date,
    paid_month,
    is_paid_like,
    is_fully_refunded,
    is_first_paid_order,
    purchase_cohort_month,
    case
        when is_paid_like then {{ privdom_months_between('purchase_cohort_month', 'paid_month') }}
    end as months_since_first_paid,
    gross_amount,
    discount_amount,
    refund_amount,
    net_revenue,
    points_redeemed,
    -- free text from the sources: invite and distributor codes are often the inviter's phone (REF13612349993)
    {{ privdom_mask_phones('referral_code') }} as referral_code
from dated
