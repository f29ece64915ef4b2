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
    file_id of the file that delivered it; a file whose rows were all dropped (duplicates) is simply read
    again next time and dropped again, so the newest file_id in `this` is a safe high-water mark. -#}
{% macro privdom_loaded_after_last_build(file_id_column='_file_id') -%}
    {{ file_id_column }} > (select coalesce(max(file_id), 0) from {{ this }})
{%- endmacro %}

{#- Data tests on the rows a build added (issue 7: one new day re-tested 10M rows of history for ~4 s).

    privdom records, after every successful build of its staging step (no model failed, no error-severity
    test failed), the newest ledger file_id that build took in (raw.dbt_incremental_state,
    tested_through_file_id; orchestration/defs/dbt.py). Every row of an older file has then passed the tests.
    A test given a `new_rows_key` looks only at the rows whose key occurs among the rows of newer files: for
    a uniqueness test that is exact (a key's every row is in scope), for a row-by-row test it is a superset of
    the new rows. A failed build records nothing, so its rows stay in scope until a build passes.

    The whole model is tested (this returns 0) when nothing is recorded (a first build, a warehouse of an
    older privdom, dbt run by hand on a new warehouse), on --full-refresh (every row was rebuilt), with the
    var privdom_test_all_rows (`dbt test --vars '{privdom_test_all_rows: true}'`), and on engines without
    privdom's bookkeeping (Spark). -#}
{% macro privdom_tested_through_file_id() -%}
    {{ return(adapter.dispatch('privdom_tested_through_file_id', 'privdom')()) }}
{%- endmacro %}

{% macro default__privdom_tested_through_file_id() -%}
    {%- if not execute or flags.FULL_REFRESH or var('privdom_test_all_rows', false) -%}
        {{ return(0) }}
    {%- endif -%}
    {%- set state = adapter.get_relation(database=target.database, schema='raw', identifier='dbt_incremental_state') -%}
    {%- if state is none -%}
        {{ return(0) }}
    {%- endif -%}
    {%- if 'tested_through_file_id' not in (adapter.get_columns_in_relation(state) | map(attribute='name') | list) -%}
        {{ return(0) }}
    {%- endif -%}
    {%- set result = run_query(
        "select coalesce(max(tested_through_file_id), 0) from " ~ state ~ " where step = 'dbt_staging'") -%}
    {{ return(result.columns[0].values()[0] | int) }}
{%- endmacro %}

{% macro spark__privdom_tested_through_file_id() -%}
    {{ return(0) }}
{%- endmacro %}

{#- The rows of `model` a test looks at: all of them, or (see above) those whose `key` occurs among the rows
    of files newer than the last successful build's; with new_rows_only, just those rows (for a test that
    judges each row by itself). -#}
{% macro privdom_rows_to_test(model, key=none, new_rows_only=false, file_id_column='file_id') -%}
    {%- set through = privdom_tested_through_file_id() if (key or new_rows_only) else 0 -%}
    {%- if through == 0 -%}
        {{ model }}
    {%- elif new_rows_only -%}
        (select * from {{ model }} where {{ file_id_column }} > {{ through }}) as rows_to_test
    {%- else -%}
        (select * from {{ model }} where {{ key }} in (
            select {{ key }} from {{ model }} where {{ file_id_column }} > {{ through }}
        )) as rows_to_test
    {%- endif -%}
{%- endmacro %}
