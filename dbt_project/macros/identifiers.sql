{#- SPEC §3: placeholder identifier values never name a person. The list is the privdom setting
    placeholder_values (built-ins plus the configured block list), passed in as a dbt var; "all zeros" is a
    pattern. Returns the identifier, or NULL when it is a placeholder. -#}
{% macro clean_identifier(column) -%}
    case
        when {{ column }} is null then null
        when lower(trim({{ column }})) in (
            {%- for value in var('placeholder_values') %}'{{ value | replace("'", "''") }}'{{ "," if not loop.last }}{% endfor -%}
        ) then null
        when {{ privdom_regexp_full_match('trim(' ~ column ~ ')', '0+') }} then null
        else trim({{ column }})
    end
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
