{{ config(severity='warn') }}
-- Converted referrals whose order has not arrived in the orders data yet (a referral feed often runs ahead of the
-- order feed). Counted as a warning: the referral counts as a conversion, its revenue follows when the order lands.
select referral_id, order_id, first_converted_at
from {{ ref('fct_referrals') }}
where is_converted_order_missing
