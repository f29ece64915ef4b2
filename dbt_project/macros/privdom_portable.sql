{#- Engine-specific expressions behind adapter.dispatch, so the models build unchanged on DuckDB (default__)
    and Spark (spark__; Databricks' dbt adapter falls back to spark__). Business calendar: Asia/Shanghai
    (SPEC §4). Windows are exact elapsed time: [t, t + N × 24 h).
    Timestamps are instants on both engines: DuckDB TIMESTAMPTZ, Spark TIMESTAMP (TIMESTAMP_LTZ). The spark__
    calendar macros convert from the session time zone (current_timezone()) explicitly, so their results do
    not depend on it; the spark target still sets spark.sql.session.timeZone = Asia/Shanghai, like DuckDB's
    TimeZone, so that what a person reads matches. See docs/scale-out.md. -#}

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

{#- convert_timezone gives the Asia/Shanghai wall clock as a TIMESTAMP_NTZ; its date and trunc() need no zone. -#}
{% macro spark__privdom_local_period_start(part, instant) -%}
    {%- set local_date = "to_date(convert_timezone(current_timezone(), 'Asia/Shanghai', " ~ instant ~ "))" -%}
    {%- if part | lower == 'day' -%}
    {{ local_date }}
    {%- elif part | lower in ('week', 'month', 'quarter', 'year') -%}
    trunc({{ local_date }}, '{{ part | lower }}')
    {%- else -%}
    {{ exceptions.raise_compiler_error("privdom_local_period_start: part must be day, week, month, quarter or year, not " ~ part) }}
    {%- endif -%}
{%- endmacro %}

{#- The instant at which an Asia/Shanghai calendar date (a DATE) begins, 00:00 Shanghai time. -#}
{% macro privdom_local_date_start(date_expression) -%}
    {{ return(adapter.dispatch('privdom_local_date_start', 'privdom')(date_expression)) }}
{%- endmacro %}

{% macro default__privdom_local_date_start(date_expression) -%}
    timezone('Asia/Shanghai', cast({{ date_expression }} as timestamp))
{%- endmacro %}

{% macro spark__privdom_local_date_start(date_expression) -%}
    cast(convert_timezone('Asia/Shanghai', current_timezone(), cast(cast({{ date_expression }} as date) as timestamp_ntz)) as timestamp)
{%- endmacro %}

{#- Free text with every mainland mobile number in it masked the way phone_masked is (138****8000), in the
    spellings people type: ASCII or full-width digits, an optional +86 / 86 prefix, a space, dot, dash or
    ideographic space between the 3-4-4 groups, letters or CJK text right beside it (SPEC §5: clear phones never
    reach segments or exports). Digits inside a longer run of digits are left alone (an order number is not a
    phone). Applied twice: one replacement consumes the character after a
    number, which can be the character before the next one ("13800138000,13900139000"). -#}
{% macro privdom_mask_phones(expression) -%}
    {{ return(adapter.dispatch('privdom_mask_phones', 'privdom')(expression)) }}
{%- endmacro %}

{% macro default__privdom_mask_phones(expression) -%}
    {%- set pattern = '(^|[^0-9０-９])(?:[+＋]?(?:86|８６)[ .　-]?)?([1１][3-9３-９][0-9０-９])[ .　-]?[0-9０-９]{4}[ .　-]?([0-9０-９]{4})([^0-9０-９]|$)' -%}
    regexp_replace(regexp_replace({{ expression }}, '{{ pattern }}', '\1\2****\3\4', 'g'), '{{ pattern }}', '\1\2****\3\4', 'g')
{%- endmacro %}

{% macro spark__privdom_mask_phones(expression) -%}
    {%- set pattern = '(^|[^0-9０-９])(?:[+＋]?(?:86|８６)[ .　-]?)?([1１][3-9３-９][0-9０-９])[ .　-]?[0-9０-９]{4}[ .　-]?([0-9０-９]{4})([^0-9０-９]|$)' -%}
    regexp_replace(regexp_replace({{ expression }}, '{{ pattern }}', '$1$2****$3$4'), '{{ pattern }}', '$1$2****$3$4')
{%- endmacro %}
