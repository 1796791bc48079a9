"""Assets by stage: ingest -> features (dbt) -> training -> monitoring; streaming observes the stream worker."""

import dagster as dg

# The dbt feature mart (its model name), which training, monitoring and the parity checks read.
FEATURES_TABLE_KEY = dg.AssetKey("fct_transaction_features")
