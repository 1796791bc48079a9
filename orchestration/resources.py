"""Resources and partitions shared by every stage."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import dagster as dg
from dagster_dbt import DbtCliResource, DbtProject
from dagster_duckdb import DuckDBResource

from ml.settings import PROJECT_ROOT, export_tool_env

SETTINGS = export_tool_env()
# dagster-dbt's manifest preparation looks for `dbt` on PATH: put this venv's first, so an unactivated
# venv (make targets, `dg`, CI) still finds it.
_VENV_BIN = str(Path(sys.executable).parent)
if _VENV_BIN not in os.environ.get("PATH", "").split(os.pathsep):
    os.environ["PATH"] = _VENV_BIN + os.pathsep + os.environ.get("PATH", "")

# One partition per day of transactions; training/evaluation/drift use the same days (D = training day).
daily_partitions = dg.DailyPartitionsDefinition(start_date=SETTINGS.start_date, end_date=SETTINGS.end_date)

DBT_PROJECT = DbtProject(project_dir=PROJECT_ROOT / "dbt_project", profiles_dir=PROJECT_ROOT / "dbt_project")


def _manifest_stale(project: DbtProject) -> bool:
    """No manifest, or a model/YAML file changed since it was parsed (e.g. after `fraud features render`)."""
    if not project.manifest_path.exists():
        return True
    parsed = project.manifest_path.stat().st_mtime
    sources = [project.project_dir / "dbt_project.yml", *(project.project_dir / "models").rglob("*")]
    return any(p.is_file() and p.stat().st_mtime > parsed for p in sources)


if _manifest_stale(DBT_PROJECT):
    # `dagster dev` refreshes it on every load; other entry points (CLI, tests, demo) when it is stale.
    DBT_PROJECT.preparer.prepare(DBT_PROJECT)
DBT_PROJECT.prepare_if_dev()

resources_defs = dg.Definitions(
    resources={
        # Only Dagster/dbt write the warehouse (DuckDB allows one writer process per file).
        "duckdb": DuckDBResource(database=str(SETTINGS.warehouse)),
        # The venv's dbt, so the CLI works without an activated venv on PATH.
        "dbt": DbtCliResource(project_dir=DBT_PROJECT, dbt_executable=str(Path(_VENV_BIN) / "dbt")),
    }
)
