"""Features stage: the dbt project (staging -> intermediate -> marts) rendered from the feature spec.
dbt tests become Dagster asset checks on these assets (dagster-dbt's default).
"""


from collections.abc import Iterator, Mapping
from typing import Any

import dagster as dg
from dagster_dbt import DagsterDbtTranslator, DbtCliResource, dbt_assets

from orchestration.resources import DBT_PROJECT


class FeatureTranslator(DagsterDbtTranslator):
    def get_group_name(self, dbt_resource_props: Mapping[str, Any]) -> str | None:
        return "features"


@dbt_assets(manifest=DBT_PROJECT.manifest_path, dagster_dbt_translator=FeatureTranslator())
def feature_models(context: dg.AssetExecutionContext, dbt: DbtCliResource) -> Iterator[Any]:
    # Full rebuild: window features need history, and the 183-day build takes seconds.
    yield from dbt.cli(["build"], context=context).stream()


FEATURES_TABLE_KEY = dg.AssetKey(["fct_transaction_features"])

defs = dg.Definitions(assets=[feature_models])
