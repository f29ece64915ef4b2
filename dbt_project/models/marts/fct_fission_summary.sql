-- Referral / fission by invitation cohort (SPEC §4 `marts.fct_fission_summary`): what became of the invites
-- sent in an Asia/Shanghai month, per mechanism, plus an `all` mechanism row per month. Each count is of
-- referrals whose current state reached that status or later; self-referrals are left out of every figure.
-- conversion_rate = conversions ÷ invites; k_factor = conversions ÷ distinct referrers who invited that month
-- (with that mechanism); commission and net revenue are those of converted referrals and their orders. An order
-- counts once per row: several converted referrals may name one order (a referee invited by two referrers, or
-- by one through two mechanisms, converts with one first order), and each has its own commission, but the order's
-- revenue is one order's.
with referrals as (
    select
        *,
        row_number() over (
            partition by invited_month, mechanism, reached_converted, order_id order by referral_id
        ) as nth_claim_in_mechanism,
        row_number() over (
            partition by invited_month, reached_converted, order_id order by referral_id
        ) as nth_claim_in_month
    from {{ ref('fct_referrals') }}
    where not is_self_referral
),

by_mechanism as (
    select
        invited_month,
        mechanism,
        count(*) as invites,
        cast(sum(case when reached_clicked then 1 else 0 end) as bigint) as clicks,
        cast(sum(case when reached_registered then 1 else 0 end) as bigint) as registrations,
        cast(sum(case when reached_converted then 1 else 0 end) as bigint) as conversions,
        count(distinct referrer_key) as referrers,
        sum(case when reached_converted then commission_amount else 0 end) as commission_amount,
        sum(
            case when reached_converted and (order_id is null or nth_claim_in_mechanism = 1)
                then coalesce(converted_order_net_revenue, 0) else 0 end
        ) as converted_net_revenue,
        max(generation) as max_generation
    from referrals
    group by invited_month, mechanism
    union all
    select
        invited_month,
        'all' as mechanism,
        count(*),
        cast(sum(case when reached_clicked then 1 else 0 end) as bigint),
        cast(sum(case when reached_registered then 1 else 0 end) as bigint),
        cast(sum(case when reached_converted then 1 else 0 end) as bigint),
        count(distinct referrer_key),
        sum(case when reached_converted then commission_amount else 0 end),
        sum(
            case when reached_converted and (order_id is null or nth_claim_in_month = 1)
                then coalesce(converted_order_net_revenue, 0) else 0 end
        ),
        max(generation)
    from referrals
    group by invited_month
)

select
    invited_month,
    mechanism,
    invites,
    clicks,
    registrations,
    conversions,
    {{ privdom_ratio('conversions', 'invites') }} as conversion_rate,
    referrers,
    {{ privdom_ratio('conversions', 'referrers') }} as k_factor,
    cast(commission_amount as decimal(18, 2)) as commission_amount,
    cast(converted_net_revenue as decimal(18, 2)) as converted_net_revenue,
    max_generation
from by_mechanism
