"""Model registry on the BentoML model store (``BENTOML_HOME``, by default ``<data_dir>/bentoml``).

Contract (other stages code against it):
- Every trained model is a version of ``fraud-xgb`` saved with ``bentoml.xgboost.save_model``; its metadata
  holds ``feature_names`` (the training column order), ``spec_version``, ``train_start``, ``train_end``,
  ``data_fingerprint``, ``metrics`` (dict) and ``threshold`` (decision threshold for the alert budget).
- The champion is a separate name, ``fraud-champion``: promoting saves the booster again as a new version of
  it (same metadata plus ``source_tag``, ``promoted_at``, ``decision``, ``action``), so
  ``bentoml.models.get("fraud-champion:latest")`` is always the current champion and ``bentoml build`` can
  ship it. The ordered ``fraud-champion`` versions are the history.
- Rollback saves the previous champion's booster again as the newest version (``action: rollback``). The
  champion *stack* is the history replayed: a promotion pushes, a rollback pops; so two rollbacks in a row
  go back two champions, not back and forth.
- Gate (``gate``): on the same evaluation window, a challenger is promoted iff
  AP >= champion AP - tolerance and AUC ROC >= champion AUC ROC - tolerance (``DEFAULT_TOLERANCE`` = 0.01
  absolute: the day-to-day noise of AP on a week of data is of that order, so a challenger that is as good
  within noise takes over and keeps the model fresh). Without a champion the challenger is promoted.
  Every decision is appended to ``<data_dir>/registry/decisions.jsonl``.
- Audit: every promotion, rollback and service reload is appended to the same log (``audit``) with its time,
  actor (``--by``, else the OS user), reason and both champions (``from``/``to``: the candidate tags).
  A model the gate rejected (its latest gate decision) is promoted by hand only with ``force`` and a reason.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ml.settings import export_tool_env

if TYPE_CHECKING:
    import bentoml
    import xgboost as xgb

MODEL_NAME = "fraud-xgb"
CHAMPION_NAME = "fraud-champion"  # the one name of the champion (ml.champion loads it)
DEFAULT_TOLERANCE = 0.01
REQUIRED_METADATA = ("feature_names", "spec_version", "train_start", "train_end", "data_fingerprint",
                     "metrics", "threshold")
GATE_METRICS = ("average_precision", "auc_roc")


class PromotionRefused(RuntimeError):
    """A manual promotion the registry will not make (a model the gate rejected, without force and reason)."""


def _bentoml():  # noqa: ANN202 - the module
    export_tool_env()  # BentoML reads BENTOML_HOME on first use of its store
    import bentoml

    return bentoml


def decisions_path() -> Path:
    return export_tool_env().data_dir / "registry" / "decisions.jsonl"


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _save(name: str, booster: xgb.Booster, metadata: dict[str, Any], labels: dict[str, str]) -> str:
    bentoml = _bentoml()
    model = bentoml.xgboost.save_model(
        name, booster, labels=labels, metadata=json.loads(json.dumps(metadata)),
        signatures={"predict": {"batchable": True}},
    )
    return str(model.tag)


def save_candidate(booster: xgb.Booster, metadata: dict[str, Any]) -> str:
    """Save a trained booster as a new ``fraud-xgb`` version; returns its tag."""
    missing = [k for k in REQUIRED_METADATA if k not in metadata]
    if missing:
        raise ValueError(f"model metadata lacks {missing} (registry contract)")
    labels = {"stage": "candidate", "spec_version": str(metadata["spec_version"]),
              "data_fingerprint": str(metadata["data_fingerprint"])}
    if "partition" in metadata:
        labels["partition"] = str(metadata["partition"])
    return _save(MODEL_NAME, booster, metadata, labels)


def get(tag: str) -> bentoml.Model:
    """A model by tag; a bare version is looked up under ``fraud-xgb``."""
    bentoml = _bentoml()
    return bentoml.models.get(tag if ":" in tag else f"{MODEL_NAME}:{tag}")


def load_booster(model: bentoml.Model | str) -> xgb.Booster:
    """The model's XGBoost booster (also from an ``XGBClassifier``, or a booster file another framework saved)."""
    import xgboost as xgb

    bentoml = _bentoml()
    if isinstance(model, str):
        model = get(model)
    if model.info.module.endswith("xgboost"):
        loaded = bentoml.xgboost.load_model(model)
        return loaded if isinstance(loaded, xgb.Booster) else loaded.get_booster()
    for pattern in ("*.ubj", "*.json", "*.model"):
        files = sorted(Path(model.path).glob(pattern))
        if files:
            return xgb.Booster(model_file=str(files[0]))
    raise ValueError(f"{model.tag}: no XGBoost booster found (module {model.info.module!r})")


