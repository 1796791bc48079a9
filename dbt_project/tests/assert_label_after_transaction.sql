-- A label cannot be known before its transaction happened.
select l.transaction_id
from {{ ref('stg_labels') }} as l
inner join {{ ref('stg_transactions') }} as t using (transaction_id)
where l.label_time < t.tx_datetime
