-- The private-domain triangle (SPEC §4 `marts.fct_private_domain_triangle`), one row per Asia/Shanghai month
-- from the data's first month to its last, overall (acquisition_channel = 'all') and per acquisition channel.
-- Figures are a snapshot at the month's end, or at the data's end for the month that holds it, and use the
-- orders' current state (a late refund changes past months).
--   property_right        customers reachable at the month's end (int_customers__monthly_reachability)
--   single_customer_value their net revenue paid in the trailing 12 months (the month and the 11 before) ÷ property_right
--   recommendation_rate   new customers acquired in the month through a referral ÷ all new customers of the month
--   triangle_area_index   (√3/4)(p·v + v·r + r·p) on the axes divided by the baseline month's, ÷ the baseline's
--                         area, so the baseline month is exactly 1.0 (all row only; NULL with no baseline)
-- Per-channel rows carry the property-right and customer-value axes; recommendation figures and the index are
-- on the `all` row only. The baseline month is the var triangle_baseline_month ('YYYY-MM'), or by default the
-- first month that starts on or after the data's first timestamp with all three axes above zero.
with months as (
    select period_month, month_start_at, holds_data_end from {{ ref('int_calendar__months') }}
),

customers as (
    select
        customer_key,
        acquisition_channel,
        acquisition_referrer_key,
        {{ privdom_local_period_start('month', 'acquired_at') }} as acquired_month
    from {{ ref('dim_customers') }}
),

reachable as (
    select r.customer_key, r.period_month, c.acquisition_channel
    from {{ ref('int_customers__monthly_reachability') }} as r
    inner join customers as c
        on c.customer_key = r.customer_key
),

customer_month_orders as (
    select customer_key, paid_month, sum(net_revenue) as net_revenue, count(*) as paid_orders
    from {{ ref('fct_orders') }}
    where is_paid_like
    group by customer_key, paid_month
),

