{{ config(meta={'dagster': {'ref': {'name': 'fct_cohort_retention'}}}) }}
-- Every paid order belongs to its buyer's purchase cohort, in some month from the cohort month to the data's end,
-- so the cohort table's net revenue adds up, to the cent, to that of the paid orders (which fct_orders reconciles
-- with staging). Returns a row when it does not.
select c.total as cohort_net_revenue, o.total as paid_orders_net_revenue
from (
    select cast(coalesce(sum(net_revenue), 0) as decimal(38, 2)) as total from {{ ref('fct_cohort_retention') }}
) as c
cross join (
    select cast(coalesce(sum(net_revenue), 0) as decimal(38, 2)) as total from {{ ref('fct_orders') }} where is_paid_like
) as o
where c.total <> o.total
