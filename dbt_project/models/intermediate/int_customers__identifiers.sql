-- One row per customer: one representative value per identifier type (SPEC §3), picked deterministically.
-- Candidates are the identifier values the identity graph assigned to this customer and that are not shared
-- (a shared value such as a shop clerk's phone is nobody's own identifier). Among them the value on the most
-- recent row wins (an event's occurred_at, an order or referral version's updated_at), ties: the larger
-- value. openid: a value seen on an official_account event first (the official-account handle, SPEC §2),
-- else any openid by the same rule; openid_channel tells where it was seen. wecom_staff_userid: the staff
-- member on the latest WeCom event of the customer that names one. Phones only leave masked and as
-- SHA-256 of '86' || 11 digits (SPEC §5).
-- A value that is not shared belongs to one component, and every record it occurs on belongs to that
-- component too (the identity graph links all non-shared identifiers of a record together, and an order or
-- a referral side follows its pseudo-node, which they are linked to). So a value's owner is found from the
-- value alone: its sightings are collapsed per value and channel first, then joined to their owner, without
-- joining every sighting to its record.
-- Incremental on DuckDB: a build computes again the customers of the components the identity graph wrote again
-- since this model last ran, after the pre-hook deleted their rows and those of keys that no longer exist. A
-- customer's values and their sightings can change only then: a staged row that names a value makes the graph
-- write its record again, and an owned value's records are all its owner's (docs/DECISIONS.md, "Steps after
-- the graph take in its changes"); so the build reads the staged rows of those components' records only.
{{ config(
    materialized=privdom_incremental_materialization(),
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ privdom_customers_delete_scope('int_customers__identifiers') }}",
    post_hook="{{ privdom_mark_graph_consumed('int_customers__identifiers', after=['int_customer_keys', 'int_channel_events__customers']) }}"
) }}

with customer_keys as (
    -- one row per component of int_identity__records: every customer (incremental: the changed ones)
    select component_id, customer_key from {{ source('identity', 'int_customer_keys') }}
    {%- if is_incremental() %}
    where customer_key in ({{ privdom_customers_scope('int_customers__identifiers') }})
    {%- endif %}
),

owned_identifiers as (
    select i.identifier_type, i.identifier_value, k.customer_key
    from {{ source('identity', 'int_identity__identifiers') }} as i
    inner join customer_keys as k
        on k.component_id = i.component_id
    where not coalesce(i.is_shared, false)
),

{%- if is_incremental() %}
-- an owned value is sighted only on its owner's records, so the changed customers' sightings are all on the
-- changed components' records (one filter per source, not one per identifier type and column)
changed_records as (
    select source, record_id from {{ source('identity', 'int_identity__records') }}
    where component_id in (select component_id from customer_keys)
),
{%- endif %}

events as (
    select * from {{ ref('stg_channel_events') }}
    {%- if is_incremental() %}
    where event_id in (select record_id from changed_records where source = 'channel_events')
    {%- endif %}
),

order_versions as (
    select * from {{ ref('stg_orders__versions') }}
    {%- if is_incremental() %}
    where order_id in (select record_id from changed_records where source = 'orders')
    {%- endif %}
),

referral_versions as (
    select * from {{ ref('stg_referrals__versions') }}
    {%- if is_incremental() %}
    where referral_id in (select record_id from changed_records where source = 'referrals')
    {%- endif %}
),

-- one row per value and channel (its latest sighting): only that row can win the ranking below, and the same
-- value recurs on most of a customer's rows (an openid on every event). Only openids keep their channel; for
-- the other types the ranking's channel tie-break orders rows of one value, so it never changes the pick.
-- One aggregate per identifier type: five smaller hash tables, keyed without the type (at 1M customers 27M
-- sightings give 5.3M groups; as one aggregate they spilled to disk under the memory limit).
{%- set referral_columns = {
    'openid': ['referee_openid'],
    'unionid': ['referrer_unionid', 'referee_unionid'],
    'wecom_external_userid': [],
    'phone': ['referrer_phone', 'referee_phone'],
    'member_id': ['referrer_member_id', 'referee_member_id'],
} %}
sightings as (
    {%- for col in ['openid', 'unionid', 'wecom_external_userid', 'phone', 'member_id'] %}
    {%- set keeps_channel = col == 'openid' %}
    {{ '' if loop.first else 'union all' }}
    select
        '{{ col }}' as identifier_type,
        identifier_value,
        {{ 'seen_channel' if keeps_channel else 'cast(null as ' ~ dbt.type_string() ~ ')' }} as seen_channel,
        max(seen_at) as seen_at
    from (
        select {{ col }} as identifier_value, occurred_at as seen_at{{ ', channel as seen_channel' if keeps_channel }}
        from events where {{ col }} is not null
        union all
        select {{ col }}, updated_at{{ ', channel' if keeps_channel }}
        from order_versions where {{ col }} is not null
        {%- for referral_col in referral_columns[col] %}
        union all
        select {{ referral_col }}, updated_at{{ ', cast(null as ' ~ dbt.type_string() ~ ')' if keeps_channel }}
        from referral_versions where {{ referral_col }} is not null
        {%- endfor %}
    ) as {{ col }}_sightings
    group by identifier_value{{ ', seen_channel' if keeps_channel }}
    {%- endfor %}
),

candidate_values as (
    select
        o.customer_key,
        s.identifier_type,
        s.identifier_value,
        s.seen_channel,
        case when s.seen_channel = 'official_account' then 1 else 0 end as is_official_account,
        s.seen_at
    from sightings as s
    inner join owned_identifiers as o
        on o.identifier_type = s.identifier_type
        and o.identifier_value = s.identifier_value
),

ranked as (
    select
        *,
        row_number() over (
            partition by customer_key, identifier_type
            order by
                case when identifier_type = 'openid' then is_official_account else 0 end desc,
                seen_at desc,
                identifier_value desc,
                seen_channel desc
        ) as pick_rank
    from candidate_values
),

picked as (
    select
        customer_key,
        max(case when identifier_type = 'openid' then identifier_value end) as openid,
        max(case when identifier_type = 'openid' then seen_channel end) as openid_channel,
        max(case when identifier_type = 'unionid' then identifier_value end) as unionid,
        max(case when identifier_type = 'wecom_external_userid' then identifier_value end) as wecom_external_userid,
        max(case when identifier_type = 'phone' then identifier_value end) as phone,
        max(case when identifier_type = 'member_id' then identifier_value end) as member_id
    from ranked
    where pick_rank = 1
    group by customer_key
),

staff_events as (
    select customer_key, event_id, occurred_at, wecom_staff_userid
    from {{ ref('int_channel_events__customers') }}
    where customer_key is not null and channel = 'wecom' and wecom_staff_userid is not null
    {%- if is_incremental() %}
        and customer_key in (select customer_key from customer_keys)
    {%- endif %}
),

latest_staff as (
    {{ first_row_per('staff_events', 'customer_key', 'occurred_at desc, event_id desc') }}
),

customers as (
    select customer_key from customer_keys
)

select
    c.customer_key,
    p.openid,
    p.openid_channel,
    p.unionid,
    p.wecom_external_userid,
    s.wecom_staff_userid,
    p.member_id,
    case when p.phone is not null
        then substr(p.phone, 1, 3) || '****' || substr(p.phone, 8, 4)
    end as phone_masked,
    case when p.phone is not null then {{ privdom_sha256("'86' || p.phone") }} end as phone_sha256
from customers as c
left join picked as p
    on p.customer_key = c.customer_key
left join latest_staff as s
    on s.customer_key = c.customer_key
