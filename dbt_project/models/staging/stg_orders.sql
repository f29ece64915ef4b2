-- The current state of each order: its latest version (SPEC §2).
select
    order_id, updated_at, created_at, paid_at, status, channel,
    gross_amount, discount_amount, refund_amount, points_redeemed, referral_code,
    openid, unionid, wecom_external_userid, phone, member_id,
    file_id, batch_date, row_number_in_file, loaded_at
from {{ ref('stg_orders__versions') }}
where version_rank = 1