def _versions(name: str) -> list[bentoml.Model]:
    bentoml = _bentoml()
    models = [m for m in bentoml.models.list() if m.tag.name == name]
    return sorted(models, key=lambda m: m.info.creation_time)


def champion_history() -> list[bentoml.Model]:
    """``fraud-champion`` versions, oldest first."""
    return _versions(CHAMPION_NAME)


def champion() -> bentoml.Model | None:
    bentoml = _bentoml()
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(f"{CHAMPION_NAME}:latest")
    except NotFound:
        return None


def _stack() -> list[bentoml.Model]:
    """Champion versions still 'in force': promotions push, rollbacks pop."""
    stack: list[bentoml.Model] = []
    for m in champion_history():
        if m.info.metadata.get("action") == "rollback":
            if stack:
                stack.pop()
        else:
            stack.append(m)
    return stack


def default_actor() -> str:
    """Who runs this process: the login name (``getpass.getuser``), else the uid."""
    try:
        return getpass.getuser()
    except (OSError, KeyError):  # no login name in the environment nor the password database (containers)
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else "unknown"


def _os_user() -> str | None:
    """The account of the process by uid (unlike ``getuser``, not taken from environment variables)."""
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError):
        return f"uid:{os.getuid()}" if hasattr(os, "getuid") else None


def audit(action: str, actor: str | None, reason: str, from_tag: str | None, to_tag: str | None,
          **extra: Any) -> dict[str, Any]:
    """Append an operator's or a service's action on the champion to the decision log; returns the entry.

    ``from_tag``/``to_tag``: the champion before and after (candidate tags, or what the caller serves)."""
    entry = {"at": _now(), "action": action, "actor": actor or default_actor(), "os_user": _os_user(),
             "reason": reason, "from": from_tag, "to": to_tag, **extra}
    _record(entry)
    return entry


def gate_rejection(tag: str) -> dict[str, Any] | None:
    """The gate's decision on candidate ``tag`` if its latest one rejected it, else None."""
    full = tag if ":" in tag else f"{MODEL_NAME}:{tag}"
    last = None
    for d in last_decisions(n=None):
        if d.get("action") == "gate" and str(d.get("challenger_tag", "")) in (tag, full):
            last = d
    return last if last is not None and not last.get("promoted") else None


def promote(tag: str, reason: str, decision: dict[str, Any] | None = None, *, actor: str | None = None,
            force: bool = False) -> str:
    """Make model ``tag`` (a ``fraud-xgb`` version) the champion by hand; returns the new ``fraud-champion``
    tag. A model the gate rejected needs ``force`` and a reason (``PromotionRefused`` otherwise). Audited."""
    source = _source(tag)
    rejected = gate_rejection(str(source.tag))
    if rejected is not None:
        why = f"{source.tag} was rejected by the gate at {rejected.get('at')}: {rejected.get('reason')}"
        if not force:
            raise PromotionRefused(f"{why}; promote it anyway with --force --reason \"why\"")
        if not reason.strip():
            raise PromotionRefused(f"{why}; a forced promotion needs a reason")
    actor = actor or default_actor()
    current = champion()
    overruled = {"forced_over_gate": rejected.get("reason")} if rejected else {}
    new_tag = _promote(source, reason, decision or {"reason": reason, "actor": actor, **overruled})
    audit("promote", actor, reason, current.info.metadata.get("source_tag") if current else None,
          str(source.tag), previous_champion_tag=str(current.tag) if current else None, champion_tag=new_tag,
          forced=rejected is not None, **({"gate_rejection": rejected.get("reason")} if rejected else {}))
    return new_tag


