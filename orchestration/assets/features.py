"""Features stage: the dbt project (staging -> intermediate -> marts) rendered from the feature spec.
dbt tests become Dagster asset checks on these assets (dagster-dbt's default).

After a successful build the feature mart is exported as a per-day Parquet snapshot (``ml.data.warehouse``):
batch readers scan it instead of opening the warehouse, so they never block a build nor die on its lock.
"""

import json
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets
from dagster_duckdb import DuckDBResource

from orchestration.assets import FEATURES_TABLE_KEY
from orchestration.resources import DBT_PROJECT


class FeatureTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "features"


@dbt_assets(manifest=DBT_PROJECT.manifest_path, dagster_dbt_translator=FeatureTranslator())
def feature_models(context: dg.AssetExecutionContext, dbt: DbtCliResource,
                   duckdb: DuckDBResource) -> Iterator[Any]:
    from ml.data.warehouse import export_features

    # Full rebuild: window features need history, and the 183-day build takes seconds. The warehouse is the
    # duckdb resource's (dbt's profile reads the `warehouse` var), so both always write the same file.
    yield from dbt.cli(["build", "--vars", json.dumps({"warehouse": duckdb.database})], context=context).stream()
    # Reached only when the build (models and tests) succeeded: a failed build keeps the last snapshot.
    if FEATURES_TABLE_KEY in context.selected_asset_keys:
        with duckdb.get_connection() as con:
            out = export_features(con, Path(duckdb.database))
        context.log.info(f"Feature snapshot for readers: {out}")
