{{ config(meta={'dagster': {'ref': {'name': 'fct_fission_summary'}}}) }}
-- The fission summary's converted revenue (all mechanisms) is, to the cent, the net revenue of the orders of the
-- converted, non-self referrals, each order once per invitation month (several referrals may name one order).
-- Returns a row when it is not.
select f.total as fission_converted_net_revenue, r.total as converted_orders_net_revenue
from (
    select cast(coalesce(sum(converted_net_revenue), 0) as decimal(38, 2)) as total
    from {{ ref('fct_fission_summary') }}
    where mechanism = 'all'
) as f
cross join (
    select cast(coalesce(sum(o.net_revenue), 0) as decimal(38, 2)) as total
    from (
        select distinct invited_month, order_id
        from {{ ref('fct_referrals') }}
        where reached_converted and not is_self_referral
    ) as r
    inner join {{ ref('fct_orders') }} as o
        on o.order_id = r.order_id
) as r
where f.total <> r.total
