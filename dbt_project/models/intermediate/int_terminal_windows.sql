-- Generated from ml/features/spec.py (spec 24727b953fa9) by `fraud features render`. Do not edit.
-- Per transaction, its terminal's transactions in trailing windows [t - window, t].
with

transactions as (
    select
        transaction_id,
        tx_datetime,
        terminal_id,
        tx_amount
    from {{ ref('stg_transactions') }}
),

-- Transactions of one entity at the same instant are ordered by transaction_id: each sees the earlier
-- ones only, as a stream would. A range frame holds them all, so the later ones are subtracted.
same_instant_peers as (
    select
        *,
        coalesce(count(*) over later_peers, 0) as later_peer_count,
        coalesce(sum(tx_amount) over later_peers, 0) as later_peer_amount
    from transactions
    window
        later_peers as (
            partition by terminal_id, tx_datetime order by transaction_id
            rows between 1 following and unbounded following
        )
),

windowed as (
    select
        *,
        count(*) over last_1h - later_peer_count as tx_count_1h
    from same_instant_peers
    window
        by_time as (partition by terminal_id order by tx_datetime),
        last_1h as (by_time range between interval 1 hour preceding and current row)
)

select
    transaction_id,
    tx_count_1h as terminal_nb_tx_1h
from windowed
