{#- More engine-specific SQL behind adapter.dispatch (default__ = DuckDB, spark__ = Spark 4.x / Databricks),
    for models that need them. Calendar helpers (month series, add_months, months_between, ratios) live in
    privdom_calendar.sql. Portable as written, needing no macro: || concat, concat_ws, split_part, substr,
    lower/upper/trim, nullif, coalesce, least/greatest (both skip NULLs), count_if, row_number/rank,
    cast(x as decimal(18, 2)), year()/month(), `with recursive` (Spark 4.1+, see privdom_require_recursive_cte). -#}

{#- The type of an instant, for casts such as cast(null as ...) in a union. dbt.type_timestamp() is NOT it:
    on DuckDB that is TIMESTAMP without time zone. -#}
{% macro privdom_type_instant() -%}
    {{ return(adapter.dispatch('privdom_type_instant', 'privdom')()) }}
{%- endmacro %}

{% macro default__privdom_type_instant() -%}
    timestamptz
{%- endmacro %}

{% macro spark__privdom_type_instant() -%}
    timestamp
{%- endmacro %}

{#- Whole days from one DATE to a later one (negative when end_date is earlier). -#}
{% macro privdom_date_diff_days(start_date, end_date) -%}
    {{ return(adapter.dispatch('privdom_date_diff_days', 'privdom')(start_date, end_date)) }}
{%- endmacro %}

{% macro default__privdom_date_diff_days(start_date, end_date) -%}
    date_diff('day', cast({{ start_date }} as date), cast({{ end_date }} as date))
{%- endmacro %}

{% macro spark__privdom_date_diff_days(start_date, end_date) -%}
    datediff(cast({{ end_date }} as date), cast({{ start_date }} as date))
{%- endmacro %}

{#- A DATE moved by a whole number of calendar days (negative goes back). -#}
{% macro privdom_date_add_days(date_expression, days) -%}
    {{ return(adapter.dispatch('privdom_date_add_days', 'privdom')(date_expression, days)) }}
{%- endmacro %}

{% macro default__privdom_date_add_days(date_expression, days) -%}
    cast(cast({{ date_expression }} as date) + cast(({{ days }}) as integer) as date)
{%- endmacro %}

{% macro spark__privdom_date_add_days(date_expression, days) -%}
    date_add(cast({{ date_expression }} as date), cast(({{ days }}) as int))
{%- endmacro %}

{#- A SQL string literal holding `text` as it is. DuckDB's literals take a backslash as itself; Spark's read it
    as an escape (spark.sql.parser.escapedStringLiterals is off by default), so the placeholder `\N` (the NULL
    marker of MySQL and Hive exports, lower-cased `\n`) matched nothing there and `n/a\` broke the SQL (the
    injection review). -#}
{% macro privdom_string_literal(text) -%}
    {{ return(adapter.dispatch('privdom_string_literal', 'privdom')(text)) }}
{%- endmacro %}

{% macro default__privdom_string_literal(text) -%}
    '{{ text | replace("'", "''") }}'
{%- endmacro %}

{% macro spark__privdom_string_literal(text) -%}
    '{{ text | replace("\\", "\\\\") | replace("'", "\\'") }}'
{%- endmacro %}

{#- Aggregate: the non-NULL values joined by `delimiter` (a plain string), in the order of `order_by` (an SQL
    ORDER BY list; default: the value itself). distinct=true keeps each value once, and then order_by must be
    the value. NULL when the group has no non-NULL value. Spark: listagg … within group (Spark 4.0+). -#}
{% macro privdom_string_agg(expression, delimiter, order_by=none, distinct=false) -%}
    {{ return(adapter.dispatch('privdom_string_agg', 'privdom')(expression, delimiter, order_by, distinct)) }}
{%- endmacro %}

{% macro default__privdom_string_agg(expression, delimiter, order_by, distinct) -%}
    string_agg({{ 'distinct ' if distinct }}{{ expression }}, {{ privdom_string_literal(delimiter) }} order by {{ order_by or expression }})
{%- endmacro %}

{% macro spark__privdom_string_agg(expression, delimiter, order_by, distinct) -%}
    listagg({{ 'distinct ' if distinct }}{{ expression }}, {{ privdom_string_literal(delimiter) }}) within group (order by {{ order_by or expression }})
{%- endmacro %}

{#- Aggregate: the distinct non-NULL values as an array sorted ascending (NULL elements never appear; an
    empty array when the group has none). -#}
{% macro privdom_sorted_set_agg(expression) -%}
    {{ return(adapter.dispatch('privdom_sorted_set_agg', 'privdom')(expression)) }}
{%- endmacro %}

{% macro default__privdom_sorted_set_agg(expression) -%}
    coalesce(list_sort(list(distinct {{ expression }}) filter (where {{ expression }} is not null)), [])
{%- endmacro %}

{% macro spark__privdom_sorted_set_agg(expression) -%}
    array_sort(collect_set({{ expression }}))
{%- endmacro %}

{#- Whether an array holds a value; the number of elements of an array (NULL for a NULL array). -#}
{% macro privdom_array_contains(array_expression, value) -%}
    {{ return(adapter.dispatch('privdom_array_contains', 'privdom')(array_expression, value)) }}
{%- endmacro %}

{% macro default__privdom_array_contains(array_expression, value) -%}
    list_contains({{ array_expression }}, {{ value }})
{%- endmacro %}

{% macro spark__privdom_array_contains(array_expression, value) -%}
    array_contains({{ array_expression }}, {{ value }})
{%- endmacro %}

{% macro privdom_array_size(array_expression) -%}
    {{ return(adapter.dispatch('privdom_array_size', 'privdom')(array_expression)) }}
{%- endmacro %}

{% macro default__privdom_array_size(array_expression) -%}
    len({{ array_expression }})
{%- endmacro %}

{% macro spark__privdom_array_size(array_expression) -%}
    case when {{ array_expression }} is not null then size({{ array_expression }}) end
{%- endmacro %}

{#- `with recursive` needs Spark 4.1 or later (DuckDB always has it). Call this at the top of a model that uses
    a recursive CTE: on an older Spark the build stops with this message instead of a parse error. -#}
{% macro privdom_require_recursive_cte() -%}
    {{ return(adapter.dispatch('privdom_require_recursive_cte', 'privdom')()) }}
{%- endmacro %}

{% macro default__privdom_require_recursive_cte() -%}
{%- endmacro %}

{#- Databricks Runtime 17 and Databricks SQL have WITH RECURSIVE while version() says Spark 4.0: no check there
    (an older runtime stops the build with its own parse error). Not run here: no workspace is reachable. -#}
{% macro databricks__privdom_require_recursive_cte() -%}
{%- endmacro %}

{% macro spark__privdom_require_recursive_cte() -%}
    {%- if execute -%}
        {%- set version = run_query("select version()").columns[0].values()[0] | string -%}
        {%- set parts = (version.split(' ')[0]).split('.') -%}
        {%- if (parts[0] | int, parts[1] | int) < (4, 1) -%}
            {{ exceptions.raise_compiler_error(
                "This model uses WITH RECURSIVE, which needs Spark 4.1 or later; the cluster runs Spark "
                ~ version ~ ". Use a Spark 4.1+ runtime."
            ) }}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}

{#- A struct of named fields, from a list of (name, expression) pairs. Structs compare field by field in order,
    so min()/max() of one picks a row by several columns in one aggregate (fields never NULL there: NULL fields
    compare differently on the two engines). -#}
{% macro privdom_struct(fields) -%}
    {{ return(adapter.dispatch('privdom_struct', 'privdom')(fields)) }}
{%- endmacro %}

{% macro default__privdom_struct(fields) -%}
    struct_pack({% for name, expression in fields %}{{ name }} := {{ expression }}{{ ', ' if not loop.last }}{% endfor %})
{%- endmacro %}

{% macro spark__privdom_struct(fields) -%}
    named_struct({% for name, expression in fields %}'{{ name }}', {{ expression }}{{ ', ' if not loop.last }}{% endfor %})
{%- endmacro %}
