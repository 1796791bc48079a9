"""The one feature spec and its renderers (SQL for dbt, Python for the online path)."""

from ml.features.spec import FEATURE_NAMES, FEATURES, SPEC_VERSION, Feature

__all__ = ["FEATURES", "FEATURE_NAMES", "SPEC_VERSION", "Feature"]
