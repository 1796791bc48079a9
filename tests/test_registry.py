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
    from ml.registry import gate_rule

    assert gate_rule({"average_precision": 0.1, "auc_roc": 0.5}, None)[0]


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


def _fresh_candidate(pair: dict, which: str) -> str:
    """A new fraud-xgb version (same booster and metadata as ``which``): no gate decision on it yet."""
    from ml import registry

    m = registry.get(pair[which]["tag"])
    return registry.save_candidate(registry.load_booster(m), dict(m.info.metadata))


def test_gate_rejected_model_needs_force_and_reason_and_every_change_is_audited(pair: dict) -> None:
    import getpass

    from ml import registry
    from ml.cli import main

    good, bad = pair["good"], pair["bad"]
    rejected = _fresh_candidate(pair, "bad")
    registry.promote(good["tag"], "baseline")
    assert registry.last_decisions(1)[-1]["actor"] == getpass.getuser()  # default: the OS user
    baseline = str(registry.champion().tag)
    assert not registry.gate(rejected, bad["metrics"], good["metrics"]).promoted
    assert registry.gate_rejection(rejected) is not None and registry.gate_rejection(good["tag"]) is None

    runner = CliRunner()
    res = runner.invoke(main, ["models", "promote", rejected])
    assert res.exit_code != 0 and "rejected by the gate" in res.output and "--force" in res.output
    res = runner.invoke(main, ["models", "promote", rejected, "--force"])
    assert res.exit_code != 0 and "--reason" in res.output
    with pytest.raises(registry.PromotionRefused, match="rejected by the gate"):
        registry.promote(rejected, "no force")
    assert str(registry.champion().tag) == baseline and registry.last_decisions(1)[-1]["action"] == "gate"

    res = runner.invoke(main, ["models", "promote", rejected, "--force", "--reason", "INC-42 hotfix",
                               "--by", "alice"])
    assert res.exit_code == 0, res.output
    entry = registry.last_decisions(1)[-1]
    assert entry["action"] == "promote" and entry["actor"] == "alice" and entry["reason"] == "INC-42 hotfix"
    assert entry["from"] == good["tag"] and entry["to"] == rejected and entry["forced"] is True
    assert entry["previous_champion_tag"] == baseline
    assert entry["champion_tag"] == str(registry.champion().tag)
    assert "worse" in entry["gate_rejection"] and entry["at"] and entry["os_user"]
    assert registry.champion().info.metadata["decision"]["actor"] == "alice"

    res = runner.invoke(main, ["models", "rollback", "--reason", "INC-42 over", "--by", "bob"])
    assert res.exit_code == 0, res.output
    entry = registry.last_decisions(1)[-1]
    assert (entry["action"], entry["actor"], entry["reason"]) == ("rollback", "bob", "INC-42 over")
    assert entry["from"] == rejected and entry["to"] == good["tag"]
    res = runner.invoke(main, ["models", "decisions", "-n", "2"])
    assert res.exit_code == 0 and '"actor": "alice"' in res.output and '"actor": "bob"' in res.output


def test_service_reload_is_audited(pair: dict) -> None:
    from bento.scorer import Scorer
    from ml import registry
    from ml.online.store import MemoryStore

    registry.promote(pair["good"]["tag"], "served first")
    scorer = Scorer(store=MemoryStore())
    assert scorer.load()
    before = scorer.champion.tag
    registry.promote(_fresh_candidate(pair, "good"), "a newer champion")
    assert scorer.reload_if_newer() == str(registry.champion().tag)
    entry = registry.last_decisions(1)[-1]
    assert entry["action"] == "reload" and entry["actor"] == "service:/reload"
    assert entry["from"] == before and entry["to"] == scorer.champion.tag
    assert scorer.reload_if_newer() is None  # nothing new: no entry
    assert registry.last_decisions(1)[-1] == entry
