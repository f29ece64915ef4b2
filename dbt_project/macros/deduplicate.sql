{#- Keep the first row per partition. Portable (no QUALIFY) so the same model runs on DuckDB and Spark.
    Returns a select of the relation's rows plus nothing else; `columns` lists what to select. -#}
{% macro first_row_per(relation, partition_by, order_by, columns='*') -%}
    select {{ columns }}
    from (
        select
            *,
            row_number() over (partition by {{ partition_by }} order by {{ order_by }}) as _first_row_rank
        from {{ relation }}
    ) as ranked
    where _first_row_rank = 1
{%- endmacro %}
