-- The current state of each referral: its latest version (SPEC §2).
-- Incremental (delete+insert by referral_id): the referrals with a version delivered by a file newer than the
-- newest one this model has taken in (last_file_id: a version's latest delivery, as an identical re-delivery
-- can make an old version current again) get their current state again.
{{ config(
    materialized=privdom_incremental_materialization(),
    incremental_strategy='delete+insert',
    unique_key='referral_id',
    on_schema_change='fail'
) }}
select
    referral_id, updated_at, invited_at, mechanism, status,
    referrer_member_id, referrer_unionid, referrer_phone,
    referee_openid, referee_unionid, referee_phone, referee_member_id,
    order_id, commission_amount,
    file_id, batch_date, row_number_in_file, loaded_at, last_file_id
from {{ ref('stg_referrals__versions') }}
where version_rank = 1
{% if is_incremental() -%}
    -- only the referrals whose versions were rebuilt since this model's last build: a version delivered (first or
    -- again, identical) by a file newer than any this model holds (last_file_id)
    and referral_id in (
        select referral_id from {{ ref('stg_referrals__versions') }}
        where {{ privdom_loaded_after_last_build('last_file_id', 'last_file_id') }}
    )
{%- endif %}
