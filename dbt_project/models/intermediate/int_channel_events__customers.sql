-- One row per channel event (its first delivery) with the customer_key of the person it names, and the columns
-- the customer models read. Clear phones are left out on purpose (SPEC §5); the other identifiers an event
-- names are in stg_channel_events (join on event_id): at 1M customers this table has 10M rows, and writing four
-- string columns nobody downstream reads cost ~3 s of its ~9 s (docs/performance.md).
-- Incremental on DuckDB (delete+insert by event_id): a build writes again the events of the components the
-- identity graph wrote again since this model last ran (their customer_key may have changed; no other event's
-- can: the keys change only for those components) and the events of files newer than any it holds;
-- everything when the graph was built in full since (docs/DECISIONS.md, "Steps after the graph take in its
-- changes").
{{ config(
    materialized=privdom_incremental_materialization(),
    incremental_strategy='delete+insert',
    unique_key='event_id',
    on_schema_change='fail',
    post_hook="{{ privdom_mark_graph_consumed('int_channel_events__customers', after=['int_customer_keys']) }}"
) }}

{%- if is_incremental() %}
{#- asked once, when dbt compiles the model: a constant lets DuckDB filter the records before the join -#}
{%- set full_recompute = privdom_graph_full_recompute('int_channel_events__customers', constant=true) %}
{%- endif %}

with persons as (
    select r.record_id, k.customer_key
    from {{ source('identity', 'int_identity__records') }} as r
    inner join {{ source('identity', 'int_customer_keys') }} as k
        on k.component_id = r.component_id
    where r.source = 'channel_events' and r.role = 'person'
    {%- if is_incremental() %}
        and ({{ full_recompute }}
            or r.component_id in ({{ privdom_graph_changed_components('int_channel_events__customers') }}))
    {%- endif %}
),

events as (
    select * from {{ ref('stg_channel_events') }}
    {%- if is_incremental() %}
    where {{ full_recompute }}
        or file_id > (select coalesce(max(file_id), 0) from {{ this }})
        or event_id in (select record_id from persons)
    {%- endif %}
)

select
    e.event_id,
    e.file_id,
    p.customer_key,
    e.occurred_at,
    e.channel,
    e.event_type,
    e.wecom_staff_userid,
    e.member_id,
    -- which build wrote the row: its data tests look at the rows written since the last build that passed
    -- (macros/data_tests/privdom_rows_to_test.sql)
    {{ privdom_build_stamp() }} as _built_at
from events as e
left join persons as p
    on p.record_id = e.event_id
