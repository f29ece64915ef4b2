{#- The delivered content of a raw row: every contract column of its source (SPEC §2), in contract order, without
    the lineage columns. Two rows are the same version when these are all equal (NULLs equal), which is what
    staging's deduplication and the event_id_conflicts test compare: `_row_hash` (DuckDB's 64-bit hash) is a
    fingerprint, not collision-free (docs/DECISIONS.md). tests/test_dbt_parse.py checks the lists against the
    contract (orchestration/contract). -#}
{% macro privdom_raw_contents(source_name) -%}
    {%- set columns = {
        'channel_events': ['event_id', 'occurred_at', 'channel', 'event_type', 'openid', 'unionid',
                           'wecom_external_userid', 'phone', 'member_id', 'campaign', 'wecom_staff_userid'],
        'orders': ['order_id', 'updated_at', 'created_at', 'paid_at', 'status', 'channel', 'gross_amount',
                   'discount_amount', 'refund_amount', 'points_redeemed', 'referral_code', 'openid', 'unionid',
                   'wecom_external_userid', 'phone', 'member_id'],
        'referrals': ['referral_id', 'updated_at', 'invited_at', 'mechanism', 'status', 'referrer_member_id',
                      'referrer_unionid', 'referrer_phone', 'referee_openid', 'referee_unionid', 'referee_phone',
                      'referee_member_id', 'order_id', 'commission_amount'],
    } -%}
    {{ return(columns[source_name]) }}
{%- endmacro %}
