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


_BY = click.option("--by", "actor", default=None,
                   help="Who does this, for the decision log (default: the OS user).")


@models.command("promote")
@click.argument("tag")
@click.option("--reason", default=None, help="Why, for the decision log. [default: manual promotion]")
@click.option("--force", is_flag=True, help="Promote a model the gate rejected (needs --reason).")
@_BY
def promote_cmd(tag: str, reason: str | None, force: bool, actor: str | None) -> None:
    """Make TAG (a fraud-xgb version, e.g. fraud-xgb:abc123) the champion, bypassing the gate.

    A model the gate rejected is refused unless --force --reason "..." are given. Every promotion is
    recorded in the decision log (who, when, why, previous and new champion)."""
    from ml.registry import promote

    if force and not (reason and reason.strip()):
        raise click.UsageError('--force needs --reason "why the gate\'s rejection is overruled"')
    try:
        new = promote(tag, reason or "manual promotion", actor=actor, force=force)
    except Exception as e:  # PromotionRefused, bentoml NotFound and friends: the message, not a traceback
        raise click.ClickException(str(e)) from e
    click.echo(f"champion is now {new} (from {tag})")


@models.command("rollback")
@click.option("--reason", default="manual rollback", show_default=True)
@_BY
def rollback_cmd(reason: str, actor: str | None) -> None:
    """Restore the previous champion (recorded in the decision log)."""
    from ml.registry import champion, rollback

    try:
        new = rollback(reason, actor=actor)
    except RuntimeError as e:
        raise click.ClickException(str(e)) from e
    click.echo(f"champion is now {new} ({champion().info.metadata['source_tag']})")


@models.command("decisions")
@click.option("-n", default=20, show_default=True)
def decisions_cmd(n: int) -> None:
    """The last gate decisions, promotions, rollbacks and service reloads (data_dir/registry/decisions.jsonl,
    oldest first)."""
    from ml.registry import last_decisions

    for d in last_decisions(n):
        click.echo(json.dumps(d, default=str))
