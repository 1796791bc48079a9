"""Render the feature spec to the dbt models that build training features (``fraud features render``).

The generated files are committed so a reader sees plain SQL; ``tests/test_feature_sql.py`` fails if they
differ from what the spec renders, so the spec stays the single definition. Each frame is written once, as a
named window, and intermediate columns are named for what they hold (``tx_count_7d``).
"""

from __future__ import annotations

from collections.abc import Sequence
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
_UNITS = (
    ("day", "d", timedelta(days=1)),
    ("hour", "h", timedelta(hours=1)),
    ("minute", "m", timedelta(minutes=1)),
    ("second", "s", timedelta(seconds=1)),
    ("microsecond", "us", timedelta(microseconds=1)),
)


def _largest_unit(td: timedelta) -> tuple[int, str, str]:
    for unit, suffix, size in _UNITS:
        if td % size == timedelta(0):
            return td // size, unit, suffix
    raise ValueError(f"{td} is not a whole number of microseconds")


def _interval(td: timedelta) -> str:
    """A DuckDB interval in the largest whole unit: ``interval 30 days``, ``interval 1 hour``."""
    n, unit, _ = _largest_unit(td)
    return f"interval {n} {unit}{'' if n == 1 else 's'}"


def _span(td: timedelta) -> str:
    """A window length as the feature names spell it (``30d``, ``1h``), for naming columns and windows."""
    n, _, suffix = _largest_unit(td)
    return f"{n}{suffix}"


def _select(columns: Sequence[str]) -> str:
    return "select\n" + ",\n".join(f"    {c}" for c in columns) + "\n"


def _window_clause(defs: Sequence[tuple[str, str | tuple[str, ...]]]) -> str:
    """``window name as (...)`` for each definition; a tuple of lines is written over several lines."""
    parts = []
    for name, body in defs:
        if isinstance(body, str):
            parts.append(f"    {name} as ({body})")
        else:
            parts.append(f"    {name} as (\n" + "".join(f"        {line}\n" for line in body) + "    )")
    return "window\n" + ",\n".join(parts) + "\n"


def _cte(name: str, body: str) -> str:
    indented = "".join(f"    {line}" if line.strip() else line for line in body.splitlines(keepends=True))
    return f"{name} as (\n{indented})"


def _model(description: str, ctes: Sequence[tuple[str, str, str]], final: str) -> str:
    """A model: the header, a comment, ``with`` CTEs (name, comment, body) and the final select."""
    parts = []
    for name, comment, body in ctes:
        parts.append("".join(f"-- {line}\n" for line in comment.splitlines()) + _cte(name, body))
    comment = "".join(f"-- {line}\n" for line in description.splitlines())
    return HEADER.format(version=SPEC_VERSION) + comment + "with\n\n" + ",\n\n".join(parts) + "\n\n" + final


def _ratio(numerator: str, denominator: str) -> str:
    """numerator / denominator, 0 when the denominator is not positive; laid out as a column of a select."""
    return f"case\n        when {denominator} > 0 then {numerator} / {denominator}\n        else 0\n    end"


