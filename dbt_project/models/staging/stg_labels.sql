-- Labels with the time they became known; a feature at time t may use a label only if label_time <= t.
select
    cast(transaction_id as varchar) as transaction_id,
    cast(tx_fraud as integer) as tx_fraud,
    cast(label_time as timestamp) as label_time
from {{ source('raw', 'transactions') }}
where tx_fraud is not null
