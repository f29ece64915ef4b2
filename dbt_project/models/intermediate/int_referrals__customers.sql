-- One row per referral in its current state (SPEC §2) with the referrer's and referee's customer_key and the
-- first time it was seen clicked-or-later and converted (over all its versions: those times never move).
-- The referee of a converted referral is the buyer of its order (SPEC §3) when no referee row names them.
with referrals as (
    select * from {{ ref('stg_referrals') }}
),

versions as (
    select * from {{ ref('stg_referrals__versions') }}
),

milestones as (
    select
        referral_id,
        min(case when status in ('clicked', 'registered', 'converted') then updated_at end) as first_clicked_at,
        min(case when status in ('registered', 'converted') then updated_at end) as first_registered_at,
        min(case when status = 'converted' then updated_at end) as first_converted_at
    from versions
    group by referral_id
),

roles as (
    select r.record_id, r.role, k.customer_key
    from {{ source('identity', 'int_identity__records') }} as r
    inner join {{ source('identity', 'int_customer_keys') }} as k
        on k.component_id = r.component_id
    where r.source in ('referrals', 'orders')
),

joined as (
    select
        f.referral_id,
        f.mechanism,
        f.status,
        f.invited_at,
        f.updated_at,
        referrer.customer_key as referrer_key,
        coalesce(referee.customer_key, buyer.customer_key) as referee_key,
        m.first_clicked_at,
        m.first_registered_at,
        m.first_converted_at,
        f.order_id,
        f.commission_amount
    from referrals as f
    left join milestones as m
        on m.referral_id = f.referral_id
    left join roles as referrer
        on referrer.role = 'referrer' and referrer.record_id = f.referral_id
    left join roles as referee
        on referee.role = 'referee' and referee.record_id = f.referral_id
    left join roles as buyer
        on buyer.role = 'buyer' and buyer.record_id = f.order_id and f.status = 'converted'
)

select
    *,
    coalesce(referrer_key = referee_key, false) as is_self_referral
from joined
