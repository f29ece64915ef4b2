{#- Engine-specific expressions behind adapter.dispatch, so the marts port to Spark: default__ is DuckDB.
    Business calendar: Asia/Shanghai (SPEC §4). Windows are exact elapsed time: [t, t + N × 24 h). -#}

{#- SHA-256 of a string, lower-case hex (SPEC §5: phones leave only as sha256('86' || 11 digits)). -#}
{% macro privdom_sha256(expression) -%}
    {{ return(adapter.dispatch('privdom_sha256', 'privdom')(expression)) }}
{%- endmacro %}

{% macro default__privdom_sha256(expression) -%}
    lower(sha256({{ expression }}))
{%- endmacro %}

{% macro spark__privdom_sha256(expression) -%}
    lower(sha2({{ expression }}, 256))
{%- endmacro %}

{#- An instant plus a number of 24-hour days (exact elapsed time; negative days go back). -#}
{% macro privdom_add_days(instant, days) -%}
    {{ return(adapter.dispatch('privdom_add_days', 'privdom')(instant, days)) }}
{%- endmacro %}

{% macro default__privdom_add_days(instant, days) -%}
    ({{ instant }} + to_microseconds(cast(({{ days }}) as bigint) * 86400000000))
{%- endmacro %}

{% macro spark__privdom_add_days(instant, days) -%}
    timestamp_micros(unix_micros({{ instant }}) + cast(({{ days }}) as bigint) * 86400000000)
{%- endmacro %}

{#- Hours (fractional) elapsed from one instant to a later one. -#}
{% macro privdom_hours_between(start_instant, end_instant) -%}
    {{ return(adapter.dispatch('privdom_hours_between', 'privdom')(start_instant, end_instant)) }}
{%- endmacro %}

{% macro default__privdom_hours_between(start_instant, end_instant) -%}
    (cast(epoch_us({{ end_instant }}) - epoch_us({{ start_instant }}) as double) / 3600000000.0)
{%- endmacro %}

{% macro spark__privdom_hours_between(start_instant, end_instant) -%}
    (cast(unix_micros({{ end_instant }}) - unix_micros({{ start_instant }}) as double) / 3600000000.0)
{%- endmacro %}

{#- The Asia/Shanghai calendar period (day, week = ISO week starting Monday, month, year) holding an
    instant, as the DATE of its first day. -#}
{% macro privdom_local_period_start(part, instant) -%}
    {{ return(adapter.dispatch('privdom_local_period_start', 'privdom')(part, instant)) }}
{%- endmacro %}

{% macro default__privdom_local_period_start(part, instant) -%}
    cast(date_trunc('{{ part }}', ({{ instant }}) at time zone 'Asia/Shanghai') as date)
{%- endmacro %}

{% macro spark__privdom_local_period_start(part, instant) -%}
    cast(date_trunc('{{ part }}', from_utc_timestamp({{ instant }}, 'Asia/Shanghai')) as date)
{%- endmacro %}

{#- The instant at which an Asia/Shanghai calendar date (a DATE) begins, 00:00 Shanghai time. -#}
{% macro privdom_local_date_start(date_expression) -%}
    {{ return(adapter.dispatch('privdom_local_date_start', 'privdom')(date_expression)) }}
{%- endmacro %}

{% macro default__privdom_local_date_start(date_expression) -%}
    timezone('Asia/Shanghai', cast({{ date_expression }} as timestamp))
{%- endmacro %}

{% macro spark__privdom_local_date_start(date_expression) -%}
    to_utc_timestamp(cast({{ date_expression }} as timestamp), 'Asia/Shanghai')
{%- endmacro %}
