-- One row per customer and Asia/Shanghai month at whose end the customer was reachable (SPEC §4 "Reachable",
-- as a snapshot at each month's end, or at the data's end for the month that holds it): at least one live owned
-- relationship (official account, WeCom contact, community group, or membership, which is for good from
-- member_since) and no opt-out in force. The property-right axis of the private-domain triangle counts these rows.
with months as (
    select period_month from {{ ref('int_calendar__months') }}
),

states as (
    select * from {{ ref('int_customers__relationship_months') }}
),

-- each state holds from the end of its change month until the month before the next change; its flags for
-- every month it holds in go straight to the one aggregation below (at 1M customers a first aggregation per
-- customer and month of the 7.6M state-months cost ~1 s of DuckDB's thread time)
state_months as (
    select
        s.customer_key,
        m.period_month,
        case when s.relationship <> 'consent' and s.is_live then 1 else 0 end as has_live_relationship,
        case when s.relationship = 'consent' and not s.is_live then 1 else 0 end as opted_out
    from states as s
    inner join months as m
        on m.period_month >= s.change_month
        and (s.valid_until_month is null or m.period_month < s.valid_until_month)
),

members_by_month as (
    select r.customer_key, m.period_month
    from {{ ref('int_customers__relationships') }} as r
    inner join months as m
        on m.period_month >= {{ privdom_local_period_start('month', 'r.member_since') }}
    where r.member_since is not null
),

candidates as (
    select customer_key, period_month, has_live_relationship, opted_out, 0 as is_member
    from state_months
    union all
    select customer_key, period_month, 0, 0, 1
    from members_by_month
),

combined as (
    select
        customer_key,
        period_month,
        max(has_live_relationship) as has_live_relationship,
        max(opted_out) as opted_out,
        max(is_member) as is_member
    from candidates
    group by customer_key, period_month
)

select customer_key, period_month
from combined
where (has_live_relationship = 1 or is_member = 1) and opted_out = 0
