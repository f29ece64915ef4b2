{#- Generic tests written here because dbt packages (dbt_utils) cannot be fetched in this environment. -#}

{% test not_after(model, earlier, later) %}
    {#- Rows where `earlier` is after `later` (both present). -#}
    select * from {{ model }}
    where {{ earlier }} is not null and {{ later }} is not null and {{ earlier }} > {{ later }}
{% endtest %}

{% test at_least_one_not_null(model, columns, new_rows_only=false) %}
    {#- new_rows_only: see privdom_rows_to_test (macros/data_tests/privdom_rows_to_test.sql). -#}
    select * from {{ privdom_rows_to_test(model, new_rows_only=new_rows_only) }}
    where {% for c in columns %}{{ c }} is null{{ " and " if not loop.last }}{% endfor %}
{% endtest %}

{% test unique_combination(model, columns, new_rows_key=none) %}
    select {{ columns | join(', ') }}, count(*) as occurrences
    from {{ privdom_rows_to_test(model, new_rows_key) }}
    group by {{ columns | join(', ') }}
    having count(*) > 1
{% endtest %}

{% test unique_values(model, column_name, new_rows_key=none, built_at_column=none) %}
    {#- dbt's `unique`, that can look only at the keys of new rows (privdom_rows_to_test): with
        new_rows_key = column_name, exact for the whole model when its older rows passed before. New rows are
        those of newer files, or with built_at_column those written since the last build that passed. -#}
    select {{ column_name }} as unique_field, count(*) as n_records
    from {{ privdom_rows_to_test(model, new_rows_key, built_at_column=built_at_column) }}
    where {{ column_name }} is not null
    group by {{ column_name }}
    having count(*) > 1
{% endtest %}

{% test disjoint_spans(model, key, start, end) %}
    {#- Half-open spans [start, end) per key (end NULL: open): rows that end where or before they start, and rows
        whose next span of the same key starts before this one ends or where it ends (two such spans would be
        one). Counting by the spans that hold a month relies on it. -#}
    select * from (
        select
            {{ key }}, {{ start }}, {{ end }},
            lead({{ start }}) over (partition by {{ key }} order by {{ start }}) as next_start
        from {{ model }}
    ) as spans
    where ({{ end }} is not null and {{ end }} <= {{ start }})
       or (next_start is not null and ({{ end }} is null or next_start <= {{ end }}))
{% endtest %}

{% test mainland_mobile(model, column_name) %}
    select {{ column_name }} from {{ model }}
    where {{ column_name }} is not null
      and not {{ privdom_regexp_full_match(column_name, '1[3-9][0-9]{9}') }}
{% endtest %}
