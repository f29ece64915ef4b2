{#- Generic tests written here because dbt packages (dbt_utils) cannot be fetched in this environment. -#}

{% test not_after(model, earlier, later) %}
    {#- Rows where `earlier` is after `later` (both present). -#}
    select * from {{ model }}
    where {{ earlier }} is not null and {{ later }} is not null and {{ earlier }} > {{ later }}
{% endtest %}

{% test at_least_one_not_null(model, columns) %}
    select * from {{ model }}
    where {% for c in columns %}{{ c }} is null{{ " and " if not loop.last }}{% endfor %}
{% endtest %}

{% test unique_combination(model, columns) %}
    select {{ columns | join(', ') }}, count(*) as occurrences
    from {{ model }}
    group by {{ columns | join(', ') }}
    having count(*) > 1
{% endtest %}

{% test mainland_mobile(model, column_name) %}
    select {{ column_name }} from {{ model }}
    where {{ column_name }} is not null
      and not {{ privdom_regexp_full_match(column_name, '1[3-9][0-9]{9}') }}
{% endtest %}
