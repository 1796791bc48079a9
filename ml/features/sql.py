"""Render the feature spec to the dbt models that build training features (``fraud features render``).

The generated files are committed so a reader sees plain SQL; ``tests/test_feature_sql.py`` fails if they
differ from what the spec renders, so the spec stays the single definition.
"""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import yaml

from ml.features.spec import FEATURES, FEATURES_MART, SPEC_VERSION, Feature

DBT_MODELS = Path(__file__).resolve().parents[2] / "dbt_project" / "models"
HEADER = "-- Generated from ml/features/spec.py (spec {version}) by `fraud features render`. Do not edit.\n"

ROW_SQL = {
    "amount": "tx_amount",
    "weekend": "case when isodow(tx_datetime) >= 6 then 1 else 0 end",
    "night": "case when hour(tx_datetime) <= 6 then 1 else 0 end",
}
ENTITY_PREFIX = {"customer_id": "customer", "terminal_id": "terminal"}


def _interval(td: timedelta) -> str:
    return f"interval '{int(td.total_seconds())} seconds'"


def _window_model(entity: str, feats: list[Feature]) -> str:
    """Trailing windows [t - w, t]: RANGE frames include same-instant peers, so later peers are subtracted.

    ``max`` (this transaction excluded) is the larger of the max over strictly earlier instants and the max
    over the same-instant peers that sort before it (a max cannot be subtracted from).
    """
    has_max = any(f.agg == "max" for f in feats)
    peer_cols = [
        "        coalesce(count(*) over same_instant, 0) as later_n",
        "        coalesce(sum(tx_amount) over same_instant, 0) as later_amount",
    ]
    peers = f"partition by {entity}, tx_datetime order by transaction_id"
    peer_windows = [f"    window same_instant as (\n        {peers}\n"
                    "        rows between 1 following and unbounded following\n    )"]
    if has_max:
        peer_cols.append("        coalesce(max(tx_amount) over earlier_same_instant, 0) as earlier_peer_max")
        peer_windows.append(f"    earlier_same_instant as (\n        {peers}\n"
                            "        rows between unbounded preceding and 1 preceding\n    )")
    out = [
        HEADER.format(version=SPEC_VERSION),
        f"with transactions as (\n    select transaction_id, tx_datetime, {entity}, tx_amount\n"
        "    from {{ ref('stg_transactions') }}\n),\n",
        "\n-- Same-instant transactions of one entity are ordered by transaction_id: a transaction sees\n"
        "-- the earlier ones only, as a stream would.\n",
        "later_peers as (\n    select\n        *,\n",
        ",\n".join(peer_cols) + "\n    from transactions\n" + ",\n".join(peer_windows) + "\n)\n\n",
        "select\n    transaction_id",
    ]
    for f in feats:
        assert f.window is not None
        frame = (
            f"(partition by {entity} order by tx_datetime range between {_interval(f.window)} "
            "preceding and current row)"
        )
        n = f"(count(*) over {frame} - later_n)"
        if f.agg == "count":
            out.append(f",\n    {n} as {f.name}")
        elif f.agg == "mean":
            out.append(f",\n    (sum(tx_amount) over {frame} - later_amount) / {n} as {f.name}")
        elif f.agg == "max":
            before = (f"(partition by {entity} order by tx_datetime range between {_interval(f.window)} "
                      "preceding and interval '1 microseconds' preceding)")
            out.append(f",\n    greatest(coalesce(max(tx_amount) over {before}, 0), earlier_peer_max)"
                       f" as {f.name}")
        else:
            raise ValueError(f"unknown window agg {f.agg!r} for {f.name}")
    out.append("\nfrom later_peers\n")
    return "".join(out)


