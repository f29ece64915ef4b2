-- Every distinct version of every referral, oldest first; identical re-deliveries kept once. version_rank = 1
-- is the referral's current state (latest updated_at; ties: the later batch, then the later row).
with source as (
    select * from {{ source('raw', 'referrals') }}
),

distinct_versions as (
    {{ first_row_per('source', 'referral_id, _row_hash', '_file_id, _row_number') }}
),

renamed as (
    select
        referral_id,
        updated_at,
        invited_at,
        mechanism,
        status,
        {{ clean_identifier('referrer_member_id') }} as referrer_member_id,
        {{ clean_identifier('referrer_unionid') }} as referrer_unionid,
        {{ clean_identifier('referrer_phone') }} as referrer_phone,
        {{ clean_identifier('referee_openid') }} as referee_openid,
        {{ clean_identifier('referee_unionid') }} as referee_unionid,
        {{ clean_identifier('referee_phone') }} as referee_phone,
        {{ clean_identifier('referee_member_id') }} as referee_member_id,
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
    from distinct_versions
)

select * from renamed
