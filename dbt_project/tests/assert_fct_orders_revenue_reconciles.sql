{{ config(meta={'dagster': {'ref': {'name': 'fct_orders'}}}) }}
-- SPEC §4 "Net revenue": the order fact adds up, to the cent, to the paid-like orders in staging (gross −
-- discount − refund of each order's current state). Returns a row when it does not.
select m.total as fct_orders_net_revenue, s.total as staged_net_revenue
from (
    select cast(coalesce(sum(net_revenue), 0) as decimal(38, 2)) as total from {{ ref('fct_orders') }}
) as m
cross join (
    select cast(coalesce(sum(gross_amount - coalesce(discount_amount, 0) - coalesce(refund_amount, 0)), 0) as decimal(38, 2)) as total
    from {{ ref('stg_orders') }}
    where status in ('paid', 'shipped', 'completed', 'refunded', 'partially_refunded')
) as s
where m.total <> s.total
