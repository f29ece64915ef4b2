-- The private-domain triangle (SPEC §4 `marts.fct_private_domain_triangle`), one row per Asia/Shanghai month
-- from the data's first month to its last, overall (acquisition_channel = 'all') and per acquisition channel.
-- Figures are a snapshot at the month's end, or at the data's end for the month that holds it, and use the
-- orders' current state (a late refund changes past months).
--   property_right        customers reachable at the month's end (int_customers__reachable_spans)
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

bounds as (
    select min(period_month) as first_month from months
),

-- each customer's runs of months reachable at the month's end, with the customer's acquisition channel
spans as (
    select
        s.customer_key,
        c.acquisition_channel,
        greatest(s.reachable_from_month, b.first_month) as from_month,
        s.reachable_until_month as until_month
    from {{ ref('int_customers__reachable_spans') }} as s
    inner join customers as c
        on c.customer_key = s.customer_key
    cross join bounds as b
    -- (a span over before the first month would start at it and never stop counting)
    where s.reachable_until_month is null or s.reachable_until_month > b.first_month
),

customer_month_orders as (
    select customer_key, paid_month, sum(net_revenue) as net_revenue, count(*) as paid_orders
    from {{ ref('fct_orders') }}
    where is_paid_like
    group by customer_key, paid_month
),

-- A month's paid orders count in the trailing 12 months of every month from their paid month to 11 months
-- later in which their customer is reachable: for each of the customer's spans that meets those 12 months, the
-- months from window_start up to (not including) window_end.
order_windows as (
    select
        s.acquisition_channel,
        o.net_revenue,
        o.paid_orders,
        greatest(o.paid_month, s.from_month) as window_start,
        least(s.until_month, {{ privdom_add_months('o.paid_month', 12) }}) as window_end,  -- (least skips NULL)
        s.from_month <= o.paid_month as reachable_in_paid_month
    from customer_month_orders as o
    inner join spans as s
        on s.customer_key = o.customer_key
        and s.from_month < {{ privdom_add_months('o.paid_month', 12) }}
        and (s.until_month is null or s.until_month > o.paid_month)
),

-- Every month's figures as running sums over the months of what starts (+) and stops (-) counting in each:
-- reachable customers (a span), trailing-12-month revenue and paid orders (an order window); the month's own
-- revenue is not a running sum (NULL on the other rows). No customer-month grain anywhere: at 1M customers
-- the 5.3M reachable customer-months joined to their orders took ~1.5 s more ("Nineteenth session").
changes as (
    select
        from_month as period_month, acquisition_channel, 1 as reachable,
        cast(0 as decimal(18, 2)) as net_revenue, 0 as paid_orders, cast(null as decimal(18, 2)) as net_revenue_month
    from spans
    union all
    select until_month, acquisition_channel, -1, 0, 0, null
    from spans
    where until_month is not null
    union all
    select
        window_start, acquisition_channel, 0, net_revenue, paid_orders,
        case when reachable_in_paid_month then net_revenue end
    from order_windows
    union all
    select window_end, acquisition_channel, 0, -net_revenue, -paid_orders, null
    from order_windows
),

changes_by_month as (
    select
        period_month, acquisition_channel, sum(reachable) as reachable, sum(net_revenue) as net_revenue,
        sum(paid_orders) as paid_orders, sum(net_revenue_month) as net_revenue_month
    from changes
    group by period_month, acquisition_channel
    union all
    select
        period_month, 'all', sum(reachable), sum(net_revenue), sum(paid_orders), sum(net_revenue_month)
    from changes
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

running as (
    select
        g.period_month,
        g.acquisition_channel,
        cast(sum(coalesce(c.reachable, 0)) over (
            partition by g.acquisition_channel order by g.period_month rows between unbounded preceding and current row
        ) as bigint) as property_right,
        sum(coalesce(c.net_revenue, 0)) over (
            partition by g.acquisition_channel order by g.period_month rows between unbounded preceding and current row
        ) as net_revenue_12m,
        sum(coalesce(c.paid_orders, 0)) over (
            partition by g.acquisition_channel order by g.period_month rows between unbounded preceding and current row
        ) as paid_orders_12m,
        coalesce(c.net_revenue_month, 0) as net_revenue_month
    from grid as g
    left join changes_by_month as c
        on c.period_month = g.period_month and c.acquisition_channel = g.acquisition_channel
),

value_by_channel as (
    select * from running where property_right > 0
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

converted_referrers as (
    select distinct referrer_key as customer_key, {{ privdom_local_period_start('month', 'first_converted_at') }} as converted_month
    from {{ ref('fct_referrals') }}
    where reached_converted and not is_self_referral and referrer_key is not null
),

-- A referrer counts in the months from a conversion's month to 11 months later; a customer's overlapping
-- 12-month windows make one run (a conversion 12 months or more after the one before starts a new run).
referrer_runs_marked as (
    select
        customer_key,
        converted_month,
        case
            when lag(converted_month) over (partition by customer_key order by converted_month)
                > {{ privdom_add_months('converted_month', -12) }} then 0
            else 1
        end as starts_run
    from converted_referrers
),

referrer_runs_numbered as (
    select
        customer_key,
        converted_month,
        sum(starts_run) over (
            partition by customer_key order by converted_month rows between unbounded preceding and current row
        ) as run_number
    from referrer_runs_marked
),

referrer_runs as (
    select
        customer_key,
        min(converted_month) as run_start,
        {{ privdom_add_months('max(converted_month)', 12) }} as run_end
    from referrer_runs_numbered
    group by customer_key, run_number
),

-- the months a referrer's run and the referrer's reachable spans share: each (run, span) pair is its own
-- months, so counting starts and stops counts every referrer once a month
reachable_referrer_spans as (
    select
        greatest(r.run_start, s.from_month) as span_start,
        least(s.until_month, r.run_end) as span_end  -- (least skips NULL: an open span ends with the run)
    from referrer_runs as r
    inner join spans as s
        on s.customer_key = r.customer_key
        and s.from_month < r.run_end
        and (s.until_month is null or s.until_month > r.run_start)
),

referrer_changes as (
    select period_month, sum(change) as change
    from (
        select span_start as period_month, 1 as change from reachable_referrer_spans
        union all
        select span_end, -1 from reachable_referrer_spans
    ) as c
    group by period_month
),

referrers_by_month as (
    select
        m.period_month,
        sum(coalesce(r.change, 0)) over (order by m.period_month rows between unbounded preceding and current row)
            as reachable_referrers_12m
    from months as m
    left join referrer_changes as r
        on r.period_month = m.period_month
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
