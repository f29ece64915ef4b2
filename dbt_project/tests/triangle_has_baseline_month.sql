{{ config(severity='warn', meta={'dagster': {'ref': {'name': 'fct_private_domain_triangle'}}}) }}
-- SPEC §4: with no baseline month the triangle's area index is NULL, and the run log says why. This warning
-- returns one row when no month has an index, and its `reason` names the axis that is missing: privdom's dbt
-- step puts that text on the check and in the run log (orchestration/defs/dbt.py, _with_reason).
with months as (
    select
        t.period_month,
        m.month_start_at >= d.data_start_at as starts_within_data,
        t.property_right > 0 as p_above_zero,
        t.single_customer_value > 0 as v_above_zero,
        t.recommendation_rate > 0 as r_above_zero,
        t.triangle_area_index
    from {{ ref('fct_private_domain_triangle') }} as t
    inner join {{ ref('int_calendar__months') }} as m on t.period_month = m.period_month
    cross join {{ ref('int_data_end') }} as d
    where t.acquisition_channel = 'all'
),

counts as (
    select
        count(*) as months,
        count(triangle_area_index) as months_with_index,
        substr(cast(min(period_month) as string), 1, 7) as first_month,
        substr(cast(max(period_month) as string), 1, 7) as last_month,
        {%- if var('triangle_baseline_month') %}
        sum(case when substr(cast(period_month as string), 1, 7) = '{{ var("triangle_baseline_month") }}' then 1 else 0 end)
            as configured_months,
        {%- endif %}
        sum(case when starts_within_data then 1 else 0 end) as eligible_months,
        sum(case when starts_within_data and p_above_zero then 1 else 0 end) as p_months,
        sum(case when starts_within_data and v_above_zero then 1 else 0 end) as v_months,
        sum(case when starts_within_data and r_above_zero then 1 else 0 end) as r_months,
        -- the data's first month starts before its first timestamp (unless the data starts at its very first
        -- instant), so it is never the default baseline, but it can be configured
        max(case when not starts_within_data and p_above_zero and v_above_zero and r_above_zero then 1 else 0 end)
            as first_month_qualifies
    from months
)

select
    {%- if var('triangle_baseline_month') %}
    concat(
        'the configured triangle_baseline_month {{ var("triangle_baseline_month") }} ',
        case
            when months = 0 then 'has no data to compare with (no data loaded)'
            when configured_months = 0
                then concat('is outside the data (its months run from ', first_month, ' to ', last_month, ')')
            else 'has an axis at zero (property_right, single_customer_value or recommendation_rate)'
        end,
        ', so triangle_area_index is NULL'
    ) as reason
    {%- else %}
    concat(
        case
            when months = 0 then 'the triangle has no months yet (no data loaded)'
            when eligible_months = 0
                then concat('no month starts on or after the data''s first timestamp (its only month is ', first_month, ')')
            else concat(
                'no month that starts on or after the data''s first timestamp has all three axes above zero (of its ',
                cast(eligible_months as string), ' such months, property_right is above zero in ', cast(p_months as string),
                ', single_customer_value in ', cast(v_months as string), ', recommendation_rate in ', cast(r_months as string),
                case when r_months = 0 then ': no new customer came through a referral in those months' else '' end, ')'
            )
        end,
        ', so triangle_area_index is NULL',
        case
            when first_month_qualifies = 1
                then concat('; the data''s first month, ', first_month, ', has all three: set triangle_baseline_month to ',
                            first_month, ' to use it as the baseline')
            else ''
        end
    ) as reason
    {%- endif %}
from counts
where months_with_index = 0
