{{ config(meta={'dagster': {'ref': {'name': 'dim_customers'}}}) }}
-- SPEC §4 "Net revenue": the customers' net revenue adds up, to the cent, to the net revenue of the paid-like
-- orders in staging (gross − discount − refund of each order's current state). Returns a row when it does not.
with customers as (
    select coalesce(sum(net_revenue), 0) as total from {{ ref('dim_customers') }}
),

orders as (
    select coalesce(sum(gross_amount - coalesce(discount_amount, 0) - coalesce(refund_amount, 0)), 0) as total
    from {{ ref('stg_orders') }}
    where status in ('paid', 'shipped', 'completed', 'refunded', 'partially_refunded')
)

select c.total as dim_customers_net_revenue, o.total as staging_net_revenue
from customers as c
cross join orders as o
where cast(c.total as decimal(38, 2)) <> cast(o.total as decimal(38, 2))