def _delayed_model(entity: str, feats: list[Feature]) -> str:
    """Windows [t - d - w, t - d]; a fraud counts only if its label_time <= t (known when t is scored)."""
    delays = {f.delay for f in feats}
    if len(delays) != 1:
        raise ValueError("delayed_window features of one entity must share one delay")
    (delay,) = delays
    assert delay is not None
    longest = max(f.window for f in feats if f.window is not None)
    lines = [
        HEADER.format(version=SPEC_VERSION),
        f"with transactions as (\n    select transaction_id, tx_datetime, {entity}\n"
        "    from {{ ref('stg_transactions') }}\n),\n\n",
        "known_frauds as (\n"
        f"    select t.{entity}, t.tx_datetime, l.label_time\n"
        "    from {{ ref('stg_labels') }} as l\n"
        "    inner join {{ ref('stg_transactions') }} as t using (transaction_id)\n"
        "    where l.tx_fraud = 1\n),\n\n",
        "-- Frauds are rare, so a range join on them is cheap; label_time <= t is the point-in-time rule.\n"
        "fraud_counts as (\n    select\n        t.transaction_id",
    ]
    for f in feats:
        if f.agg == "fraud_rate":
            assert f.window is not None
            since = _interval(delay + f.window)
            lines.append(
                f",\n        count(*) filter (where k.tx_datetime >= t.tx_datetime - {since})"
                f" as n_fraud_{f.name}"
            )
    lines.append(
        "\n    from transactions as t\n    inner join known_frauds as k\n"
        f"        on k.{entity} = t.{entity}\n"
        "        and k.label_time <= t.tx_datetime\n"
        f"        and k.tx_datetime >= t.tx_datetime - {_interval(delay + longest)}\n"
        f"        and k.tx_datetime <= t.tx_datetime - {_interval(delay)}\n"
        "    group by t.transaction_id\n),\n\n"
    )
    lines.append("counts as (\n    select\n        transaction_id")
    # One window per distinct length: a count and a fraud rate over the same frame share it.
    for window in sorted({f.window for f in feats if f.window is not None}):
        lines.append(
            f",\n        count(*) over (partition by {entity} order by tx_datetime range between "
            f"{_interval(delay + window)} preceding and {_interval(delay)} preceding) as {_n_tx(window)}"
        )
    lines.append("\n    from transactions\n)\n\nselect\n    c.transaction_id")
    for f in feats:
        assert f.window is not None
        n_tx = f"c.{_n_tx(f.window)}"
        if f.agg == "count":
            lines.append(f",\n    {n_tx} as {f.name}")
        elif f.agg == "fraud_rate":
            lines.append(
                f",\n    case when {n_tx} > 0\n"
                f"        then coalesce(fc.n_fraud_{f.name}, 0) / {n_tx} else 0 end as {f.name}"
            )
        else:
            raise ValueError(f"unknown delayed_window agg {f.agg!r} for {f.name}")
    lines.append("\nfrom counts as c\nleft join fraud_counts as fc using (transaction_id)\n")
    return "".join(lines)


def _n_tx(window: timedelta) -> str:
    return f"n_tx_{int(window.total_seconds())}s"


def _model_name(kind: str, entity: str) -> str:
    return f"int_{ENTITY_PREFIX[entity]}_{'windows' if kind == 'window' else 'delayed_windows'}"


def _groups() -> dict[str, list[Feature]]:
    groups: dict[str, list[Feature]] = {}
    for f in FEATURES:
        if f.kind in ("window", "delayed_window"):
            assert f.entity is not None
            groups.setdefault(_model_name(f.kind, f.entity), []).append(f)
    return groups


