-- Generated from ml/features/spec.py (spec 24727b953fa9) by `fraud features render`. Do not edit.
with transactions as (
    select transaction_id, tx_datetime, terminal_id, tx_amount
    from {{ ref('stg_transactions') }}
),

-- Same-instant transactions of one entity are ordered by transaction_id: a transaction sees
-- the earlier ones only, as a stream would.
later_peers as (
    select
        *,
        coalesce(count(*) over same_instant, 0) as later_n,
        coalesce(sum(tx_amount) over same_instant, 0) as later_amount
    from transactions
    window same_instant as (
        partition by terminal_id, tx_datetime order by transaction_id
        rows between 1 following and unbounded following
    )
)

select
    transaction_id,
    (count(*) over (partition by terminal_id order by tx_datetime range between interval '3600 seconds' preceding and current row) - later_n) as terminal_nb_tx_1h
from later_peers