def _window_model(entity: str, feats: list[Feature]) -> str:
    """Trailing windows [t - w, t]: range frames include same-instant peers, so later peers are subtracted.

    ``max`` (this transaction excluded) is the larger of the max over strictly earlier instants and the max
    over the same-instant peers that sort before it (a max cannot be subtracted from).
    """
    peers = f"partition by {entity}, tx_datetime order by transaction_id"
    peer_cols = [
        "*",
        "coalesce(count(*) over later_peers, 0) as later_peer_count",
        "coalesce(sum(tx_amount) over later_peers, 0) as later_peer_amount",
    ]
    peer_windows: list[tuple[str, str | tuple[str, ...]]] = [
        ("later_peers", (peers, "rows between 1 following and unbounded following"))
    ]
    if any(f.agg == "max" for f in feats):
        peer_cols.append("coalesce(max(tx_amount) over earlier_peers, 0) as earlier_peer_max_amount")
        peer_windows.append(("earlier_peers", (peers, "rows between unbounded preceding and 1 preceding")))

    # One aggregate per (aggregate, window), shared by the features that read it (a count and a mean).
    frames: dict[str, str] = {}
    aggregates: dict[str, str] = {}
    features: list[str] = []
    for f in feats:
        if f.window is None:
            raise ValueError(f"window feature {f.name} needs a window")
        span, since = _span(f.window), _interval(f.window)
        if f.agg in ("count", "mean"):
            frames[f"last_{span}"] = f"by_time range between {since} preceding and current row"
            aggregates[f"tx_count_{span}"] = f"count(*) over last_{span} - later_peer_count"
            if f.agg == "count":
                features.append(f"tx_count_{span} as {f.name}")
            else:
                aggregates[f"amount_sum_{span}"] = f"sum(tx_amount) over last_{span} - later_peer_amount"
                features.append(f"amount_sum_{span} / tx_count_{span} as {f.name}")
        elif f.agg == "max":
            frames[f"earlier_{span}"] = f"by_time range between {since} preceding and interval 1 microsecond preceding"
            aggregates[f"earlier_max_amount_{span}"] = f"coalesce(max(tx_amount) over earlier_{span}, 0)"
            features.append(f"greatest(earlier_max_amount_{span}, earlier_peer_max_amount) as {f.name}")
        else:
            raise ValueError(f"unknown window agg {f.agg!r} for {f.name}")

    return _model(
        _description("window", entity, feats),
        [
            ("transactions", "",
             _select(["transaction_id", "tx_datetime", entity, "tx_amount"]) + "from {{ ref('stg_transactions') }}\n"),
            ("same_instant_peers",
             "Transactions of one entity at the same instant are ordered by transaction_id: each sees the earlier\n"
             "ones only, as a stream would. A range frame holds them all, so the later ones are subtracted.",
             _select(peer_cols) + "from transactions\n" + _window_clause(peer_windows)),
            ("windowed", "",
             _select(["*", *(f"{expr} as {name}" for name, expr in aggregates.items())])
             + "from same_instant_peers\n"
             + _window_clause([("by_time", f"partition by {entity} order by tx_datetime"), *frames.items()])),
        ],
        _select(["transaction_id", *features]) + "from windowed\n",
    )


def _delayed_model(entity: str, feats: list[Feature]) -> str:
    """Windows [t - d - w, t - d]; a fraud counts only if its label_time <= t (known when t is scored)."""
    delays = {f.delay for f in feats}
    if len(delays) != 1:
        raise ValueError("delayed_window features of one entity must share one delay")
    (delay,) = delays
    if delay is None or any(f.window is None for f in feats):
        raise ValueError("delayed_window features need a window and a delay")
    windows = sorted({f.window for f in feats if f.window is not None})
    fraud_windows = sorted({f.window for f in feats if f.window is not None and f.agg == "fraud_rate"})
    until = _interval(delay)

    fraud_cols = ["t.transaction_id"] + [
        f"count(*) filter (where k.tx_datetime >= t.tx_datetime - {_interval(delay + w)}) as fraud_count_{_span(w)}"
        for w in fraud_windows
    ]
    fraud_counts = (
        _select(fraud_cols)
        + "from transactions as t\n"
        + "inner join known_frauds as k\n"
        + f"    on k.{entity} = t.{entity}\n"
        + "    and k.label_time <= t.tx_datetime\n"
        + f"    and k.tx_datetime >= t.tx_datetime - {_interval(delay + max(fraud_windows, default=delay))}\n"
        + f"    and k.tx_datetime <= t.tx_datetime - {until}\n"
        + "group by t.transaction_id\n"
    )
    tx_counts = (
        _select(["transaction_id", *(f"count(*) over delayed_{_span(w)} as tx_count_{_span(w)}" for w in windows)])
        + "from transactions\n"
        + _window_clause(
            [("by_time", f"partition by {entity} order by tx_datetime")]
            + [(f"delayed_{_span(w)}", f"by_time range between {_interval(delay + w)} preceding and {until} preceding")
               for w in windows]
        )
    )
    features = []
    for f in feats:
        assert f.window is not None
        span = _span(f.window)
        if f.agg == "count":
            features.append(f"tx_count_{span} as {f.name}")
        elif f.agg == "fraud_rate":
            features.append(f"{_ratio(f'coalesce(fraud_count_{span}, 0)', f'tx_count_{span}')} as {f.name}")
        else:
            raise ValueError(f"unknown delayed_window agg {f.agg!r} for {f.name}")

    transactions = _select(["transaction_id", "tx_datetime", entity]) + "from {{ ref('stg_transactions') }}\n"
    known_frauds = (
        _select([f"t.{entity}", "t.tx_datetime", "l.label_time"])
        + "from {{ ref('stg_labels') }} as l\n"
        + "inner join {{ ref('stg_transactions') }} as t using (transaction_id)\n"
        + "where l.tx_fraud = 1\n"
    )
    ctes = [("transactions", "", transactions)]
    final = _select(["transaction_id", *features]) + "from tx_counts\n"
    if fraud_windows:
        ctes += [
            ("known_frauds", "", known_frauds),
            ("fraud_counts",
             "Frauds are rare, so a range join on them is cheap; label_time <= t is the point-in-time rule.",
             fraud_counts),
        ]
        final += "left join fraud_counts using (transaction_id)\n"
    ctes.append(("tx_counts", "", tx_counts))
    return _model(
        _description("delayed_window", entity, feats),
        ctes,
        final,
    )