def _mart(groups: dict[str, list[Feature]]) -> str:
    owner = {f.name: model for model, feats in groups.items() for f in feats}
    aliases = {model: f"w{i}" for i, model in enumerate(groups)}
    cols = []
    for f in FEATURES:
        if f.kind == "row":
            assert f.op is not None
            expr = ROW_SQL[f.op].replace("tx_", "s.tx_")
        elif f.kind == "ratio":
            num = _column_ref(f.numerator, owner, aliases)
            den = _column_ref(f.denominator, owner, aliases)
            expr = f"case when {den} > 0 then {num} / {den} else 0 end"
        else:
            expr = f"{aliases[owner[f.name]]}.{f.name}"
        cols.append(f"    cast({expr} as double) as {f.name}")
    joins = "".join(
        f"inner join {{{{ ref('{m}') }}}} as {a} on {a}.transaction_id = s.transaction_id\n"
        for m, a in aliases.items()
    )
    return (
        HEADER.format(version=SPEC_VERSION)
        + "-- One row per transaction: identifiers, label, and every feature as of tx_datetime.\n"
        "select\n    s.transaction_id,\n    s.tx_datetime,\n    s.customer_id,\n    s.terminal_id,\n"
        "    l.tx_fraud,\n    l.label_time,\n"
        + ",\n".join(cols)
        + "\nfrom {{ ref('stg_transactions') }} as s\n"
        + joins
        + "left join {{ ref('stg_labels') }} as l on l.transaction_id = s.transaction_id\n"
    )


def _column_ref(name: str | None, owner: dict[str, str], aliases: dict[str, str]) -> str:
    if name is None:
        raise ValueError("ratio needs numerator and denominator")
    if name in owner:
        return f"{aliases[owner[name]]}.{name}"
    return f"s.{name}"


def _tests_for(f: Feature) -> list:
    tests: list = ["not_null"]
    if f.kind == "row" and f.op in ("weekend", "night"):
        tests.append({"accepted_values": {"arguments": {"values": [0, 1], "quote": False}}})
    elif f.agg == "fraud_rate":
        tests.append({"value_between": {"arguments": {"min_value": 0, "max_value": 1}}})
    else:
        tests.append({"value_between": {"arguments": {"min_value": 0}}})
    return tests


def _schema(groups: dict[str, list[Feature]]) -> str:
    doc = {
        "version": 2,
        "models": [
            {
                "name": FEATURES_MART,
                "description": "Point-in-time features per transaction, rendered from the feature spec "
                f"(version {SPEC_VERSION}). Training data for the daily model.",
                "config": {"meta": {"feature_spec_version": SPEC_VERSION}},
                "columns": [
                    {
                        "name": "transaction_id",
                        "description": "Unique transaction key.",
                        "data_tests": ["unique", "not_null"],
                    },
                    {
                        "name": "tx_datetime",
                        "description": "Transaction time (UTC).",
                        "data_tests": ["not_null"],
                    },
                    {
                        "name": "tx_fraud",
                        "description": "Label (null when unknown).",
                        "data_tests": [
                            {"accepted_values": {"arguments": {"values": [0, 1], "quote": False}}}
                        ],
                    },
                    {"name": "label_time", "description": "When the label became known."},
                ]
                + [
                    {"name": f.name, "description": f.description, "data_tests": _tests_for(f)}
                    for f in FEATURES
                ],
            }
        ]
        + [
            {
                "name": model,
                "description": f"Spec-rendered {'trailing' if 'delayed' not in model else 'label-delayed'} "
                "window aggregates for one entity.",
                "columns": [{"name": "transaction_id", "data_tests": ["unique", "not_null"]}]
                + [{"name": f.name, "description": f.description} for f in feats],
            }
            for model, feats in groups.items()
        ],
    }
    return "# " + HEADER.format(version=SPEC_VERSION).lstrip("- ") + yaml.safe_dump(doc, sort_keys=False)


def render() -> dict[Path, str]:
    """Every generated dbt file, path -> content."""
    groups = _groups()
    files: dict[Path, str] = {}
    for model, feats in groups.items():
        entity = feats[0].entity
        assert entity is not None
        body = _window_model(entity, feats) if "delayed" not in model else _delayed_model(entity, feats)
        files[DBT_MODELS / "intermediate" / f"{model}.sql"] = body
    files[DBT_MODELS / "marts" / f"{FEATURES_MART}.sql"] = _mart(groups)
    files[DBT_MODELS / "marts" / "_features.yml"] = _schema(groups)
    return files


def write() -> list[Path]:
    written = []
    for path, content in render().items():
        path.parent.mkdir(parents=True, exist_ok=True)
        if not path.exists() or path.read_text() != content:
            path.write_text(content)
            written.append(path)
    return written
