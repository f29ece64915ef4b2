-- Cohort retention (SPEC §4 `marts.fct_cohort_retention`): customers grouped by the Asia/Shanghai month of
-- their first paid order (cohort_month); for every month from the cohort month (months_since = 0) to the month
-- of the data's end, how many of them had a paid order paid in that month, and the net revenue of those orders
-- (current state: a later refund lowers past months). Months with no active customer are rows with 0.
with orders as (
    select customer_key, purchase_cohort_month, paid_month, net_revenue
    from {{ ref('fct_orders') }}
    where is_paid_like
),

cohorts as (
    select purchase_cohort_month as cohort_month, count(distinct customer_key) as cohort_size
    from orders
    group by purchase_cohort_month
),

months as (
    select period_month, holds_data_end from {{ ref('int_calendar__months') }}
),

activity as (
    select
        purchase_cohort_month as cohort_month,
        paid_month,
        count(distinct customer_key) as active_customers,
        sum(net_revenue) as net_revenue
    from orders
    group by purchase_cohort_month, paid_month
)

select
    c.cohort_month,
    {{ privdom_months_between('c.cohort_month', 'm.period_month') }} as months_since,
    m.period_month as activity_month,
    c.cohort_size,
    coalesce(a.active_customers, 0) as active_customers,
    {{ privdom_ratio('coalesce(a.active_customers, 0)', 'c.cohort_size') }} as retention_rate,
    cast(coalesce(a.net_revenue, 0) as decimal(18, 2)) as net_revenue,
    not m.holds_data_end as is_complete
from cohorts as c
inner join months as m
    on m.period_month >= c.cohort_month
left join activity as a
    on a.cohort_month = c.cohort_month
    and a.paid_month = m.period_month
