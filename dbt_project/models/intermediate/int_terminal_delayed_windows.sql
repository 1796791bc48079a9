-- Generated from ml/features/spec.py (spec 24727b953fa9) by `fraud features render`. Do not edit.
with transactions as (
    select transaction_id, tx_datetime, terminal_id
    from {{ ref('stg_transactions') }}
),

known_frauds as (
    select t.terminal_id, t.tx_datetime, l.label_time
    from {{ ref('stg_labels') }} as l
    inner join {{ ref('stg_transactions') }} as t using (transaction_id)
    where l.tx_fraud = 1
),

-- Frauds are rare, so a range join on them is cheap; label_time <= t is the point-in-time rule.
fraud_counts as (
    select
        t.transaction_id,
        count(*) filter (where k.tx_datetime >= t.tx_datetime - interval '691200 seconds') as n_fraud_terminal_risk_1d,
        count(*) filter (where k.tx_datetime >= t.tx_datetime - interval '1209600 seconds') as n_fraud_terminal_risk_7d,
        count(*) filter (where k.tx_datetime >= t.tx_datetime - interval '3196800 seconds') as n_fraud_terminal_risk_30d
    from transactions as t
    inner join known_frauds as k
        on k.terminal_id = t.terminal_id
        and k.label_time <= t.tx_datetime
        and k.tx_datetime >= t.tx_datetime - interval '3196800 seconds'
        and k.tx_datetime <= t.tx_datetime - interval '604800 seconds'
    group by t.transaction_id
),

counts as (
    select
        transaction_id,
        count(*) over (partition by terminal_id order by tx_datetime range between interval '691200 seconds' preceding and interval '604800 seconds' preceding) as n_tx_86400s,
        count(*) over (partition by terminal_id order by tx_datetime range between interval '1209600 seconds' preceding and interval '604800 seconds' preceding) as n_tx_604800s,
        count(*) over (partition by terminal_id order by tx_datetime range between interval '3196800 seconds' preceding and interval '604800 seconds' preceding) as n_tx_2592000s
    from transactions
)

select
    c.transaction_id,
    c.n_tx_86400s as terminal_nb_tx_1d,
    case when c.n_tx_86400s > 0
        then coalesce(fc.n_fraud_terminal_risk_1d, 0) / c.n_tx_86400s else 0 end as terminal_risk_1d,
    c.n_tx_604800s as terminal_nb_tx_7d,
    case when c.n_tx_604800s > 0
        then coalesce(fc.n_fraud_terminal_risk_7d, 0) / c.n_tx_604800s else 0 end as terminal_risk_7d,
    c.n_tx_2592000s as terminal_nb_tx_30d,
    case when c.n_tx_2592000s > 0
        then coalesce(fc.n_fraud_terminal_risk_30d, 0) / c.n_tx_2592000s else 0 end as terminal_risk_30d
from counts as c
left join fraud_counts as fc using (transaction_id)
