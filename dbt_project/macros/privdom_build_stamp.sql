{#- The build stamp of the rows an incremental model of dbt_models writes (`_built_at`): when the dbt command
    started (dbt's run_started_at, taken by every dbt command, so inside the Dagster step's hold on the
    warehouse), as a wall-clock UTC time (DuckDB's TIMESTAMP, Spark's TIMESTAMP_NTZ), and never at or before
    the stamp the data tests have covered (raw.dbt_incremental_state.tested_built_at): a clock set back, or a
    data directory moved to a machine whose clock is behind, must not hide new rows from the tests, which look
    at the rows stamped after it (macros/data_tests/privdom_rows_to_test.sql). In macros/, so in the
    incremental fingerprint: the stamp is a column of those models. -#}
{% macro privdom_build_stamp() -%}
    {{ return(adapter.dispatch('privdom_build_stamp', 'privdom')()) }}
{%- endmacro %}

{% macro default__privdom_build_stamp() -%}
    {%- set started = "cast('" ~ run_started_at.strftime("%Y-%m-%d %H:%M:%S.%f") ~ "' as timestamp)" -%}
    {%- set covered = privdom_tested_built_at() -%}
    {%- if covered is none -%}
        {{ started }}
    {%- else -%}
        greatest({{ started }}, cast('{{ covered }}' as timestamp) + interval 1 microsecond)
    {%- endif -%}
{%- endmacro %}

{#- Spark: its tests look at every row (spark__privdom_tested_built_at) -#}
{% macro spark__privdom_build_stamp() -%}
    cast('{{ run_started_at.strftime("%Y-%m-%d %H:%M:%S.%f") }}' as timestamp_ntz)
{%- endmacro %}
