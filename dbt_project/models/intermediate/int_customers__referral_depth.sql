{{ privdom_require_recursive_cte() }}
-- One row per customer reachable from a root of the referral acquisition forest: how many referral hops
-- separate them from a customer who was not acquired through a referral (SPEC §4 "generation"). Each customer
-- has at most one acquirer (acquisition_referrer_key), so walking down from the roots visits each customer once
-- and always ends. Roots: customers not acquired through a referral, or acquired through their own referral (a
-- self-referral is left out of fission). Customers on a loop of acquisitions (A acquired by B's referral, B by
-- A's), or below one, are never reached from a root and get no row: their referrals have no generation.
-- referral_root_key is the root of the customer's tree. The chain itself is not kept: as text ('>K1>K2>…>') it
-- grew with the square of a chain's depth (2.2 GB at 20,000 generations, and fct_referrals ran out of memory);
-- fct_referrals walks up from a referrer only for the few referrals whose referee is higher in the same tree.
with recursive customers as (
    select customer_key, acquisition_referrer_key
    from {{ ref('int_customers__keyed') }}
),

chains as (
    select
        customer_key,
        0 as referral_depth,
        customer_key as referral_root_key
    from customers
    where acquisition_referrer_key is null or acquisition_referrer_key = customer_key
    union all
    select
        child.customer_key,
        parent.referral_depth + 1,
        parent.referral_root_key
    from chains as parent
    inner join customers as child
        on child.acquisition_referrer_key = parent.customer_key
        and child.acquisition_referrer_key <> child.customer_key
)

select customer_key, referral_depth, referral_root_key
from chains