def _source(tag: str) -> bentoml.Model:
    source = get(tag)
    if source.tag.name == CHAMPION_NAME:  # re-promoting an old champion version: point at its candidate
        source = get(str(source.info.metadata["source_tag"]))
    return source


def _promote(source: bentoml.Model, reason: str, decision: dict[str, Any] | None = None) -> str:
    missing = [k for k in REQUIRED_METADATA if k not in source.info.metadata]
    if missing:  # the gate, the service and monitoring all read these: refuse rather than fail later
        raise ValueError(f"{source.tag} lacks metadata {missing} (registry contract): not promoted")
    meta = dict(source.info.metadata)
    meta.update(source_tag=str(source.tag), promoted_at=_now(), action="promote",
                decision=decision or {"reason": reason})
    meta["decision"].setdefault("reason", reason)
    labels = {**source.info.labels, "stage": "champion", "source_tag": str(source.tag)}
    return _save(CHAMPION_NAME, load_booster(source), meta, labels)


def rollback(reason: str = "manual rollback", actor: str | None = None) -> str:
    """Restore the previous champion (saved again as the newest ``fraud-champion``); returns its new tag."""
    stack = _stack()
    if len(stack) < 2:
        raise RuntimeError("no previous champion to roll back to")
    current, previous = stack[-1], stack[-2]
    meta = dict(previous.info.metadata)
    meta.update(promoted_at=_now(), action="rollback", rolled_back=str(current.info.metadata["source_tag"]),
                decision={"reason": reason, "rolled_back_from": str(current.tag),
                          "restored": str(previous.tag)})
    labels = {**previous.info.labels, "stage": "champion"}
    new_tag = _save(CHAMPION_NAME, load_booster(previous), meta, labels)
    audit("rollback", actor, reason, current.info.metadata["source_tag"], meta["source_tag"],
          previous_champion_tag=str(current.tag), champion_tag=new_tag)
    return new_tag


@dataclass
class GateDecision:
    challenger_tag: str
    promoted: bool
    reason: str
    tolerance: float
    challenger_metrics: dict[str, float]
    champion_metrics: dict[str, float] | None
    champion_tag: str | None
    evaluation_window: dict[str, str] = field(default_factory=dict)
    at: str = field(default_factory=_now)
    new_champion_tag: str | None = None
    actor: str = ""

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _record(entry: dict[str, Any]) -> None:
    path = decisions_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as f:
        f.write(json.dumps(entry, default=str) + "\n")


def gate_rule(eval_metrics: dict[str, float], champion_metrics: dict[str, float] | None,
           tolerance: float = DEFAULT_TOLERANCE) -> tuple[bool, str]:
    """The gate rule alone (no side effects)."""
    if champion_metrics is None:
        return True, "no champion yet: first model is promoted"
    worse = [f"{k} {eval_metrics[k]:.4f} < champion {champion_metrics[k]:.4f} - {tolerance}"
             for k in GATE_METRICS if eval_metrics[k] < champion_metrics[k] - tolerance]
    if worse:
        return False, "challenger worse than champion: " + "; ".join(worse)
    return True, "challenger not worse than champion within tolerance " + ", ".join(
        f"{k} {eval_metrics[k]:.4f} vs {champion_metrics[k]:.4f}" for k in GATE_METRICS)


