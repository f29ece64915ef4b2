-- One row per customer × owned relationship × Asia/Shanghai month in which the relationship changed: its state at
-- the end of that month, and until which month that state holds (SPEC §4 "Reachable"). This is the one place
-- that decides a relationship's state; int_customers__relationships (as of the data's end) and
-- int_customers__reachable_spans (at every month end) both read it.
-- A relationship's state is set by the latest event of its pair, whatever channel the row names:
-- follow/unfollow (official_account), add_contact/remove_contact (wecom), join_group/leave_group
-- (community_group); consent by the latest of opt_out/opt_in. On equal times the ending event wins and opt_out
-- wins over opt_in; then the larger event_id, so the result never depends on row order.
-- A customer's rows depend on their own events only, so on DuckDB the model is incremental, like
-- int_customers__identifiers: a build computes again the customers of the components the identity graph wrote
-- again since this model last ran (a new event makes the graph write its record again; keys change only for
-- changed components), after the pre-hook deleted their rows and those of keys that no longer exist.
{{ config(
    materialized=privdom_incremental_materialization(),
    incremental_strategy='append',
    on_schema_change='fail',
    pre_hook="{{ privdom_customers_delete_scope('int_customers__relationship_months') }}",
    post_hook="{{ privdom_mark_graph_consumed('int_customers__relationship_months', after=['int_channel_events__customers']) }}"
) }}

with events as (
    select * from {{ ref('int_channel_events__customers') }}
    where customer_key is not null
      and event_type in ('follow', 'unfollow', 'add_contact', 'remove_contact', 'join_group', 'leave_group', 'opt_out', 'opt_in')
    {%- if is_incremental() %}
      and customer_key in ({{ privdom_customers_scope('int_customers__relationship_months') }})
    {%- endif %}
),

pair_events as (
    select
        customer_key,
        event_id,
        occurred_at,
        {{ privdom_local_period_start('month', 'occurred_at') }} as change_month,
        case
            when event_type in ('follow', 'unfollow') then 'official_account'
            when event_type in ('add_contact', 'remove_contact') then 'wecom'
            when event_type in ('join_group', 'leave_group') then 'community_group'
            else 'consent'
        end as relationship,
        -- 1 for the event that ends the relationship (or withdraws consent): it wins ties
        case when event_type in ('unfollow', 'remove_contact', 'leave_group', 'opt_out') then 1 else 0 end as is_ending
    from events
),

month_end_states as (
    {{ first_row_per('pair_events', 'customer_key, relationship, change_month', 'occurred_at desc, is_ending desc, event_id desc') }}
)

select
    customer_key,
    relationship,
    change_month,
    lead(change_month) over (partition by customer_key, relationship order by change_month) as valid_until_month,
    -- for consent, "live" means consenting (the last event was opt_in)
    is_ending = 0 as is_live,
    occurred_at as changed_at,
    event_id as changed_by_event_id
from month_end_states
