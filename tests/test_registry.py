"""Registry: the champion/challenger gate, its record, promotion and rollback (API and CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from tests._training_helpers import train_pair


@pytest.fixture(scope="module")
def pair(warehouse: Path) -> dict:
    return train_pair(warehouse)


def _scores(model, pair: dict) -> np.ndarray:
    from ml import registry
    from ml.training.train import predict

    return predict(registry.load_booster(model), pair["window"].frame.X, pair["names"])


def test_candidate_metadata_follows_the_contract(pair: dict) -> None:
    from ml import registry

    m = registry.get(pair["good"]["tag"])
    for key in registry.REQUIRED_METADATA:
        assert key in m.info.metadata
    assert m.info.labels["partition"] == "2018-05-10"
    assert registry.list_models() and any(r["tag"] == pair["good"]["tag"] for r in registry.list_models())


def test_worse_challenger_is_not_promoted_and_decision_recorded(pair: dict) -> None:
    from ml import registry

    good, bad = pair["good"], pair["bad"]
    tol = registry.DEFAULT_TOLERANCE
    assert bad["metrics"]["average_precision"] < good["metrics"]["average_precision"] - tol
    registry.promote(good["tag"], "baseline for the test")
    before = registry.champion()
    decision = registry.gate(bad["tag"], bad["metrics"], good["metrics"])
    assert not decision.promoted and "worse" in decision.reason
    after = registry.champion()
    assert str(after.tag) == str(before.tag) and after.info.metadata["source_tag"] == good["tag"]
    last = registry.last_decisions(1)[-1]
    assert last["challenger_tag"] == bad["tag"] and last["promoted"] is False
    assert last["champion_metrics"]["average_precision"] == good["metrics"]["average_precision"]
    row = next(r for r in registry.list_models() if r["tag"] == bad["tag"])  # what `fraud models list` shows
    assert row["gate"] == "rejected" and row["test_metrics"] == bad["metrics"] and not row["is_champion"]
    # A challenger as good within the tolerance is promoted (the rule alone: figures set by hand).
    within = {**good["metrics"], "average_precision": good["metrics"]["average_precision"] - 0.005}
    ok = registry.gate(bad["tag"], within, good["metrics"])
    assert ok.promoted and registry.champion().info.metadata["action"] == "promote"
    assert registry.champion().info.metadata["source_tag"] == bad["tag"]


def test_promotion_refuses_a_model_without_contract_metadata(pair: dict) -> None:
    import bentoml

    from ml import registry
    from ml.cli import main

    booster = registry.load_booster(pair["bad"]["tag"])
    tag = str(bentoml.xgboost.save_model(registry.MODEL_NAME, booster,
                                         metadata={"feature_names": list(pair["names"])}).tag)
    registry.promote(pair["good"]["tag"], "baseline")
    before = str(registry.champion().tag)
    with pytest.raises(ValueError, match="registry contract"):
        registry.promote(tag, "no training window, threshold, fingerprint")
    res = CliRunner().invoke(main, ["models", "promote", tag])
    assert res.exit_code != 0 and "lacks metadata" in res.output
    assert str(registry.champion().tag) == before


def test_first_model_is_promoted_without_champion() -> None:
    from ml.registry import decide

    assert decide({"average_precision": 0.1, "auc_roc": 0.5}, None)[0]


def test_rollback_restores_previous_champion(pair: dict) -> None:
    from ml import registry

    good, bad = pair["good"], pair["bad"]
    registry.promote(good["tag"], "good")
    registry.promote(bad["tag"], "forced bad one")
    assert registry.champion().info.metadata["source_tag"] == bad["tag"]
    registry.rollback("bad model in production")
    current = registry.champion()
    assert current.info.metadata["source_tag"] == good["tag"]
    assert current.info.metadata["action"] == "rollback"
    np.testing.assert_array_equal(_scores(current, pair), good["scores"])
    assert registry.last_decisions(1)[-1]["action"] == "rollback"


def test_models_cli_list_promote_rollback(pair: dict) -> None:
    from ml import registry
    from ml.cli import main

    runner = CliRunner()
    res = runner.invoke(main, ["models", "promote", pair["good"]["tag"]])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["models", "promote", pair["bad"]["tag"], "--reason", "cli test"])
    assert res.exit_code == 0 and registry.champion().info.metadata["source_tag"] == pair["bad"]["tag"]
    res = runner.invoke(main, ["models", "list"])
    assert res.exit_code == 0 and pair["good"]["tag"] in res.output and "fraud-champion:" in res.output
    res = runner.invoke(main, ["models", "rollback"])
    assert res.exit_code == 0, res.output
    assert registry.champion().info.metadata["source_tag"] == pair["good"]["tag"]
    assert runner.invoke(main, ["models", "promote", "fraud-xgb:doesnotexist"]).exit_code != 0
