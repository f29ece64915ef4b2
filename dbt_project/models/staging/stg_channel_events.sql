-- One row per event_id: its first delivery (SPEC §2: a re-delivery is a duplicate, and an event_id delivered
-- again with different content keeps its first content). Placeholder identifiers become NULL.
-- Incremental (append): a run takes the rows of files loaded since the last build and keeps those whose
-- event_id is new. Every earlier delivery is in an older file, so the first delivery is the same as in a full
-- refresh (macros/privdom_incremental.sql).
{{ config(
    materialized=privdom_incremental_materialization(),
    incremental_strategy='append',
    on_schema_change='fail'
) }}

with source as (
    select * from {{ source('raw', 'channel_events') }}
    {% if is_incremental() -%}
    where {{ privdom_loaded_after_last_build() }}
    {%- endif %}
),

first_delivery as (
    {{ first_row_per('source', 'event_id', '_file_id, _row_number') }}
),

trimmed as (
    select
        *,
        {{ trimmed_identifiers(['openid', 'unionid', 'wecom_external_userid', 'phone', 'member_id', 'wecom_staff_userid']) }}
    from first_delivery
),

renamed as (
    select
        event_id,
        occurred_at,
        channel,
        event_type,
        {{ clean_identifier('openid', trimmed=true) }} as openid,
        {{ clean_identifier('unionid', trimmed=true) }} as unionid,
        {{ clean_identifier('wecom_external_userid', trimmed=true) }} as wecom_external_userid,
        {{ clean_identifier('phone', trimmed=true) }} as phone,
        {{ clean_identifier('member_id', trimmed=true) }} as member_id,
        nullif(trim(campaign), '') as campaign,
        {{ clean_identifier('wecom_staff_userid', trimmed=true) }} as wecom_staff_userid,
        _file_id as file_id,
        _batch_date as batch_date,
        _loaded_at as loaded_at
    from trimmed
)

select * from renamed
{% if is_incremental() -%}
where not exists (select 1 from {{ this }} as built where built.event_id = renamed.event_id)
{%- endif %}
