{{ config(tags=['identity_input'], materialized='view') }}
-- A view: int_components__first_touch is its only reader, and at 1M customers writing its 11M rows to a
-- table and reading them back cost more than computing them inside that model (docs/performance.md).
-- Every touch that can acquire a customer (SPEC §4 "Acquired"), per identity component, with the fields
-- the first-touch rule orders by. touch_priority breaks equal times: a referral wins, then a channel event,
-- then an order; tie_breaker is the channel name (events, orders) or the referral_id.
{{ privdom_touches(source('identity', 'int_identity__records'), source('identity', 'int_identity__records')) }}
