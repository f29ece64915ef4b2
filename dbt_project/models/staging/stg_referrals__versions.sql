-- Every distinct version of every referral, oldest first; identical re-deliveries (every contract column equal,
-- NULLs included: macros/raw_contents.sql) kept once, with their first delivery's lineage (file_id,
-- batch_date, row_number_in_file, loaded_at) and dated by their latest delivery (last_batch_date,
-- last_file_id, last_row_number; macros/deduplicate.sql). version_rank = 1 is the referral's current state:
-- the latest updated_at; ties: the later batch, then the later row, of each version's latest delivery
-- (docs/DECISIONS.md, "Version ties").
-- Incremental (delete+insert by referral_id): every referral that a file loaded since the last build names is
-- rebuilt from all of its raw rows, since a new version, or an identical one delivered again, can change the
-- rank of the old ones; the others are left as they are (macros/privdom_incremental.sql).
{{ config(
    materialized=privdom_incremental_materialization(),
    incremental_strategy='delete+insert',
    unique_key='referral_id',
    on_schema_change='fail'
) }}

with source as (
    select * from {{ source('raw', 'referrals') }}
    {% if is_incremental() -%}
    where referral_id in (
        select referral_id from {{ source('raw', 'referrals') }} where {{ privdom_loaded_after_last_build() }}
    )
    {%- endif %}
),

distinct_versions as (
    {{ privdom_distinct_versions('source', privdom_raw_contents('referrals')) }}
),

trimmed as (
    select
        *,
        {{ trimmed_identifiers(['referrer_member_id', 'referrer_unionid', 'referrer_phone', 'referee_openid', 'referee_unionid', 'referee_phone', 'referee_member_id']) }}
    from distinct_versions
),

renamed as (
    select
        referral_id,
        updated_at,
        invited_at,
        mechanism,
        status,
        {{ clean_identifier('referrer_member_id', trimmed=true) }} as referrer_member_id,
        {{ clean_identifier('referrer_unionid', trimmed=true) }} as referrer_unionid,
        {{ clean_identifier('referrer_phone', trimmed=true) }} as referrer_phone,
        {{ clean_identifier('referee_openid', trimmed=true) }} as referee_openid,
        {{ clean_identifier('referee_unionid', trimmed=true) }} as referee_unionid,
        {{ clean_identifier('referee_phone', trimmed=true) }} as referee_phone,
        {{ clean_identifier('referee_member_id', trimmed=true) }} as referee_member_id,
        nullif(trim(order_id), '') as order_id,
        commission_amount,
        _file_id as file_id,
        _batch_date as batch_date,
        _row_number as row_number_in_file,
        _loaded_at as loaded_at,
        _last_batch_date as last_batch_date,
        _last_file_id as last_file_id,
        _last_row_number as last_row_number
    from trimmed
),

-- A version without a referrer identifier, or without a referee identifier unless it is only an invitation,
-- once placeholders are removed, would be quarantined by ingestion now (referrer.required,
-- referee.required); one loaded before its value joined placeholder_block_list is left out here, as if it
-- had been (it stays in raw), and the referral's versions are ranked without it.
identified as (
    select * from renamed
    where {{ privdom_any_not_null(['referrer_member_id', 'referrer_unionid', 'referrer_phone']) }}
        and (status = 'invited'
            or {{ privdom_any_not_null(['referee_openid', 'referee_unionid', 'referee_phone', 'referee_member_id']) }})
)

select
    *,
    row_number() over (
        partition by referral_id
        order by updated_at desc, last_batch_date desc, last_file_id desc, last_row_number desc
    ) as version_rank
from identified
