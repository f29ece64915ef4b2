{#- SPEC §3: placeholder identifier values never name a person. The list is the privdom setting
    placeholder_values (built-ins plus the configured block list), passed in as a dbt var; "all zeros" is a
    pattern. Returns the identifier, trimmed, or NULL when it is a placeholder.

    With `trimmed`, the model has trimmed_identifiers' column `<column>__trimmed` (trim(column)) to read: each
    value is trimmed once instead of three times. The cheap tests run first: only a value no longer than the longest
    placeholder is lower-cased and looked up, only one starting with '0' meets the pattern. That is the same
    rule because lower-casing never shortens a value on DuckDB (checked over every code point); Spark's lower()
    follows the JVM's default locale, where under a Turkish one 'I' + U+0307 becomes one 'i', a locale in which
    the lookup itself already depended on it. 10M openids at 1M customers: 1.46 s -> 0.49 s for the column
    (docs/performance.md). -#}
{% macro clean_identifier(column, trimmed=false) -%}
    {%- set value = column ~ '__trimmed' if trimmed else 'trim(' ~ column ~ ')' -%}
    {%- set placeholders = var('placeholder_values') -%}
    case
        when {{ column }} is null then null
        {%- if placeholders %}
        when length({{ value }}) <= {{ placeholders | map('length') | max }} and lower({{ value }}) in (
            {%- for placeholder in placeholders %}{{ privdom_string_literal(placeholder) }}{{ "," if not loop.last }}{% endfor -%}
        ) then null
        {%- endif %}
        when {{ value }} like '0%' and {{ privdom_regexp_full_match(value, '0+') }} then null
        else {{ value }}
    end
{%- endmacro %}

{#- `trim(<column>) as <column>__trimmed` for each column, for clean_identifier(column, trimmed=true). -#}
{% macro trimmed_identifiers(columns) -%}
    {%- for column in columns %}
        trim({{ column }}) as {{ column }}__trimmed{{ "," if not loop.last }}
    {%- endfor %}
{%- endmacro %}

{% macro privdom_regexp_full_match(expression, pattern) -%}
    {{ return(adapter.dispatch('privdom_regexp_full_match', 'privdom')(expression, pattern)) }}
{%- endmacro %}

{% macro default__privdom_regexp_full_match(expression, pattern) -%}
    regexp_full_match({{ expression }}, '{{ pattern }}')
{%- endmacro %}

{% macro spark__privdom_regexp_full_match(expression, pattern) -%}
    ({{ expression }} rlike '^(?:{{ pattern }})$')
{%- endmacro %}

{#- TRUE when at least one of `columns` is not NULL: the ingestion rule "at least one identifier must be present"
    (contract kind any_identifier), on identifiers staging has cleaned of placeholders. -#}
{% macro privdom_any_not_null(columns) -%}
    ({% for column in columns %}{{ column }} is not null{{ " or " if not loop.last }}{% endfor %})
{%- endmacro %}
