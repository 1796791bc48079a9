"""Assets by stage: ingest -> features (dbt) -> training -> monitoring; streaming observes the stream worker."""

import dagster as dg

from ml.features.spec import FEATURES_MART

# The dbt feature mart, which training, monitoring and the parity checks read.
FEATURES_TABLE_KEY = dg.AssetKey(FEATURES_MART)
