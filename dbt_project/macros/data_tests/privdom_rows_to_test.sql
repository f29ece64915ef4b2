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
    {%- set mark = privdom_recorded_test_mark('tested_through_file_id', 'dbt_staging') -%}
    {{ return(0 if mark is none else mark | int) }}
{%- endmacro %}

{#- What the step's last successful build recorded its tests had covered (raw.dbt_incremental_state), as text, or
    none when every row must be tested: nothing recorded (no table, no column, no value: a first build, a
    warehouse of an older privdom), --full-refresh, the var privdom_test_all_rows. -#}
{% macro privdom_recorded_test_mark(column, step) -%}
    {%- if not execute or flags.FULL_REFRESH or var('privdom_test_all_rows', false) -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set state = adapter.get_relation(database=target.database, schema='raw', identifier='dbt_incremental_state') -%}
    {%- if state is none or column not in (adapter.get_columns_in_relation(state) | map(attribute='name') | list) -%}
        {{ return(none) }}
    {%- endif -%}
    {%- set result = run_query(
        "select cast(max(" ~ column ~ ") as varchar) from " ~ state ~ " where step = '" ~ step ~ "'") -%}
    {{ return(result.columns[0].values()[0]) }}
{%- endmacro %}

{% macro spark__privdom_tested_through_file_id() -%}
    {{ return(0) }}
{%- endmacro %}

{#- Models of the dbt_models step that dbt builds incrementally also rewrite old rows (the events of components
    the identity graph changed), which no file_id tells apart. Such a model stamps each row it writes with
    privdom_build_stamp() (macros/privdom_build_stamp.sql: when the dbt command started, inside the step's
    hold on the warehouse, and always after the stamp recorded below), and privdom records, after every
    successful whole build of dbt_models, the newest stamp of int_channel_events__customers
    (raw.dbt_incremental_state.tested_built_at; orchestration/defs/dbt.py): every row stamped up to it has
    passed a build's tests (that build tested the rows stamped after the stamp recorded before it, and so on
    back to a build that tested all rows). A test given built_at_column looks at the rows whose key occurs
    among the rows stamped after it: the rows of this build and of builds that failed since (or all rows:
    nothing recorded, --full-refresh, the var privdom_test_all_rows, Spark). -#}
{% macro privdom_tested_built_at() -%}
    {{ return(adapter.dispatch('privdom_tested_built_at', 'privdom')()) }}
{%- endmacro %}

{% macro default__privdom_tested_built_at() -%}
    {{ return(privdom_recorded_test_mark('tested_built_at', 'dbt_models')) }}
{%- endmacro %}

{% macro spark__privdom_tested_built_at() -%}
    {{ return(none) }}
{%- endmacro %}

{#- The rows of `model` a test looks at: all of them, or (see above) those whose `key` occurs among the rows
    of files newer than the last successful build's (with built_at_column: among the rows written since the
    last successful build of dbt_models); with new_rows_only, just those rows (for a test that judges each row
    by itself). -#}
{% macro privdom_rows_to_test(model, key=none, new_rows_only=false, file_id_column='file_id', built_at_column=none) -%}
    {%- set since = privdom_tested_built_at() if (built_at_column and key) else none -%}
    {%- set through = privdom_tested_through_file_id() if ((key or new_rows_only) and not built_at_column) else 0 -%}
    {%- if since is not none -%}
        (select * from {{ model }} where {{ key }} in (
            select {{ key }} from {{ model }} where {{ built_at_column }} > cast('{{ since }}' as timestamp)
        )) as rows_to_test
    {%- elif through == 0 -%}
        {{ model }}
    {%- elif new_rows_only -%}
        (select * from {{ model }} where {{ file_id_column }} > {{ through }}) as rows_to_test
    {%- else -%}
        (select * from {{ model }} where {{ key }} in (
            select {{ key }} from {{ model }} where {{ file_id_column }} > {{ through }}
        )) as rows_to_test
    {%- endif -%}
{%- endmacro %}
