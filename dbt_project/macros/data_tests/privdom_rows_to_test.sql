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
    privdom's bookkeeping (Spark).

    In their own folder: incremental_fingerprint (orchestration/dbt.py) digests macros/*.sql, what the
    incremental models' rows depend on; these macros change what tests look at, never a row. -#}
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
