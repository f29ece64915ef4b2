{#- Calendar helpers for monthly marts, portable between DuckDB (default__) and Spark (spark__).
    Months are DATEs holding the first day of an Asia/Shanghai calendar month (see privdom_local_period_start). -#}

{#- A select of one column `period_month`: every first-of-month DATE from first_month to last_month, both
    included, for the single row of `relation` (a CTE or table name) whose columns hold the two bounds. -#}
{% macro privdom_month_series(relation, first_month, last_month) -%}
    {{ return(adapter.dispatch('privdom_month_series', 'privdom')(relation, first_month, last_month)) }}
{%- endmacro %}

{% macro default__privdom_month_series(relation, first_month, last_month) -%}
    select cast(unnest(generate_series(
        cast({{ first_month }} as timestamp), cast({{ last_month }} as timestamp), interval 1 month
    )) as date) as period_month
    from {{ relation }}
{%- endmacro %}

{% macro spark__privdom_month_series(relation, first_month, last_month) -%}
    select explode(sequence(cast({{ first_month }} as date), cast({{ last_month }} as date), interval 1 month)) as period_month
    from {{ relation }}
{%- endmacro %}

{#- A first-of-month DATE moved by a whole number of months (negative goes back). -#}
{% macro privdom_add_months(month_date, months) -%}
    {{ return(adapter.dispatch('privdom_add_months', 'privdom')(month_date, months)) }}
{%- endmacro %}

{% macro default__privdom_add_months(month_date, months) -%}
    cast(cast({{ month_date }} as date) + to_months(cast({{ months }} as integer)) as date)
{%- endmacro %}

{% macro spark__privdom_add_months(month_date, months) -%}
    add_months(cast({{ month_date }} as date), cast({{ months }} as int))
{%- endmacro %}

{#- Whole calendar months from one first-of-month DATE to a later one (year() and month() exist on both engines). -#}
{% macro privdom_months_between(earlier_month, later_month) -%}
    cast((year({{ later_month }}) - year({{ earlier_month }})) * 12 + (month({{ later_month }}) - month({{ earlier_month }})) as bigint)
{%- endmacro %}

{#- A ratio as DOUBLE, NULL when the denominator is 0 or NULL (SPEC §4: a rate over 0 is NULL). Sums of money
    stay DECIMAL(18,2) in their own columns; ratios are computed from them in binary floating point, which is
    the same IEEE arithmetic on every engine. -#}
{% macro privdom_ratio(numerator, denominator) -%}
    (cast({{ numerator }} as double) / nullif(cast({{ denominator }} as double), 0))
{%- endmacro %}
