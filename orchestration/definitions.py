"""Dagster code location: one Definitions per stage, merged (assets grouped by stage in the UI)."""

import dagster as dg

from orchestration import resources
from orchestration.assets import features, ingest, monitoring, serving, streaming, training

defs = dg.Definitions.merge(resources.resources_defs, ingest.defs, features.defs, training.defs, serving.defs,
                            monitoring.defs, streaming.defs)
