-- One row per customer_key, as of the data's end (SPEC §4 `marts.dim_customers`). Every metric is defined once,
-- in the intermediate model named next to it; this model assembles them and adds the referral flags and the
-- lifecycle stage. Clear phones never reach this table: phone_masked and phone_sha256 only (SPEC §5).
with customers as (
    select * from {{ ref('int_customers__keyed') }}
),

identifiers as (
    select * from {{ ref('int_customers__identifiers') }}
),

purchases as (
    select * from {{ ref('int_customers__purchases') }}
),

rfm as (
    select * from {{ ref('int_customers__rfm') }}
),

relationships as (
    select * from {{ ref('int_customers__relationships') }}
),

referrals as (
    select * from {{ ref('int_referrals__customers') }}
),

data_end as (
    select data_end_at from {{ ref('int_data_end') }}
),

-- Referred (fission): brought at least one new customer, acquired through this customer within
-- referral_window_days of this customer's acquired_at. A customer is never their own referee.
referrers as (
    select distinct referrer.customer_key
    from customers as referrer
    inner join customers as referee
        on referee.acquisition_referrer_key = referrer.customer_key
        and referee.customer_key <> referrer.customer_key
    where referee.acquired_at >= referrer.acquired_at
      and referee.acquired_at < {{ privdom_add_days('referrer.acquired_at', var('referral_window_days')) }}
),

-- Customers acquired through a referral of this customer, any time (a customer is never their own referee).
customers_referred as (
    select acquisition_referrer_key as customer_key, count(*) as customers_referred
    from customers
    where acquisition_referrer_key is not null and acquisition_referrer_key <> customer_key
    group by acquisition_referrer_key
),

-- Converted referrals (current state converted; self-referrals left out), all time and in the trailing 365 days
-- before the data's end, by the first time each was seen converted.
converted_referrals as (
    select
        r.referrer_key as customer_key,
        count(*) as referrals_converted,
        cast(sum(
            case when r.first_converted_at >= {{ privdom_add_days('d.data_end_at', -365) }} then 1 else 0 end
        ) as bigint) as referrals_converted_12m
    from referrals as r
    cross join data_end as d
    where r.status = 'converted' and not r.is_self_referral and r.referrer_key is not null
    group by r.referrer_key
)

select
    c.customer_key,
    i.openid,
    i.openid_channel,
    i.unionid,
    i.wecom_external_userid,
    i.wecom_staff_userid,
    i.member_id,
    i.phone_masked,
    i.phone_sha256,
    c.acquired_at,
    c.acquisition_channel,
    c.acquisition_referrer_key,
    {{ privdom_mask_phones('c.acquisition_campaign') }} as acquisition_campaign,  -- free text: no clear phone leaves
    p.first_paid_at,
    p.first_paid_order_id,
    p.last_paid_at,
    p.paid_orders,
    cast(p.net_revenue as decimal(18, 2)) as net_revenue,
    p.points_redeemed,
    rel.is_reachable,
    case when rel.is_reachable then rel.live_relationships end as reachable_channels,
    rel.opted_out,
    rel.is_member,
    p.is_activated,
    p.is_retained,
    p.is_repurchased,
    f.customer_key is not null as is_referrer,
    coalesce(cref.customers_referred, 0) as customers_referred,
    p.last_activity_at,
    coalesce(cr.referrals_converted, 0) as referrals_converted,
    coalesce(cr.referrals_converted_12m, 0) as referrals_converted_12m,
    rfm.r_score,
    rfm.f_score,
    rfm.m_score,
    rfm.rfm_segment,
    case
        when c.acquired_at >= {{ privdom_add_days('d.data_end_at', -30) }} then 'new'
        when p.last_activity_at >= {{ privdom_add_days('d.data_end_at', -90) }} then 'active'
        when p.last_activity_at >= {{ privdom_add_days('d.data_end_at', -180) }} then 'at_risk'
        when p.last_activity_at >= {{ privdom_add_days('d.data_end_at', -365) }} then 'dormant'
        else 'churned'
    end as lifecycle_stage,
    d.data_end_at
from customers as c
cross join data_end as d
left join identifiers as i
    on i.customer_key = c.customer_key
left join purchases as p
    on p.customer_key = c.customer_key
left join rfm
    on rfm.customer_key = c.customer_key
left join relationships as rel
    on rel.customer_key = c.customer_key
left join referrers as f
    on f.customer_key = c.customer_key
left join converted_referrals as cr
    on cr.customer_key = c.customer_key
left join customers_referred as cref
    on cref.customer_key = c.customer_key
