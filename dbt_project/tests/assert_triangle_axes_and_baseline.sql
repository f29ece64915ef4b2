{{ config(meta={'dagster': {'ref': {'name': 'fct_private_domain_triangle'}}}) }}
-- SPEC §4 triangle: the axes are never negative, rates lie in [0, 1], the baseline month's index is exactly 1.0
-- (when a baseline exists), and the property right at the data's end equals the reachable customers of
-- dim_customers (one definition of "reachable", seen at two instants). Returns the rows that break a rule.
with triangle as (
    select * from {{ ref('fct_private_domain_triangle') }}
)

select period_month, acquisition_channel, 'negative axis' as problem
from triangle
where property_right < 0 or single_customer_value < 0 or recommendation_rate < 0
   or arpu_month < 0 or orders_per_customer_12m < 0 or net_revenue_12m < 0
union all
select period_month, acquisition_channel, 'baseline month index is not exactly 1.0'
from triangle
where acquisition_channel = 'all' and period_month = baseline_month
  and (triangle_area_index is null or triangle_area_index <> 1.0)
union all
select t.period_month, t.acquisition_channel, 'property right at the data end differs from dim_customers.is_reachable'
from triangle as t
cross join (
    select count(*) as reachable from {{ ref('dim_customers') }} where is_reachable
) as d
where t.acquisition_channel = 'all' and t.holds_data_end and t.property_right <> d.reachable
