-- Generated from ml/features/spec.py (spec 24727b953fa9) by `fraud features render`. Do not edit.
-- Per transaction, its customer's transactions in trailing windows [t - window, t].
with

transactions as (
    select
        transaction_id,
        tx_datetime,
        customer_id,
        tx_amount
    from {{ ref('stg_transactions') }}
),

-- Transactions of one entity at the same instant are ordered by transaction_id: each sees the earlier
-- ones only, as a stream would. A range frame holds them all, so the later ones are subtracted.
same_instant_peers as (
    select
        *,
        coalesce(count(*) over later_peers, 0) as later_peer_count,
        coalesce(sum(tx_amount) over later_peers, 0) as later_peer_amount,
        coalesce(max(tx_amount) over earlier_peers, 0) as earlier_peer_max_amount
    from transactions
    window
        later_peers as (
            partition by customer_id, tx_datetime order by transaction_id
            rows between 1 following and unbounded following
        ),
        earlier_peers as (
            partition by customer_id, tx_datetime order by transaction_id
            rows between unbounded preceding and 1 preceding
        )
),

windowed as (
    select
        *,
        count(*) over last_1d - later_peer_count as tx_count_1d,
        sum(tx_amount) over last_1d - later_peer_amount as amount_sum_1d,
        count(*) over last_7d - later_peer_count as tx_count_7d,
        sum(tx_amount) over last_7d - later_peer_amount as amount_sum_7d,
        count(*) over last_30d - later_peer_count as tx_count_30d,
        sum(tx_amount) over last_30d - later_peer_amount as amount_sum_30d,
        count(*) over last_1h - later_peer_count as tx_count_1h,
        coalesce(max(tx_amount) over earlier_30d, 0) as earlier_max_amount_30d
    from same_instant_peers
    window
        by_time as (partition by customer_id order by tx_datetime),
        last_1d as (by_time range between interval 1 day preceding and current row),
        last_7d as (by_time range between interval 7 days preceding and current row),
        last_30d as (by_time range between interval 30 days preceding and current row),
        last_1h as (by_time range between interval 1 hour preceding and current row),
        earlier_30d as (by_time range between interval 30 days preceding and interval 1 microsecond preceding)
)

select
    transaction_id,
    tx_count_1d as customer_nb_tx_1d,
    amount_sum_1d / tx_count_1d as customer_avg_amount_1d,
    tx_count_7d as customer_nb_tx_7d,
    amount_sum_7d / tx_count_7d as customer_avg_amount_7d,
    tx_count_30d as customer_nb_tx_30d,
    amount_sum_30d / tx_count_30d as customer_avg_amount_30d,
    tx_count_1h as customer_nb_tx_1h,
    greatest(earlier_max_amount_30d, earlier_peer_max_amount) as customer_max_amount_30d
from windowed
