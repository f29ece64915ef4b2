{#- Every touch that can acquire a customer, per identity component: the touches of the identity records
    `records`, each referral touch with the component of its referrer looked up in `referrers` (both a relation
    or a parenthesised query with the columns of int_identity__records). The body of the view
    int_touches__unioned (all records, both times), and of int_components__first_touch's incremental builds,
    which take in the changed components' records only (a filter on the view is not pushed into it) but must
    find a referrer in any component (a referee can change while its referrer does not). -#}
{% macro privdom_touches(records, referrers) %}
with touch_records as (
    select * from {{ records }}
),

referrer_records as (
    select * from {{ referrers }}
),

channel_event_touches as (
    select
        r.component_id,
        e.occurred_at as touched_at,
        2 as touch_priority,
        e.channel as tie_breaker,
        e.channel as acquisition_channel,
        e.campaign as acquisition_campaign,
        cast(null as {{ dbt.type_string() }}) as referrer_component_id,
        'channel_events' as touch_source,
        e.event_id as record_id
    from {{ ref('stg_channel_events') }} as e
    inner join touch_records as r
        on r.source = 'channel_events' and r.role = 'person' and r.record_id = e.event_id
    where e.event_type not in ('unfollow', 'remove_contact', 'leave_group', 'opt_out', 'opt_in')
),

order_touches as (
    select
        r.component_id,
        o.created_at as touched_at,
        3 as touch_priority,
        o.channel as tie_breaker,
        o.channel as acquisition_channel,
        cast(null as {{ dbt.type_string() }}) as acquisition_campaign,
        cast(null as {{ dbt.type_string() }}) as referrer_component_id,
        'orders' as touch_source,
        o.order_id as record_id
    from {{ ref('stg_orders') }} as o
    inner join touch_records as r
        on r.source = 'orders' and r.role = 'buyer' and r.record_id = o.order_id
),

-- A referral touches its referee at the earliest updated_at at which it was seen clicked or later, so
-- acquisition times never move when the referral later converts.
referral_clicks as (
    select referral_id, min(updated_at) as clicked_at
    from {{ ref('stg_referrals__versions') }}
    where status in ('clicked', 'registered', 'converted')
    group by referral_id
),

referral_touches as (
    select
        referee.component_id,
        c.clicked_at as touched_at,
        1 as touch_priority,
        c.referral_id as tie_breaker,
        'referral' as acquisition_channel,
        cast(null as {{ dbt.type_string() }}) as acquisition_campaign,
        cast(referrer.component_id as {{ dbt.type_string() }}) as referrer_component_id,
        'referrals' as touch_source,
        c.referral_id as record_id
    from referral_clicks as c
    inner join touch_records as referee
        on referee.source = 'referrals' and referee.role = 'referee' and referee.record_id = c.referral_id
    left join referrer_records as referrer
        on referrer.source = 'referrals' and referrer.role = 'referrer' and referrer.record_id = c.referral_id
)

select * from referral_touches
union all
select * from channel_event_touches
union all
select * from order_touches
{% endmacro %}
