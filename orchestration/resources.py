"""The dbt project and the resources every stage uses.

dbt's manifest is prepared outside import: ``dagster dev`` does it through ``prepare_if_dev``, a deployment with
``dagster-dbt project prepare-and-package --file orchestration/resources.py``, and the other entry points
(``make demo``, the tests, the benchmarks) call ``prepare_dbt_project()`` before loading the definitions.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

from dagster_dbt import DbtCliResource, DbtProject
from dagster_duckdb import DuckDBResource

from ml.settings import PROJECT_ROOT, get_settings

DBT_PROJECT = DbtProject(project_dir=PROJECT_ROOT / "dbt_project")
DBT_PROJECT.prepare_if_dev()

# The dbt installed beside this interpreter (the venv's), so an unactivated venv finds it without PATH.
_VENV_DBT = Path(sys.executable).with_name("dbt")
DBT_EXECUTABLE = str(_VENV_DBT) if _VENV_DBT.exists() else (shutil.which("dbt") or "dbt")


def dbt_resource() -> DbtCliResource:
    return DbtCliResource(project_dir=DBT_PROJECT, dbt_executable=DBT_EXECUTABLE)


def prepare_dbt_project() -> Path:
    """`dbt parse` into the project's manifest (what `prepare_if_dev` does under `dagster dev`); call it before
    importing ``orchestration.definitions`` anywhere else, and after the models change (`fraud features render`)."""
    dbt_resource().cli(["parse", "--quiet"], target_path=DBT_PROJECT.target_path).wait()
    return DBT_PROJECT.manifest_path


def build_resources() -> dict[str, object]:
    return {
        # Only Dagster/dbt write the warehouse (DuckDB allows one writer process per file).
        "duckdb": DuckDBResource(database=str(get_settings().warehouse)),
        "dbt": dbt_resource(),
    }
