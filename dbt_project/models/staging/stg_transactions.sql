-- Typed transactions, the contract's columns only.
select
    cast(transaction_id as varchar) as transaction_id,
    cast(tx_datetime as timestamp) as tx_datetime,
    cast(customer_id as varchar) as customer_id,
    cast(terminal_id as varchar) as terminal_id,
    cast(tx_amount as double) as tx_amount
from {{ source('raw', 'transactions') }}
