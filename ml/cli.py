"""`fraud` command-line entry point. Each stage registers its commands here."""

from __future__ import annotations

import click

from ml.cli_models import models
from ml.cli_score import score
from ml.cli_simulate import simulate
from ml.cli_stream import broker, publish, worker


@click.group()
def main() -> None:
    """Card-fraud platform: simulate, build features, train, score, stream, monitor."""


@main.group()
def features() -> None:
    """The feature spec and its renderings."""


@features.command("render")
def features_render() -> None:
    """Re-render the dbt feature models from ml/features/spec.py."""
    from ml.features.sql import write

    written = write()
    click.echo("\n".join(str(p) for p in written) if written else "dbt models already match the spec")


main.add_command(simulate)
main.add_command(worker)
main.add_command(publish)
main.add_command(broker)
main.add_command(models)
main.add_command(score)
