-- One row per event_id: its first delivery (SPEC §2: a re-delivery is a duplicate, and an event_id delivered
-- again with different content keeps its first content). Placeholder identifiers become NULL; a row left
-- without any identifier is not staged (below).
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

trimmed as (
    select
        *,
        {{ trimmed_identifiers(['openid', 'unionid', 'wecom_external_userid', 'phone', 'member_id', 'wecom_staff_userid']) }}
    from source
),

cleaned as (
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
        _file_id,
        _row_number,
        _batch_date,
        _loaded_at
    from trimmed
),

-- A row whose identifiers are all placeholders under the current list would be quarantined by ingestion
-- now (identifier.required); a row loaded before its value joined placeholder_block_list is left out here,
-- as if it had been (it stays in raw), and the event's first delivery is its first identified one.
identified as (
    select * from cleaned
    where {{ privdom_any_not_null(['openid', 'unionid', 'wecom_external_userid', 'phone', 'member_id']) }}
),

first_delivery as (
    {{ first_row_per('identified', 'event_id', '_file_id, _row_number') }}
),

renamed as (
    select
        event_id,
        occurred_at,
        channel,
        event_type,
        openid,
        unionid,
        wecom_external_userid,
        phone,
        member_id,
        campaign,
        wecom_staff_userid,
        _file_id as file_id,
        _batch_date as batch_date,
        _loaded_at as loaded_at
    from first_delivery
)

select * from renamed
{% if is_incremental() -%}
where not exists (select 1 from {{ this }} as built where built.event_id = renamed.event_id)
{%- endif %}
