-- Generated from ml/features/spec.py (spec 24727b953fa9) by `fraud features render`. Do not edit.
-- One row per transaction: identifiers, label, and every feature as of tx_datetime.
with

transactions as (
    select * from {{ ref('stg_transactions') }}
),

labels as (
    select * from {{ ref('stg_labels') }}
),

customer_windows as (
    select * from {{ ref('int_customer_windows') }}
),

terminal_delayed_windows as (
    select * from {{ ref('int_terminal_delayed_windows') }}
),

terminal_windows as (
    select * from {{ ref('int_terminal_windows') }}
),

joined as (
    select *
    from transactions
    inner join customer_windows using (transaction_id)
    inner join terminal_delayed_windows using (transaction_id)
    inner join terminal_windows using (transaction_id)
    left join labels using (transaction_id)
),

features as (
    select
        *,
        case when isodow(tx_datetime) >= 6 then 1 else 0 end as tx_during_weekend,
        case when hour(tx_datetime) <= 6 then 1 else 0 end as tx_during_night,
        case
            when customer_avg_amount_30d > 0 then tx_amount / customer_avg_amount_30d
            else 0
        end as amount_to_customer_avg_30d,
        case
            when customer_max_amount_30d > 0 then tx_amount / customer_max_amount_30d
            else 0
        end as amount_to_customer_max_30d,
        case
            when customer_avg_amount_1d > 0 then tx_amount / customer_avg_amount_1d
            else 0
        end as amount_to_customer_avg_1d,
        case
            when customer_avg_amount_7d > 0 then tx_amount / customer_avg_amount_7d
            else 0
        end as amount_to_customer_avg_7d,
        case
            when customer_avg_amount_30d > 0 then customer_avg_amount_7d / customer_avg_amount_30d
            else 0
        end as customer_avg_7d_to_30d
    from joined
)

select
    transaction_id,
    tx_datetime,
    customer_id,
    terminal_id,
    tx_fraud,
    label_time,
    cast(tx_amount as double) as tx_amount,
    cast(tx_during_weekend as double) as tx_during_weekend,
    cast(tx_during_night as double) as tx_during_night,
    cast(customer_nb_tx_1d as double) as customer_nb_tx_1d,
    cast(customer_avg_amount_1d as double) as customer_avg_amount_1d,
    cast(customer_nb_tx_7d as double) as customer_nb_tx_7d,
    cast(customer_avg_amount_7d as double) as customer_avg_amount_7d,
    cast(customer_nb_tx_30d as double) as customer_nb_tx_30d,
    cast(customer_avg_amount_30d as double) as customer_avg_amount_30d,
    cast(terminal_nb_tx_1d as double) as terminal_nb_tx_1d,
    cast(terminal_risk_1d as double) as terminal_risk_1d,
    cast(terminal_nb_tx_7d as double) as terminal_nb_tx_7d,
    cast(terminal_risk_7d as double) as terminal_risk_7d,
    cast(terminal_nb_tx_30d as double) as terminal_nb_tx_30d,
    cast(terminal_risk_30d as double) as terminal_risk_30d,
    cast(amount_to_customer_avg_30d as double) as amount_to_customer_avg_30d,
    cast(customer_nb_tx_1h as double) as customer_nb_tx_1h,
    cast(terminal_nb_tx_1h as double) as terminal_nb_tx_1h,
    cast(customer_max_amount_30d as double) as customer_max_amount_30d,
    cast(amount_to_customer_max_30d as double) as amount_to_customer_max_30d,
    cast(amount_to_customer_avg_1d as double) as amount_to_customer_avg_1d,
    cast(amount_to_customer_avg_7d as double) as amount_to_customer_avg_7d,
    cast(customer_avg_7d_to_30d as double) as customer_avg_7d_to_30d
from features
