{{ config(severity='warn') }}
-- SPEC §4: with no baseline month the triangle's area index is NULL, and the run log says why. This warning
-- returns one row, with the reason, when no month qualifies (or the configured one has an axis at zero).
select
    {%- if var('triangle_baseline_month') %}
    'the configured triangle_baseline_month {{ var("triangle_baseline_month") }} is outside the data or has an axis at zero, so triangle_area_index is NULL' as reason
    {%- else %}
    'no month that starts on or after the data''s first timestamp has all three axes (property right, single customer value, recommendation rate) above zero, so triangle_area_index is NULL; set triangle_baseline_month to choose one' as reason
    {%- endif %}
from (select count(*) as months_with_index from {{ ref('fct_private_domain_triangle') }} where triangle_area_index is not null) as t
where t.months_with_index = 0
