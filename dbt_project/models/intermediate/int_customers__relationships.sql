-- One row per customer: the owned relationships and consent as of the data's end (SPEC §4 "Reachable").
-- Each relationship's state is its latest state in int_customers__relationship_months (the one definition of
-- the pair rules and their ties). Membership is for good, from the first register_member event or the first
-- row carrying the customer's member_id (an event's occurred_at, an order's created_at, a referral's
-- updated_at; every version counts). A shared member_id (SPEC §3: a test account's or a shop's number that
-- links to more than identity_max_degree values) is nobody's own, as in int_customers__identifiers: a row
-- carrying it makes nobody a member, so nobody becomes reachable (and exportable) through it.
-- A customer's row depends on their own rows only, so on DuckDB the model is incremental, like
-- int_customers__identifiers: a build computes again the customers of the components the identity graph wrote
-- again since this model last ran (a new event, order or referral version makes the graph write its record
-- again; keys change only for changed components), after the pre-hook deleted their rows and those of keys that
-- no longer exist.
{{ config(
    materialized=privdom_incremental_materialization(),
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ privdom_customers_delete_scope('int_customers__relationships') }}",
    post_hook="{{ privdom_mark_graph_consumed('int_customers__relationships', after=['int_customer_keys', 'int_components__first_touch', 'int_channel_events__customers', 'int_customers__relationship_months']) }}"
) }}

with customers as (
    select customer_key from {{ ref('int_customers__keyed') }}
    {%- if is_incremental() %}
    where customer_key in ({{ privdom_customers_scope('int_customers__relationships') }})
    {%- endif %}
),

events as (
    select * from {{ ref('int_channel_events__customers') }}
    where customer_key is not null
    {%- if is_incremental() %}
      and customer_key in (select customer_key from customers)
    {%- endif %}
),

latest_states as (
    select * from {{ ref('int_customers__relationship_months') }}
    where valid_until_month is null
    {%- if is_incremental() %}
      and customer_key in (select customer_key from customers)
    {%- endif %}
),

relationship_flags as (
    select
        customer_key,
        max(case when relationship = 'official_account' and is_live then 1 else 0 end) as follows_official_account,
        max(case when relationship = 'wecom' and is_live then 1 else 0 end) as is_wecom_contact,
        max(case when relationship = 'community_group' and is_live then 1 else 0 end) as in_community_group,
        max(case when relationship = 'consent' and not is_live then 1 else 0 end) as opted_out,
        max(case when relationship = 'official_account' then changed_at end) as official_account_changed_at,
        max(case when relationship = 'wecom' then changed_at end) as wecom_changed_at,
        max(case when relationship = 'community_group' then changed_at end) as community_group_changed_at,
        max(case when relationship = 'consent' then changed_at end) as consent_changed_at
    from latest_states
    group by customer_key
),

customer_keys as (
    select r.source, r.record_id, r.role, k.customer_key
    from {{ source('identity', 'int_identity__records') }} as r
    inner join {{ source('identity', 'int_customer_keys') }} as k
        on k.component_id = r.component_id
    {%- if is_incremental() %}
    where k.customer_key in (select customer_key from customers)
    {%- endif %}
),

-- the few member_id values the identity graph found shared (a handful in millions)
shared_member_ids as (
    select identifier_value as member_id
    from {{ source('identity', 'int_identity__identifiers') }}
    where identifier_type = 'member_id' and is_shared and identifier_value is not null
),

member_rows as (
    select customer_key, occurred_at as member_at
    from events
    where event_type = 'register_member'
        or (member_id is not null and member_id not in (select member_id from shared_member_ids))
    union all
    select k.customer_key, o.created_at as member_at
    from {{ ref('stg_orders__versions') }} as o
    inner join customer_keys as k
        on k.source = 'orders' and k.role = 'buyer' and k.record_id = o.order_id
    where o.member_id is not null and o.member_id not in (select member_id from shared_member_ids)
    union all
    select k.customer_key, v.updated_at as member_at
    from {{ ref('stg_referrals__versions') }} as v
    inner join customer_keys as k
        on k.source = 'referrals' and k.record_id = v.referral_id
        and (
            (k.role = 'referrer' and v.referrer_member_id is not null
                and v.referrer_member_id not in (select member_id from shared_member_ids))
            or (k.role = 'referee' and v.referee_member_id is not null
                and v.referee_member_id not in (select member_id from shared_member_ids))
        )
),

member_since as (
    select customer_key, min(member_at) as member_since
    from member_rows
    group by customer_key
),

combined as (
    select
        c.customer_key,
        coalesce(f.follows_official_account, 0) = 1 as follows_official_account,
        coalesce(f.is_wecom_contact, 0) = 1 as is_wecom_contact,
        coalesce(f.in_community_group, 0) = 1 as in_community_group,
        m.member_since is not null as is_member,
        m.member_since,
        coalesce(f.opted_out, 0) = 1 as opted_out,
        f.official_account_changed_at,
        f.wecom_changed_at,
        f.community_group_changed_at,
        f.consent_changed_at
    from customers as c
    left join relationship_flags as f
        on f.customer_key = c.customer_key
    left join member_since as m
        on m.customer_key = c.customer_key
)

select
    customer_key,
    follows_official_account,
    is_wecom_contact,
    in_community_group,
    is_member,
    member_since,
    opted_out,
    (follows_official_account or is_wecom_contact or in_community_group or is_member) and not opted_out as is_reachable,
    -- live relationships in alphabetical order; concat_ws skips NULLs; NULL when there is none
    nullif(concat_ws(',',
        case when in_community_group then 'community_group' end,
        case when is_member then 'member' end,
        case when follows_official_account then 'official_account' end,
        case when is_wecom_contact then 'wecom' end
    ), '') as live_relationships,
    official_account_changed_at,
    wecom_changed_at,
    community_group_changed_at,
    consent_changed_at
from combined
