{{ config(severity='warn', tags=['ingestion']) }}
-- SPEC §2: an event_id delivered again with different content keeps its first content and counts as a
-- conflict. Each returned row is one conflicting event_id (warning, never an error).
select event_id, count(distinct _row_hash) as versions
from {{ source('raw', 'channel_events') }}
group by event_id
having count(distinct _row_hash) > 1
