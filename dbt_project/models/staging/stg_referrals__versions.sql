-- Every distinct version of every referral, oldest first; identical re-deliveries (every contract column equal,
-- NULLs included: macros/raw_contents.sql) kept once. version_rank = 1
-- is the referral's current state (latest updated_at; ties: the later batch, then the later row).
-- Incremental (delete+insert by referral_id): every referral that a file loaded since the last build names is
-- rebuilt from all of its raw rows, since a new version can change the rank of the old ones; the others
-- are left as they are (macros/privdom_incremental.sql).
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
    {{ first_row_per('source', privdom_raw_contents('referrals') | join(', '), '_file_id, _row_number') }}
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
        row_number() over (
            partition by referral_id
            order by updated_at desc, _batch_date desc, _file_id desc, _row_number desc
        ) as version_rank,
        _file_id as file_id,
        _batch_date as batch_date,
        _row_number as row_number_in_file,
        _loaded_at as loaded_at
    from trimmed
)

select * from renamed
