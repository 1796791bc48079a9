"""`fraud models list|promote TAG|rollback|decisions`: the model registry from the command line."""

from __future__ import annotations

import json

import click


@click.group("models")
def models() -> None:
    """Trained models (BentoML store), the champion, promotions and rollbacks."""


@models.command("list")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def list_cmd(as_json: bool) -> None:
    """Every candidate (fraud-xgb) and champion (fraud-champion) version, oldest first."""
    from ml.registry import list_models

    rows = list_models()
    if as_json:
        click.echo(json.dumps(rows, indent=2, default=str))
        return
    if not rows:
        click.echo("no models yet")
        return
    for r in rows:
        m = r["test_metrics"] or r["metrics"]
        figures = " ".join(f"{k}={v:.3f}" for k, v in m.items() if isinstance(v, float) and "n_" not in k)
        star = "*" if r["is_champion"] else " "
        extra = f" {r['action']} of {r['source_tag']}" if r["source_tag"] else ""
        extra += f" gate: {r['gate']}" if r.get("gate") else ""
        click.echo(f"{star} {r['tag']:<40} {r['created']} day={r['partition']} "
                   f"train=[{r['train_start'][:10]}, {r['train_end'][:10]}) {figures}{extra}")


@models.command("promote")
@click.argument("tag")
@click.option("--reason", default="manual promotion", show_default=True)
def promote_cmd(tag: str, reason: str) -> None:
    """Make TAG (a fraud-xgb version, e.g. fraud-xgb:abc123) the champion, bypassing the gate."""
    from ml.registry import promote

    try:
        new = promote(tag, reason)
    except Exception as e:  # bentoml NotFound and friends: show the message, not a traceback
        raise click.ClickException(str(e)) from e
    click.echo(f"champion is now {new} (from {tag})")


@models.command("rollback")
@click.option("--reason", default="manual rollback", show_default=True)
def rollback_cmd(reason: str) -> None:
    """Restore the previous champion."""
    from ml.registry import champion, rollback

    try:
        new = rollback(reason)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"champion is now {new} ({champion().info.metadata['source_tag']})")


@models.command("decisions")
@click.option("-n", default=20, show_default=True)
def decisions_cmd(n: int) -> None:
    """The last gate/rollback decisions (data_dir/registry/decisions.jsonl)."""
    from ml.registry import last_decisions

    for d in last_decisions(n):
        click.echo(json.dumps(d, default=str))
