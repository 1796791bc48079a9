-- Generated from ml/features/spec.py (spec 24727b953fa9) by `fraud features render`. Do not edit.
-- One row per transaction: identifiers, label, and every feature as of tx_datetime.
select
    s.transaction_id,
    s.tx_datetime,
    s.customer_id,
    s.terminal_id,
    l.tx_fraud,
    l.label_time,
    cast(s.tx_amount as double) as tx_amount,
    cast(case when isodow(s.tx_datetime) >= 6 then 1 else 0 end as double) as tx_during_weekend,
    cast(case when hour(s.tx_datetime) <= 6 then 1 else 0 end as double) as tx_during_night,
    cast(w0.customer_nb_tx_1d as double) as customer_nb_tx_1d,
    cast(w0.customer_avg_amount_1d as double) as customer_avg_amount_1d,
    cast(w0.customer_nb_tx_7d as double) as customer_nb_tx_7d,
    cast(w0.customer_avg_amount_7d as double) as customer_avg_amount_7d,
    cast(w0.customer_nb_tx_30d as double) as customer_nb_tx_30d,
    cast(w0.customer_avg_amount_30d as double) as customer_avg_amount_30d,
    cast(w1.terminal_nb_tx_1d as double) as terminal_nb_tx_1d,
    cast(w1.terminal_risk_1d as double) as terminal_risk_1d,
    cast(w1.terminal_nb_tx_7d as double) as terminal_nb_tx_7d,
    cast(w1.terminal_risk_7d as double) as terminal_risk_7d,
    cast(w1.terminal_nb_tx_30d as double) as terminal_nb_tx_30d,
    cast(w1.terminal_risk_30d as double) as terminal_risk_30d,
    cast(case when w0.customer_avg_amount_30d > 0 then s.tx_amount / w0.customer_avg_amount_30d else 0 end as double) as amount_to_customer_avg_30d,
    cast(w0.customer_nb_tx_1h as double) as customer_nb_tx_1h,
    cast(w2.terminal_nb_tx_1h as double) as terminal_nb_tx_1h,
    cast(w0.customer_max_amount_30d as double) as customer_max_amount_30d,
    cast(case when w0.customer_max_amount_30d > 0 then s.tx_amount / w0.customer_max_amount_30d else 0 end as double) as amount_to_customer_max_30d,
    cast(case when w0.customer_avg_amount_1d > 0 then s.tx_amount / w0.customer_avg_amount_1d else 0 end as double) as amount_to_customer_avg_1d,
    cast(case when w0.customer_avg_amount_7d > 0 then s.tx_amount / w0.customer_avg_amount_7d else 0 end as double) as amount_to_customer_avg_7d,
    cast(case when w0.customer_avg_amount_30d > 0 then w0.customer_avg_amount_7d / w0.customer_avg_amount_30d else 0 end as double) as customer_avg_7d_to_30d
from {{ ref('stg_transactions') }} as s
inner join {{ ref('int_customer_windows') }} as w0 on w0.transaction_id = s.transaction_id
inner join {{ ref('int_terminal_delayed_windows') }} as w1 on w1.transaction_id = s.transaction_id
inner join {{ ref('int_terminal_windows') }} as w2 on w2.transaction_id = s.transaction_id
left join {{ ref('stg_labels') }} as l on l.transaction_id = s.transaction_id
