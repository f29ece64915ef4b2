-- One row per customer: the identity component's stable customer_key with its first touch (SPEC §3, §4
-- "Acquired"). acquisition_referrer_key is the key of the referrer's component when the first touch was a referral.
with first_touch as (
    select * from {{ ref('int_components__first_touch') }}
),

customer_keys as (
    select * from {{ source('identity', 'int_customer_keys') }}
)

select
    k.customer_key,
    f.component_id,
    f.acquired_at,
    f.acquisition_channel,
    f.acquisition_campaign,
    referrer_keys.customer_key as acquisition_referrer_key,
    f.acquisition_source,
    f.acquisition_record_id,
    f.first_seen_at
from first_touch as f
inner join customer_keys as k
    on k.component_id = f.component_id
left join customer_keys as referrer_keys
    on cast(referrer_keys.component_id as {{ dbt.type_string() }}) = cast(f.acquisition_referrer_component_id as {{ dbt.type_string() }})
