-- One row per referral in its current state (SPEC §4 `marts.fct_referrals`): its latest version decides the
-- status, and "reached a status or later" is judged on that state. Referrer and referee are customer keys.
-- generation: 1 when the referrer was not acquired through a referral, n + 1 when the referrer was acquired by
-- a generation-n referral; NULL for a self-referral (referrer and referee are one customer, flagged and left out
-- of fission counts), for a referral closing a loop (its referee is already on its referrer's chain), and for a
-- referrer whose chain never reaches a root. Time to convert is in hours from invited_at to the first
-- updated_at seen as converted; the converted order's net revenue comes from fct_orders (NULL while the order
-- has not arrived).
-- A referral closes a loop when its referee is an ancestor of its referrer in the acquisition forest: same root,
-- higher up, and reached by walking up from the referrer (only those candidates walk, each as many steps as
-- the depths differ).
{{ privdom_require_recursive_cte() }}
with recursive referrals as (
    select * from {{ ref('int_referrals__customers') }}
),

depths as (
    select * from {{ ref('int_customers__referral_depth') }}
),

referees as (
    select customer_key, acquisition_source, acquisition_record_id, acquisition_referrer_key
    from {{ ref('int_customers__keyed') }}
),

loop_candidates as (
    select r.referral_id, r.referee_key, r.referrer_key as at_key, dx.referral_depth - dy.referral_depth as steps_left
    from referrals as r
    inner join depths as dx
        on dx.customer_key = r.referrer_key
    inner join depths as dy
        on dy.customer_key = r.referee_key
    where not r.is_self_referral
        and dy.referral_root_key = dx.referral_root_key
        and dy.referral_depth < dx.referral_depth
),

walk_up as (
    select referral_id, referee_key, at_key, steps_left
    from loop_candidates
    union all
    select w.referral_id, w.referee_key, k.acquisition_referrer_key, w.steps_left - 1
    from walk_up as w
    inner join referees as k
        on k.customer_key = w.at_key
    where w.steps_left > 0
),

loops as (
    select distinct referral_id
    from walk_up
    where steps_left = 0 and at_key = referee_key
),

orders as (
    select order_id, net_revenue from {{ ref('fct_orders') }}
),

judged as (
    select
        r.*,
        r.status in ('clicked', 'registered', 'converted') as reached_clicked,
        r.status in ('registered', 'converted') as reached_registered,
        r.status = 'converted' as reached_converted,
        d.referral_depth as referrer_depth,
        l.referral_id is not null as closes_loop
    from referrals as r
    left join depths as d
        on d.customer_key = r.referrer_key
    left join loops as l
        on l.referral_id = r.referral_id
)

select
    j.referral_id,
    j.mechanism,
    j.status,
    j.invited_at,
    {{ privdom_local_period_start('month', 'j.invited_at') }} as invited_month,
    j.updated_at,
    j.referrer_key,
    j.referee_key,
    j.is_self_referral,
    case
        when j.is_self_referral then null
        when j.closes_loop then null
        else j.referrer_depth + 1
    end as generation,
    coalesce(
        ref_acq.acquisition_source = 'referrals' and ref_acq.acquisition_record_id = j.referral_id,
        false
    ) as acquired_referee,
    j.reached_clicked,
    j.reached_registered,
    j.reached_converted,
    j.first_clicked_at,
    j.first_registered_at,
    j.first_converted_at,
    case
        when j.reached_converted then {{ privdom_hours_between('j.invited_at', 'j.first_converted_at') }}
    end as hours_to_convert,
    j.order_id,
    j.reached_converted and o.order_id is null as is_converted_order_missing,
    case when j.reached_converted then o.net_revenue end as converted_order_net_revenue,
    cast(coalesce(j.commission_amount, 0) as decimal(18, 2)) as commission_amount
from judged as j
left join referees as ref_acq
    on ref_acq.customer_key = j.referee_key
left join orders as o
    on o.order_id = j.order_id
