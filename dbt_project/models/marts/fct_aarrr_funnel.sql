-- The AARRR funnel (SPEC §4 `marts.fct_aarrr_funnel`): one row per acquisition cohort month × acquisition
-- channel, plus an `all` channel row per month. The step flags are defined once, on the customer
-- (int_customers__purchases, dim_customers); this model only counts them, in order: each step among the
-- customers who reached the previous one (acquired → activated → retained → repurchased), except referred,
-- which is counted among all acquired. A rate over 0 is NULL.
-- is_complete: every window of every customer of the cohort has closed by the data's end — the data's end is
-- at or after the instant the month after the cohort month begins plus the longest window chain
-- (activation + repurchase, retention end, referral: 120 days by default).
{%- set longest_chain_days = [
    var('activation_window_days') + var('repurchase_window_days'),
    var('retention_end_days'),
    var('referral_window_days')
] | max %}
with customers as (
    select
        {{ privdom_local_period_start('month', 'acquired_at') }} as cohort_month,
        acquisition_channel,
        is_activated,
        is_activated and is_retained as reached_retained,
        is_activated and is_retained and is_repurchased as reached_repurchased,
        is_referrer
    from {{ ref('dim_customers') }}
),

data_end as (
    select data_end_at from {{ ref('int_data_end') }}
),

counted as (
    select
        cohort_month,
        acquisition_channel,
        count(*) as acquired,
        cast(sum(case when is_activated then 1 else 0 end) as bigint) as activated,
        cast(sum(case when reached_retained then 1 else 0 end) as bigint) as retained,
        cast(sum(case when reached_repurchased then 1 else 0 end) as bigint) as repurchased,
        cast(sum(case when is_referrer then 1 else 0 end) as bigint) as referred
    from customers
    group by cohort_month, acquisition_channel
    union all
    select
        cohort_month,
        'all' as acquisition_channel,
        count(*),
        cast(sum(case when is_activated then 1 else 0 end) as bigint),
        cast(sum(case when reached_retained then 1 else 0 end) as bigint),
        cast(sum(case when reached_repurchased then 1 else 0 end) as bigint),
        cast(sum(case when is_referrer then 1 else 0 end) as bigint)
    from customers
    group by cohort_month
)

select
    c.cohort_month,
    c.acquisition_channel,
    c.acquired,
    c.activated,
    c.retained,
    c.repurchased,
    c.referred,
    {{ privdom_ratio('c.activated', 'c.acquired') }} as activation_rate,
    {{ privdom_ratio('c.retained', 'c.activated') }} as retention_rate,
    {{ privdom_ratio('c.repurchased', 'c.retained') }} as repurchase_rate,
    {{ privdom_ratio('c.referred', 'c.acquired') }} as referral_rate,
    coalesce(
        d.data_end_at >= {{ privdom_add_days(privdom_local_date_start(privdom_add_months('c.cohort_month', 1)), longest_chain_days) }},
        false
    ) as is_complete,
    d.data_end_at
from counted as c
cross join data_end as d
