-- One row per event_id: its first delivery (SPEC §2: a re-delivery is a duplicate, and an event_id delivered
-- again with different content keeps its first content). Placeholder identifiers become NULL.
with source as (
    select * from {{ source('raw', 'channel_events') }}
),

first_delivery as (
    {{ first_row_per('source', 'event_id', '_file_id, _row_number') }}
),

renamed as (
    select
        event_id,
        occurred_at,
        channel,
        event_type,
        {{ clean_identifier('openid') }} as openid,
        {{ clean_identifier('unionid') }} as unionid,
        {{ clean_identifier('wecom_external_userid') }} as wecom_external_userid,
        {{ clean_identifier('phone') }} as phone,
        {{ clean_identifier('member_id') }} as member_id,
        nullif(trim(campaign), '') as campaign,
        {{ clean_identifier('wecom_staff_userid') }} as wecom_staff_userid,
        _file_id as file_id,
        _batch_date as batch_date,
        _loaded_at as loaded_at
    from first_delivery
)

select * from renamed
