-- RFM scores of customers with a paid-like order (SPEC §4). A score is 1 + floor(5 × p), at most 5, where p is
-- the share of buyers with a strictly worse value: R an earlier last paid order, F fewer paid-like orders,
-- M less net revenue. rank() − 1 counts the buyers with a strictly smaller value, so equal values share a
-- score. Segments by R and F; customers without a paid order: no scores, segment 'No Purchase'.
with purchases as (
    select customer_key, last_paid_at, paid_orders, net_revenue
    from {{ ref('int_customers__purchases') }}
),

buyers as (
    select * from purchases where paid_orders > 0
),

ranked as (
    select
        customer_key,
        rank() over (order by last_paid_at) - 1 as worse_recency,
        rank() over (order by paid_orders) - 1 as worse_frequency,
        rank() over (order by net_revenue) - 1 as worse_monetary,
        count(*) over () as buyers
    from buyers
),

scored as (
    select
        customer_key,
        cast(least(5, 1 + floor(5 * cast(worse_recency as double) / buyers)) as integer) as r_score,
        cast(least(5, 1 + floor(5 * cast(worse_frequency as double) / buyers)) as integer) as f_score,
        cast(least(5, 1 + floor(5 * cast(worse_monetary as double) / buyers)) as integer) as m_score
    from ranked
)

select
    p.customer_key,
    s.r_score,
    s.f_score,
    s.m_score,
    case
        when s.r_score is null then 'No Purchase'
        when s.r_score = 5 and s.f_score >= 4 then 'Champions'
        when s.r_score in (3, 4) and s.f_score >= 4 then 'Loyal'
        when s.r_score in (4, 5) and s.f_score in (2, 3) then 'Potential Loyalist'
        when s.r_score = 5 and s.f_score = 1 then 'New'
        when s.r_score = 4 and s.f_score = 1 then 'Promising'
        when s.r_score = 3 and s.f_score = 3 then 'Need Attention'
        when s.r_score = 3 and s.f_score in (1, 2) then 'About to Sleep'
        when s.r_score in (1, 2) and s.f_score in (3, 4) then 'At Risk'
        when s.r_score in (1, 2) and s.f_score = 5 then 'Cannot Lose Them'
        when s.r_score = 1 and s.f_score = 1 then 'Lost'
        when s.r_score in (1, 2) and s.f_score in (1, 2) then 'Hibernating'
    end as rfm_segment
from purchases as p
left join scored as s
    on s.customer_key = p.customer_key