-- the net revenue and paid orders of the trailing 12 months of every reachable customer-month, summed per month
-- and channel straight from the pairs (reachable customer-month, a month of the customer's paid orders in its
-- window): no customer-month grain in between (at 1M customers, grouping the 5.3M reachable customer-months
-- took ~3 s of DuckDB's thread time, more than everything else in this model)
value_pairs as (
    select
        r.period_month,
        r.acquisition_channel,
        sum(o.net_revenue) as net_revenue_12m,
        sum(o.paid_orders) as paid_orders_12m,
        sum(case when o.paid_month = r.period_month then o.net_revenue end) as net_revenue_month
    from reachable as r
    inner join customer_month_orders as o
        on o.customer_key = r.customer_key
        and o.paid_month <= r.period_month
        and o.paid_month >= {{ privdom_add_months('r.period_month', -11) }}
    group by r.period_month, r.acquisition_channel
),

converted_referrers as (
    select distinct referrer_key as customer_key, {{ privdom_local_period_start('month', 'first_converted_at') }} as converted_month
    from {{ ref('fct_referrals') }}
    where reached_converted and not is_self_referral and referrer_key is not null
),

reachable_referrers as (
    select distinct r.customer_key, r.period_month
    from reachable as r
    inner join converted_referrers as f
        on f.customer_key = r.customer_key
        and f.converted_month <= r.period_month
        and f.converted_month >= {{ privdom_add_months('r.period_month', -11) }}
),

reachable_counts as (
    select period_month, acquisition_channel, count(*) as property_right
    from reachable
    group by period_month, acquisition_channel
    union all
    select period_month, 'all', count(*)
    from reachable
    group by period_month
),

value_sums as (
    select period_month, acquisition_channel, net_revenue_12m, paid_orders_12m, net_revenue_month
    from value_pairs
    union all
    select period_month, 'all', sum(net_revenue_12m), sum(paid_orders_12m), sum(net_revenue_month)
    from value_pairs
    group by period_month
),

value_by_channel as (
    select
        c.period_month,
        c.acquisition_channel,
        c.property_right,
        coalesce(v.net_revenue_12m, 0) as net_revenue_12m,
        coalesce(v.paid_orders_12m, 0) as paid_orders_12m,
        coalesce(v.net_revenue_month, 0) as net_revenue_month
    from reachable_counts as c
    left join value_sums as v
        on v.period_month = c.period_month and v.acquisition_channel = c.acquisition_channel
),

new_customers as (
    select
        acquired_month as period_month,
        count(*) as new_customers,
        cast(sum(
            case when acquisition_referrer_key is not null and acquisition_referrer_key <> customer_key then 1 else 0 end
        ) as bigint) as new_customers_referred
    from customers
    group by acquired_month
),

referrers_by_month as (
    select period_month, count(*) as reachable_referrers_12m
    from reachable_referrers
    group by period_month
),

-- every month × every channel a customer was acquired through, so a month without reachable customers is a 0
grid as (
    select m.period_month, m.month_start_at, m.holds_data_end, ch.acquisition_channel
    from months as m
    cross join (
        select distinct acquisition_channel from customers
        union
        select 'all'
    ) as ch
),

axes as (
    select
        g.period_month,
        g.acquisition_channel,
        g.month_start_at,
        g.holds_data_end,
        coalesce(v.property_right, 0) as property_right,
        coalesce(v.property_right, 0)
            - coalesce(lag(v.property_right) over (partition by g.acquisition_channel order by g.period_month), 0)
            as reachable_net_adds,
        cast(coalesce(v.net_revenue_12m, 0) as decimal(18, 2)) as net_revenue_12m,
        cast(coalesce(v.paid_orders_12m, 0) as bigint) as paid_orders_12m,
        cast(coalesce(v.net_revenue_month, 0) as decimal(18, 2)) as net_revenue_month,
        {{ privdom_ratio('v.net_revenue_12m', 'v.property_right') }} as single_customer_value,
        {{ privdom_ratio('v.net_revenue_month', 'v.property_right') }} as arpu_month,
        {{ privdom_ratio('v.paid_orders_12m', 'v.property_right') }} as orders_per_customer_12m,
        {{ privdom_ratio('v.net_revenue_12m', 'v.paid_orders_12m') }} as avg_order_value_12m,
        case when g.acquisition_channel = 'all' then coalesce(n.new_customers, 0) end as new_customers,
        case when g.acquisition_channel = 'all' then coalesce(n.new_customers_referred, 0) end as new_customers_referred,
        case when g.acquisition_channel = 'all'
            then {{ privdom_ratio('n.new_customers_referred', 'n.new_customers') }}
        end as recommendation_rate,
        case when g.acquisition_channel = 'all'
            then {{ privdom_ratio('coalesce(f.reachable_referrers_12m, 0)', 'v.property_right') }}
        end as referrer_share_12m
    from grid as g
    left join value_by_channel as v
        on v.period_month = g.period_month and v.acquisition_channel = g.acquisition_channel
    left join new_customers as n
        on n.period_month = g.period_month
    left join referrers_by_month as f
        on f.period_month = g.period_month
),

data_start as (
    select data_start_at from {{ ref('int_data_end') }}
),

baseline as (
    select period_month as baseline_month, property_right, single_customer_value, recommendation_rate
    from axes
    where acquisition_channel = 'all'
    {%- if var('triangle_baseline_month') %}
      and period_month = cast('{{ var("triangle_baseline_month") }}-01' as date)
    {%- else %}
      and period_month = (
          select min(a.period_month)
          from axes as a
          cross join data_start as d
          where a.acquisition_channel = 'all'
            and a.month_start_at >= d.data_start_at
            and a.property_right > 0
            and a.single_customer_value > 0
            and a.recommendation_rate > 0
      )
    {%- endif %}
),

ratios as (
    select
        a.*,
        b.baseline_month,
        {{ privdom_ratio('a.property_right', 'b.property_right') }} as p,
        a.single_customer_value / nullif(b.single_customer_value, 0) as v,
        a.recommendation_rate / nullif(b.recommendation_rate, 0) as r
    from axes as a
    left join baseline as b
        on a.acquisition_channel = 'all'
)

select
    period_month,
    acquisition_channel,
    property_right,
    reachable_net_adds,
    single_customer_value,
    arpu_month,
    orders_per_customer_12m,
    avg_order_value_12m,
    net_revenue_12m,
    paid_orders_12m,
    net_revenue_month,
    recommendation_rate,
    new_customers,
    new_customers_referred,
    referrer_share_12m,
    -- area (√3/4)(p·v + v·r + r·p) on the ratios to the baseline, over the baseline's area (√3/4)(1 + 1 + 1): the
    -- √3/4 cancels, so the index is (p·v + v·r + r·p) / 3, and the baseline month is exactly 1.0
    (p * v + v * r + r * p) / 3.0 as triangle_area_index,
    case when acquisition_channel = 'all' then baseline_month end as baseline_month,
    holds_data_end
from ratios
