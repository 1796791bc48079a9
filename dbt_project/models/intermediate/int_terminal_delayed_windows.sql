-- Generated from ml/features/spec.py (spec 24727b953fa9) by `fraud features render`. Do not edit.
-- Per transaction, its terminal's transactions and known frauds in windows that end 7 days before it
-- (the label delay): [t - 7 days - window, t - 7 days].
with

transactions as (
    select
        transaction_id,
        tx_datetime,
        terminal_id
    from {{ ref('stg_transactions') }}
),

known_frauds as (
    select
        t.terminal_id,
        t.tx_datetime,
        l.label_time
    from {{ ref('stg_labels') }} as l
    inner join {{ ref('stg_transactions') }} as t using (transaction_id)
    where l.tx_fraud = 1
),

-- Frauds are rare, so a range join on them is cheap; label_time <= t is the point-in-time rule.
fraud_counts as (
    select
        t.transaction_id,
        count(*) filter (where k.tx_datetime >= t.tx_datetime - interval 8 days) as fraud_count_1d,
        count(*) filter (where k.tx_datetime >= t.tx_datetime - interval 14 days) as fraud_count_7d,
        count(*) filter (where k.tx_datetime >= t.tx_datetime - interval 37 days) as fraud_count_30d
    from transactions as t
    inner join known_frauds as k
        on k.terminal_id = t.terminal_id
        and k.label_time <= t.tx_datetime
        and k.tx_datetime >= t.tx_datetime - interval 37 days
        and k.tx_datetime <= t.tx_datetime - interval 7 days
    group by t.transaction_id
),

tx_counts as (
    select
        transaction_id,
        count(*) over delayed_1d as tx_count_1d,
        count(*) over delayed_7d as tx_count_7d,
        count(*) over delayed_30d as tx_count_30d
    from transactions
    window
        by_time as (partition by terminal_id order by tx_datetime),
        delayed_1d as (by_time range between interval 8 days preceding and interval 7 days preceding),
        delayed_7d as (by_time range between interval 14 days preceding and interval 7 days preceding),
        delayed_30d as (by_time range between interval 37 days preceding and interval 7 days preceding)
)

select
    transaction_id,
    tx_count_1d as terminal_nb_tx_1d,
    case
        when tx_count_1d > 0 then coalesce(fraud_count_1d, 0) / tx_count_1d
        else 0
    end as terminal_risk_1d,
    tx_count_7d as terminal_nb_tx_7d,
    case
        when tx_count_7d > 0 then coalesce(fraud_count_7d, 0) / tx_count_7d
        else 0
    end as terminal_risk_7d,
    tx_count_30d as terminal_nb_tx_30d,
    case
        when tx_count_30d > 0 then coalesce(fraud_count_30d, 0) / tx_count_30d
        else 0
    end as terminal_risk_30d
from tx_counts
left join fraud_counts using (transaction_id)
