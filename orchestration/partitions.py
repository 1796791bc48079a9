"""One partition per day of transactions; ingest, training, evaluation and drift all use the same days.

The range is the configured data's (``FRAUD_START_DATE`` .. ``FRAUD_END_DATE``, end exclusive).
"""

import dagster as dg

from ml.settings import get_settings

_settings = get_settings()
daily_partitions = dg.DailyPartitionsDefinition(start_date=_settings.start_date, end_date=_settings.end_date)
