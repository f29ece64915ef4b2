{{ config(severity='warn', tags=['ingestion'], meta={'dagster': {'ref': {'name': 'stg_channel_events'}}}) }}
-- depends_on: {{ ref('stg_channel_events') }}
-- (an asset check of staging/stg_channel_events, which keeps each event_id's first content: a test on the raw
-- source alone was logged as an observation, and `privdom run`'s summary never showed its warning)
-- SPEC §2: an event_id delivered again with different content keeps its first content and counts as a
-- conflict. Each returned row is one conflicting event_id (warning, never an error).
-- Distinct contents are counted only for event_ids delivered more than once (at 1M customers ~50k of 10M):
-- 3.5-4.0 s -> 2.3-2.6 s, the same rows (event_id is required: a row without one is quarantined, never in raw).
-- After a successful build, only for the event_ids delivered since (privdom_tested_through_file_id,
-- macros/data_tests/privdom_rows_to_test.sql): a conflict is reported by the build that takes in its second content;
-- every conflict by a full refresh or `dbt test --vars '{privdom_test_all_rows: true}'`.
{%- set through = privdom_tested_through_file_id() %}
-- Contents are compared column by column (macros/raw_contents.sql; NULLs equal in DISTINCT), not by `_row_hash`,
-- which can collide.
select event_id, count(*) as versions
from (
    select distinct {{ privdom_raw_contents('channel_events') | join(', ') }}
    from {{ source('raw', 'channel_events') }}
    where event_id in (
        select event_id
        from {{ source('raw', 'channel_events') }}
        {%- if through %}
        where _file_id > {{ through }}
        {%- else %}
        group by event_id
        having count(*) > 1
        {%- endif %}
    )
) as contents
group by event_id
having count(*) > 1
