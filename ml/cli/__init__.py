"""`fraud` command-line entry point.

The base's own commands are added here; other stages plug theirs in through the ``fraud.commands`` entry
point group (pyproject.toml), so ``ml`` never imports the stages built on it.
"""

from __future__ import annotations

from importlib.metadata import entry_points

import click

from ml.cli.models import models
from ml.cli.score import score
from ml.cli.simulate import simulate


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
main.add_command(models)
main.add_command(score)
for _plugin in entry_points(group="fraud.commands"):
    main.add_command(_plugin.load(), _plugin.name)
