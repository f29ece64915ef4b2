-- One row per customer and unbroken run of Asia/Shanghai months at whose end the customer was reachable (SPEC §4
-- "Reachable", as a snapshot at each month's end, or at the data's end for the month that holds it): at least one
-- live owned relationship (official account, WeCom contact, community group, or membership, which is for good
-- from member_since) and no opt-out in force. reachable_from_month is the first month of the run,
-- reachable_until_month the first month after it (NULL: reachable through the data's end). The property-right
-- axis of the private-domain triangle counts, for each month, the spans that hold it.
-- Spans, not customer-months: at 1M customers over 13 months 1.0M spans stand for 5.3M reachable customer-months
-- (docs/performance.md, "Nineteenth session"). It replaced int_customers__monthly_reachability, which a warehouse
-- built before loses here.
{{ config(post_hook="{{ privdom_drop_replaced('int_customers__monthly_reachability') }}") }}

with states as (
    select * from {{ ref('int_customers__relationship_months') }}
),

-- a state holds from the end of its change month until the month before the next change (valid_until_month);
-- the states that count: live relationships (consent aside) and opt-outs in force
counted_states as (
    select
        customer_key,
        change_month,
        valid_until_month,
        case when relationship = 'consent' then 0 else 1 end as live,
        case when relationship = 'consent' then 1 else 0 end as opted_out
    from states
    where (relationship <> 'consent' and is_live) or (relationship = 'consent' and not is_live)
),

-- how many live relationships and opt-outs start (+1) and stop (-1) holding in each month
changes as (
    select customer_key, change_month as month_start, live, opted_out
    from counted_states
    union all
    select customer_key, valid_until_month, -live, -opted_out
    from counted_states
    where valid_until_month is not null
    union all
    select customer_key, {{ privdom_local_period_start('month', 'member_since') }}, 1, 0
    from {{ ref('int_customers__relationships') }}
    where member_since is not null
),

changes_by_month as (
    select customer_key, month_start, sum(live) as live, sum(opted_out) as opted_out
    from changes
    group by customer_key, month_start
),

-- at each month where something changed: the live relationships and opt-outs in force from then on
states_by_month as (
    select
        customer_key,
        month_start,
        sum(live) over (
            partition by customer_key order by month_start rows between unbounded preceding and current row
        ) > 0
        and sum(opted_out) over (
            partition by customer_key order by month_start rows between unbounded preceding and current row
        ) = 0 as is_reachable
    from changes_by_month
),

-- the months where reachability flips (before the first change nobody is reachable)
flips as (
    select customer_key, month_start, is_reachable
    from (
        select
            customer_key,
            month_start,
            is_reachable,
            lag(is_reachable, 1, false) over (partition by customer_key order by month_start) as was_reachable
        from states_by_month
    ) as s
    where is_reachable <> was_reachable
),

spans as (
    select
        customer_key,
        is_reachable,
        month_start as reachable_from_month,
        lead(month_start) over (partition by customer_key order by month_start) as reachable_until_month
    from flips
)

select customer_key, reachable_from_month, reachable_until_month
from spans
where is_reachable
