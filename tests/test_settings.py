"""The settings object: one home for every FRAUD_* variable, its documentation kept in step with it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from ml.settings import DOC_PATH, PROJECT_ROOT, Settings, env_name, get_settings, markdown

PRODUCT = ("ml", "bento", "streaming", "orchestration", "benchmarks")
NOT_SETTINGS = {"FRAUD_ENTITIES"}  # a constant of ml.features.per_transaction, not a variable


def _product_sources() -> list[Path]:
    return [p for d in PRODUCT for p in sorted((PROJECT_ROOT / d).rglob("*.py"))]


def test_configuration_doc_is_up_to_date() -> None:
    assert DOC_PATH.read_text() == markdown(), "docs/configuration.md is stale: run `python -m ml.settings --write`"


def test_every_variable_named_in_the_code_is_a_setting() -> None:
    known = {env_name(n) for n in Settings.model_fields}
    unknown = {}
    for path in _product_sources():
        for name in re.findall(r"\bFRAUD_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            if name not in known | NOT_SETTINGS:
                unknown.setdefault(name, str(path.relative_to(PROJECT_ROOT)))
    assert not unknown, f"FRAUD_* names that no setting defines: {unknown}"


def test_only_the_settings_read_fraud_variables() -> None:
    read = re.compile(r"(environ\[|getenv\(|\.get\()\s*f?[\"']FRAUD_")
    readers = [str(p.relative_to(PROJECT_ROOT)) for p in _product_sources()
               if p.name != "settings.py" and read.search(p.read_text())]
    assert not readers


def test_settings_follow_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("FRAUD_WAREHOUSE", raising=False)  # export_tool_env sets it for dbt
    monkeypatch.setenv("FRAUD_ONLINE_STORE", "redis")
    monkeypatch.setenv("FRAUD_THRESHOLD", "0.3")
    monkeypatch.setenv("FRAUD_EXACT_SHAP", "1")
    monkeypatch.setenv("FRAUD_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("FRAUD_REDIS_PREFIX", "")  # empty counts as unset
    s = get_settings()
    assert (s.online_store, s.threshold, s.exact_shap, s.redis_prefix) == ("redis", 0.3, True, None)
    assert s.warehouse == tmp_path / "warehouse.duckdb"
    assert s.river_checkpoint_dir == tmp_path / "streaming" / "river"
    assert s.drift_events_path == tmp_path / "streaming" / "drift_events.jsonl"
    monkeypatch.setenv("FRAUD_WAREHOUSE", str(tmp_path / "elsewhere.duckdb"))
    monkeypatch.setenv("FRAUD_ONLINE_STORE", "memory")
    s = get_settings()
    assert s.online_store == "memory" and s.warehouse == tmp_path / "elsewhere.duckdb"
    # A copy with other values keeps the paths derived from its own data directory.
    assert s.model_copy(update={"data_dir": tmp_path / "x"}).reports_dir == tmp_path / "x" / "reports"


def test_a_malformed_value_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FRAUD_MAX_BODY_BYTES", "lots")
    with pytest.raises(ValueError, match="max_body_bytes"):
        get_settings()


def test_secrets_never_print(monkeypatch: pytest.MonkeyPatch) -> None:
    secrets = {"FRAUD_API_TOKEN": "api-token-0123456789", "FRAUD_ADMIN_TOKEN": "admin-token-0123456789",
               "FRAUD_SIGNING_KEY": "k" * 40, "FRAUD_KAFKA_SASL_PASSWORD": "kafka-s3cret",
               "FRAUD_REDIS_URL": "redis://user:redis-s3cret@host:6379/0"}
    for k, v in secrets.items():
        monkeypatch.setenv(k, v)
    s = get_settings()
    shown = repr(s) + str(s) + s.model_dump_json()
    assert not [v for v in secrets.values() if v in shown]
    assert s.api_token.get_secret_value() == secrets["FRAUD_API_TOKEN"]


def test_every_drift_threshold_can_be_overridden(monkeypatch: pytest.MonkeyPatch) -> None:
    from ml.monitoring.thresholds import DriftThresholds

    assert {f"drift_{f.name}" for f in dataclasses.fields(DriftThresholds)} <= set(Settings.model_fields)
    monkeypatch.setenv("FRAUD_DRIFT_FEATURES", "tx_amount, customer_nb_tx_1d")
    monkeypatch.setenv("FRAUD_DRIFT_MIN_ROWS", "50")
    t = DriftThresholds.from_env()
    assert t.features == ("tx_amount", "customer_nb_tx_1d") and t.min_rows == 50
