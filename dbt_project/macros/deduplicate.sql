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

{#- One row per distinct content of the raw rows of `relation`: `contents` (a list of columns) all equal, NULLs
    included (GROUP BY compares NULLs as equal). It carries its first delivery's lineage, the raw row with the
    smallest (_file_id, _row_number): _file_id, _row_number, _batch_date, _loaded_at; and its latest delivery,
    the raw row with the largest (_batch_date, _file_id, _row_number), i.e. the later batch, then the later
    load, then the later row (docs/DECISIONS.md, "Version ties"): _last_batch_date, _last_file_id,
    _last_row_number. One aggregate over the rows (min and max of a struct), no window and no join. -#}
{% macro privdom_distinct_versions(relation, contents) -%}
    {%- set columns = contents | join(', ') -%}
    select
        {{ columns }},
        first_delivery.file_id as _file_id,
        first_delivery.row_in_file as _row_number,
        first_delivery.batch_date as _batch_date,
        first_delivery.loaded_at as _loaded_at,
        last_delivery.batch_date as _last_batch_date,
        last_delivery.file_id as _last_file_id,
        last_delivery.row_in_file as _last_row_number
    from (
        select
            {{ columns }},
            min({{ privdom_struct([('file_id', '_file_id'), ('row_in_file', '_row_number'),
                                   ('batch_date', '_batch_date'), ('loaded_at', '_loaded_at')]) }}) as first_delivery,
            max({{ privdom_struct([('batch_date', '_batch_date'), ('file_id', '_file_id'),
                                   ('row_in_file', '_row_number')]) }}) as last_delivery
        from {{ relation }}
        group by {{ columns }}
    ) as delivered
{%- endmacro %}
