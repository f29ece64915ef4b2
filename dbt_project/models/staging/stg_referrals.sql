-- The current state of each referral: its latest version (SPEC §2).
select
    referral_id, updated_at, invited_at, mechanism, status,
    referrer_member_id, referrer_unionid, referrer_phone,
    referee_openid, referee_unionid, referee_phone, referee_member_id,
    order_id, commission_amount,
    file_id, batch_date, row_number_in_file, loaded_at
from {{ ref('stg_referrals__versions') }}
where version_rank = 1
