{#- The identity graph's change log (orchestration/identity/graph.py, docs/DECISIONS.md "Steps after the graph
    take in its changes"). Each incremental build of the graph logs the components whose records it wrote again
    (by their ids before and after the build); a reader ("consumer") records the newest build it has taken in.
    The log's meaning is defined once, by DuckDB macros the graph stores with its state
    (identity_state.full_recompute, identity_state.changed_components); these wrap them for models. -#}

{%- macro privdom_graph_log_exists() -%}
    {%- if not execute -%}{{ return(false) }}{%- endif -%}
    {%- set log = adapter.get_relation(database=this.database, schema='identity_state', identifier='graph_builds') -%}
    {{ return(log is not none) }}
{%- endmacro %}

{#- A boolean SQL expression: `consumer` must compute everything again (no log, nothing taken in yet, or a
    full build of the graph since). By default a scalar subquery, evaluated when the SQL runs. With
    constant=true the answer itself (true / false), asked of identity_state.full_recompute when the model is
    compiled, which dbt does just before it runs the model (the answer changes only in the model's own
    post-hook): `false or component_id in (...)` is then a plain filter that DuckDB applies before a join
    (int_channel_events__customers joined all 10M event records to their keys before the subquery's filter: a
    new day at 1M, 0.84 -> 0.45 s). Not everywhere: where the scope is a compound query
    (int_components__first_touch's) DuckDB then builds its hash table on the 11.7M records instead of on the
    scope (1.13 -> 2.3-2.65 s), which the subquery form avoids (docs/performance.md, "Eighteenth session"). -#}
{% macro privdom_graph_full_recompute(consumer, constant=false) -%}
    {%- if not privdom_graph_log_exists() -%}
        true
    {%- elif constant -%}
        {{ 'true' if run_query("select identity_state.full_recompute('" ~ consumer ~ "')").columns[0].values()[0] else 'false' }}
    {%- else -%}
        (select identity_state.full_recompute('{{ consumer }}'))
    {%- endif -%}
{%- endmacro %}

{#- A query of component_id: the components the graph wrote again since `consumer` last took its builds in. -#}
{% macro privdom_graph_changed_components(consumer) -%}
    {%- if privdom_graph_log_exists() -%}
        select component_id from identity_state.changed_components('{{ consumer }}')
    {%- else -%}
        select cast(null as bigint) as component_id where false
    {%- endif -%}
{%- endmacro %}

{#- Post-hook: `consumer` has taken in every build of the log (the same statements as
    orchestration.identity.graph.mark_consumed_sql), or only as far as every reader in `after` has: the readers
    whose tables it read (directly or through a table built from them). A reader computed from a table that has
    not taken in the newest builds yet (a run that built it without them) must take those builds in again when
    they arrive. When a reader in `after` has no place (never built, or forgotten for lagging too far behind:
    the log may have dropped builds it never took in), `consumer` gets none either, and computes everything when
    it runs again: a place of 0 would take in only the builds the log still keeps. Only on DuckDB, where the
    graph keeps its log. -#}
{% macro privdom_mark_graph_consumed(consumer, after=[]) -%}
    {{ return(adapter.dispatch('privdom_mark_graph_consumed', 'privdom')(consumer, after)) }}
{%- endmacro %}

{% macro default__privdom_mark_graph_consumed(consumer, after=[]) -%}
    select 1
{%- endmacro %}

{% macro duckdb__privdom_mark_graph_consumed(consumer, after=[]) -%}
    {%- if privdom_graph_log_exists() -%}
        delete from identity_state.graph_consumers where consumer = '{{ consumer }}';
        insert into identity_state.graph_consumers
        select '{{ consumer }}', least(coalesce(max(build_seq), 0)
            {%- for upstream in after %}, identity_state.graph_consumed('{{ upstream }}'){% endfor %})
        from identity_state.graph_builds
        {%- for upstream in after %}
        {{ 'having' if loop.first else 'and' }} identity_state.graph_consumed('{{ upstream }}') is not null
        {%- endfor %}
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{#- The components int_components__first_touch computes again in an incremental build: those the identity
    graph wrote again since the model last ran, and the referees of referrals whose referrer is in one of them
    (a referee's acquisition_referrer_component_id is its referrer's component). -#}
{% macro privdom_first_touch_scope() -%}
    {%- set changed = privdom_graph_changed_components('int_components__first_touch') -%}
    select component_id from ({{ changed }}) as changed
    union
    select referee.component_id
    from {{ source('identity', 'int_identity__records') }} as referrer
    inner join {{ source('identity', 'int_identity__records') }} as referee
        on referee.source = 'referrals' and referee.role = 'referee' and referee.record_id = referrer.record_id
    where referrer.source = 'referrals' and referrer.role = 'referrer'
        and referrer.component_id in ({{ changed }})
{%- endmacro %}

{#- Pre-hook of int_components__first_touch: in an incremental build, delete the rows it computes again. -#}
{% macro privdom_first_touch_delete_scope() -%}
    {%- if is_incremental() -%}
        delete from {{ this }}
        where {{ privdom_graph_full_recompute('int_components__first_touch') }}
            or component_id in ({{ privdom_first_touch_scope() }})
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}

{#- The customer_keys a customer-grain model computes again in an incremental build: the keys of the components
    the identity graph wrote again since `consumer` last ran (the keys change only for those components). -#}
{% macro privdom_customers_scope(consumer) -%}
    select customer_key from {{ source('identity', 'int_customer_keys') }}
    where {{ privdom_graph_full_recompute(consumer) }}
        or component_id in ({{ privdom_graph_changed_components(consumer) }})
{%- endmacro %}

{#- Pre-hook of a customer-grain incremental model: delete the rows it computes again, and the rows of keys that
    no longer exist (merged away or retired: they held changed components). -#}
{% macro privdom_customers_delete_scope(consumer) -%}
    {%- if is_incremental() -%}
        delete from {{ this }}
        where customer_key in ({{ privdom_customers_scope(consumer) }})
            or customer_key not in (select customer_key from {{ source('identity', 'int_customer_keys') }})
    {%- else -%}
        select 1
    {%- endif -%}
{%- endmacro %}
