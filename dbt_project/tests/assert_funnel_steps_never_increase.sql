-- SPEC §4: the funnel is ordered — each step counts customers among those who reached the previous one, and
-- referred is counted among all acquired — so no step can exceed the one before it. And the `all` row of a
-- cohort month is the sum of its channel rows. Returns the rows that break either rule.
with funnel as (
    select * from {{ ref('fct_aarrr_funnel') }}
),

channel_totals as (
    select cohort_month, sum(acquired) as acquired, sum(activated) as activated, sum(retained) as retained,
        sum(repurchased) as repurchased, sum(referred) as referred
    from funnel
    where acquisition_channel <> 'all'
    group by cohort_month
)

select f.cohort_month, f.acquisition_channel, 'a step exceeds the step before it' as problem
from funnel as f
where f.activated > f.acquired
   or f.retained > f.activated
   or f.repurchased > f.retained
   or f.referred > f.acquired
   or f.acquired <= 0
union all
select f.cohort_month, f.acquisition_channel, 'the all row is not the sum of the channel rows'
from funnel as f
inner join channel_totals as t
    on t.cohort_month = f.cohort_month
where f.acquisition_channel = 'all'
  and (f.acquired <> t.acquired or f.activated <> t.activated or f.retained <> t.retained
       or f.repurchased <> t.repurchased or f.referred <> t.referred)
