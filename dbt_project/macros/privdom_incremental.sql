{#- Incremental staging (SPEC §6: incremental processing keys on when a row was loaded, not when it happened).

    Raw rows carry _file_id, the ingestion ledger's number of the file that delivered them: it grows with
    every file loaded, so "rows not yet processed" = rows of a file newer than the newest file a model has
    already taken in. Rows of any lateness (an event of last year in today's file) are therefore picked up,
    and a model built by any sequence of incremental runs equals a full refresh (tests/test_incremental.py).

    privdom passes --full-refresh itself when what the staging models compute could have changed: a new
    placeholder list (a var) or new staging SQL (orchestration/dbt.py, incremental_fingerprint). -#}

{#- The materialization of an incremental staging model: incremental on DuckDB (delete+insert / append);
    a plain table elsewhere (dbt-spark's incremental strategies need Delta or Iceberg tables for merge; on a
    cluster with Delta, spark__ can return 'incremental' with incremental_strategy 'merge'). -#}
{% macro privdom_incremental_materialization() -%}
    {{ return(adapter.dispatch('privdom_incremental_materialization', 'privdom')()) }}
{%- endmacro %}

{% macro default__privdom_incremental_materialization() -%}
    {{ return('incremental') }}
{%- endmacro %}

{% macro spark__privdom_incremental_materialization() -%}
    {{ return('table') }}
{%- endmacro %}

{#- A predicate true for raw rows of files that `this` has not taken in yet. `this` records, per row, the
    file_id of the file that delivered it (`watermark_column`); a file whose rows were all dropped (duplicates)
    is simply read again next time and dropped again, so the newest file_id in `this` is a safe high-water
    mark. stg_orders and stg_referrals compare their parent's last_file_id (the latest delivery of a version:
    an identical re-delivery can make an old version current again) with their own. -#}
{% macro privdom_loaded_after_last_build(file_id_column='_file_id', watermark_column='file_id') -%}
    {{ file_id_column }} > (select coalesce(max({{ watermark_column }}), 0) from {{ this }})
{%- endmacro %}
