"""`fraud score --from D1 --to D2 --out scores.parquet`: batch scoring with the champion."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import click


@click.command("score")
@click.option("--from", "start", required=True, type=click.DateTime(["%Y-%m-%d"]), help="First day (UTC).")
@click.option("--to", "end", required=True, type=click.DateTime(["%Y-%m-%d"]), help="Last day, included.")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path),
              help="Parquet file: transaction_id, score, model.")
@click.option("--model", "model_tag", default=None, help="A model tag instead of the champion.")
def score(start: datetime, end: datetime, out: Path, model_tag: str | None) -> None:
    """Score every transaction from --from to --to (days included) with the champion and offline features."""
    from ml.batch_scoring import score_range

    try:
        stats = score_range(start.date(), end.date(), out, model_tag=model_tag)
    except (LookupError, RuntimeError, ValueError, FileNotFoundError) as e:  # no champion, bad range, ...
        raise click.ClickException(str(e)) from e
    click.echo(f"scored {stats.rows:,} transactions with {stats.model} in {stats.seconds:.1f}s "
               f"-> {stats.out}")
