{#- Drop a model's predecessor, left in warehouses built by an older privdom (dbt never drops a relation whose
    model was removed): a hook of the model that replaced it, `post_hook="{{ privdom_drop_replaced('old_name') }}"`,
    in the same schema. Renders no SQL; a no-op once it is gone.

    In its own folder: incremental_fingerprint (orchestration/dbt.py) digests macros/*.sql, what the incremental
    models' rows depend on; this changes no row. -#}
{% macro privdom_drop_replaced(identifier) -%}
    {%- if execute -%}
        {%- set old = adapter.get_relation(database=this.database, schema=this.schema, identifier=identifier) -%}
        {%- if old is not none -%}
            {%- do log("dropping " ~ old ~ ", replaced by " ~ this, info=true) -%}
            {%- do adapter.drop_relation(old) -%}
        {%- endif -%}
    {%- endif -%}
{%- endmacro %}
