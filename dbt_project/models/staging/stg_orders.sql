-- The current state of each order: its latest version (SPEC §2).
-- Incremental (delete+insert by order_id): the orders with a version delivered by a file newer than the newest one
-- this model has taken in (last_file_id: a version's latest delivery, as an identical re-delivery can make
-- an old version current again) get their current state again.
{{ config(
    materialized=privdom_incremental_materialization(),
    incremental_strategy='delete+insert',
    unique_key='order_id',
    on_schema_change='fail'
) }}
select
    order_id, updated_at, created_at, paid_at, status, channel,
    gross_amount, discount_amount, refund_amount, points_redeemed, referral_code,
    openid, unionid, wecom_external_userid, phone, member_id,
    file_id, batch_date, row_number_in_file, loaded_at, last_file_id
from {{ ref('stg_orders__versions') }}
where version_rank = 1
{% if is_incremental() -%}
    -- only the orders whose versions were rebuilt since this model's last build: a version delivered (first or
    -- again, identical) by a file newer than any this model holds (last_file_id)
    and order_id in (
        select order_id from {{ ref('stg_orders__versions') }}
        where {{ privdom_loaded_after_last_build('last_file_id', 'last_file_id') }}
    )
{%- endif %}