def gate(challenger_tag: str, eval_metrics: dict[str, float], champion_metrics: dict[str, float] | None,
         tolerance: float = DEFAULT_TOLERANCE, evaluation_window: dict[str, str] | None = None,
         champion_tag: str | None = None, note: str = "", actor: str | None = None) -> GateDecision:
    """Decide, promote if the challenger passes, and record the decision (decisions.jsonl).

    ``champion_metrics`` None with a champion in place means it could not be scored on the window (``note``
    says why): it cannot block a challenger that was. A challenger that already is the champion stays so
    without a new champion version (re-running a day's gate changes nothing)."""
    ok, reason = gate_rule(eval_metrics, champion_metrics, tolerance)
    current = champion()
    if champion_tag is None and champion_metrics is not None:
        champion_tag = str(current.tag) if current else None
    if champion_metrics is None and current is not None:
        reason = f"champion {current.tag} has no figures on this window: challenger promoted"
    if note:
        reason += f" ({note})"
    d = GateDecision(challenger_tag, ok, reason, tolerance, dict(eval_metrics),
                 dict(champion_metrics) if champion_metrics else None, champion_tag,
                 dict(evaluation_window or {}), actor=actor or default_actor())
    already = current is not None and current.info.metadata.get("source_tag") == str(get(challenger_tag).tag)
    if ok and already:
        d.new_champion_tag = str(current.tag)
        d.reason += "; it already is the champion"
    elif ok:  # the gate's own promotion: recorded below as its decision
        d.new_champion_tag = _promote(_source(challenger_tag), reason, decision={
            "reason": reason, "tolerance": tolerance, "evaluation_window": d.evaluation_window,
            "challenger_metrics": d.challenger_metrics, "champion_metrics": d.champion_metrics or {},
            "previous_champion": champion_tag or ""})
    _record({"action": "gate", **d.as_dict()})
    return d


def last_decisions(n: int | None = 20) -> list[dict[str, Any]]:
    """The last ``n`` recorded decisions (all with None), oldest first."""
    path = decisions_path()
    if not path.exists():
        return []
    lines = path.read_text().splitlines()
    return [json.loads(line) for line in (lines if n is None else lines[-n:]) if line.strip()]


def list_models() -> list[dict[str, Any]]:
    """Every candidate and champion version, oldest first, with the figures that matter."""
    current = champion()
    current_source = current.info.metadata.get("source_tag") if current else None
    # A candidate's test-window figures and gate outcome live in the decision log (models are immutable).
    gated = {d["challenger_tag"]: d for d in last_decisions(n=None) if d.get("action") == "gate"}
    out = []
    for name in (MODEL_NAME, CHAMPION_NAME):
        for m in _versions(name):
            md = m.info.metadata
            g = gated.get(str(m.tag), {})
            out.append({
                "tag": str(m.tag), "name": name,
                "created": m.info.creation_time.isoformat(timespec="seconds"),
                "partition": md.get("partition", ""), "train_start": md.get("train_start", ""),
                "train_end": md.get("train_end", ""), "spec_version": md.get("spec_version", ""),
                "data_fingerprint": md.get("data_fingerprint", ""), "metrics": md.get("metrics", {}),
                "test_metrics": (md.get("decision") or {}).get("challenger_metrics")
                or g.get("challenger_metrics", {}),
                "gate": ("" if not g else "promoted" if g.get("promoted") else "rejected"),
                "source_tag": md.get("source_tag", ""), "action": md.get("action", ""),
                "is_champion": (name == MODEL_NAME and str(m.tag) == current_source)
                or (current is not None and str(m.tag) == str(current.tag)),
            })
    return out


def candidate_for_partition(partition: str) -> bentoml.Model:
    """The newest ``fraud-xgb`` trained for day ``partition``."""
    found = [m for m in _versions(MODEL_NAME) if m.info.labels.get("partition") == partition]
    if not found:
        raise LookupError(f"no {MODEL_NAME} model for partition {partition}: materialize xgb_model first")
    return found[-1]
