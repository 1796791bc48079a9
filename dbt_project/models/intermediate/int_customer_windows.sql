-- Generated from ml/features/spec.py (spec 24727b953fa9) by `fraud features render`. Do not edit.
with transactions as (
    select transaction_id, tx_datetime, customer_id, tx_amount
    from {{ ref('stg_transactions') }}
),

-- Same-instant transactions of one entity are ordered by transaction_id: a transaction sees
-- the earlier ones only, as a stream would.
later_peers as (
    select
        *,
        coalesce(count(*) over same_instant, 0) as later_n,
        coalesce(sum(tx_amount) over same_instant, 0) as later_amount,
        coalesce(max(tx_amount) over earlier_same_instant, 0) as earlier_peer_max
    from transactions
    window same_instant as (
        partition by customer_id, tx_datetime order by transaction_id
        rows between 1 following and unbounded following
    ),
    earlier_same_instant as (
        partition by customer_id, tx_datetime order by transaction_id
        rows between unbounded preceding and 1 preceding
    )
)

select
    transaction_id,
    (count(*) over (partition by customer_id order by tx_datetime range between interval '86400 seconds' preceding and current row) - later_n) as customer_nb_tx_1d,
    (sum(tx_amount) over (partition by customer_id order by tx_datetime range between interval '86400 seconds' preceding and current row) - later_amount) / (count(*) over (partition by customer_id order by tx_datetime range between interval '86400 seconds' preceding and current row) - later_n) as customer_avg_amount_1d,
    (count(*) over (partition by customer_id order by tx_datetime range between interval '604800 seconds' preceding and current row) - later_n) as customer_nb_tx_7d,
    (sum(tx_amount) over (partition by customer_id order by tx_datetime range between interval '604800 seconds' preceding and current row) - later_amount) / (count(*) over (partition by customer_id order by tx_datetime range between interval '604800 seconds' preceding and current row) - later_n) as customer_avg_amount_7d,
    (count(*) over (partition by customer_id order by tx_datetime range between interval '2592000 seconds' preceding and current row) - later_n) as customer_nb_tx_30d,
    (sum(tx_amount) over (partition by customer_id order by tx_datetime range between interval '2592000 seconds' preceding and current row) - later_amount) / (count(*) over (partition by customer_id order by tx_datetime range between interval '2592000 seconds' preceding and current row) - later_n) as customer_avg_amount_30d,
    (count(*) over (partition by customer_id order by tx_datetime range between interval '3600 seconds' preceding and current row) - later_n) as customer_nb_tx_1h,
    greatest(coalesce(max(tx_amount) over (partition by customer_id order by tx_datetime range between interval '2592000 seconds' preceding and interval '1 microseconds' preceding), 0), earlier_peer_max) as customer_max_amount_30d
from later_peers
