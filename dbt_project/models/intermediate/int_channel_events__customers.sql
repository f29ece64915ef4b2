-- One row per channel event (its first delivery) with the customer_key of the person it names, and the columns
-- the customer models read. Clear phones are left out on purpose (SPEC §5); the other identifiers an event
-- names are in stg_channel_events (join on event_id): at 1M customers this table has 10M rows, and writing four
-- string columns nobody downstream reads cost ~3 s of its ~9 s (docs/performance.md).
with events as (
    select * from {{ ref('stg_channel_events') }}
),

persons as (
    select r.record_id, k.customer_key
    from {{ source('identity', 'int_identity__records') }} as r
    inner join {{ source('identity', 'int_customer_keys') }} as k
        on k.component_id = r.component_id
    where r.source = 'channel_events' and r.role = 'person'
)

select
    e.event_id,
    p.customer_key,
    e.occurred_at,
    e.channel,
    e.event_type,
    e.wecom_staff_userid,
    e.member_id
from events as e
left join persons as p
    on p.record_id = e.event_id