def _description(kind: str, entity: str, feats: list[Feature]) -> str:
    who = ENTITY_PREFIX[entity]
    if kind == "window":
        return f"Per transaction, its {who}'s transactions in trailing windows [t - window, t]."
    delay = _interval(feats[0].delay or timedelta(0)).removeprefix("interval ")
    return (f"Per transaction, its {who}'s transactions and known frauds in windows that end {delay} before it\n"
            f"(the label delay): [t - {delay} - window, t - {delay}].")


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
    """Import CTEs, one joined row per transaction, then every feature cast to double in spec order."""
    imports = [("transactions", "stg_transactions"), ("labels", "stg_labels")]
    imports += [(model.removeprefix("int_"), model) for model in groups]
    joined = (
        "select *\nfrom transactions\n"
        + "".join(f"inner join {name} using (transaction_id)\n" for name, _ in imports[2:])
        + "left join labels using (transaction_id)\n"
    )
    computed = []
    for f in FEATURES:
        if f.kind == "row":
            assert f.op is not None
            if ROW_SQL[f.op] != f.name:
                computed.append(f"{ROW_SQL[f.op]} as {f.name}")
        elif f.kind == "ratio":
            if f.numerator is None or f.denominator is None:
                raise ValueError("ratio needs numerator and denominator")
            computed.append(f"{_ratio(f.numerator, f.denominator)} as {f.name}")
    ids = ["transaction_id", "tx_datetime", "customer_id", "terminal_id", "tx_fraud", "label_time"]
    return _model(
        "One row per transaction: identifiers, label, and every feature as of tx_datetime.",
        [(name, "", f"select * from {{{{ ref('{model}') }}}}\n") for name, model in imports]
        + [("joined", "", joined), ("features", "", _select(["*", *computed]) + "from joined\n")],
        _select([*ids, *(f"cast({f.name} as double) as {f.name}" for f in FEATURES)]) + "from features\n",
    )
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
                "description": _description(feats[0].kind, feats[0].entity or "", feats).replace("\n", " "),
                "columns": [{"name": "transaction_id", "data_tests": ["unique", "not_null"]}]
                + [{"name": f.name, "description": f.description} for f in feats],
            }
            for model, feats in groups.items()
        ],
    }
    return "# " + HEADER.format(version=SPEC_VERSION).lstrip("- ") + yaml.safe_dump(doc, sort_keys=False, width=110)


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
