# Two commands on a fresh machine: `make demo` (main job) and `make test`. Each builds the venv it needs.
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed-stamp
export DAGSTER_HOME ?= $(CURDIR)/data/dagster_home
# The model store (the champion); `bentoml serve` / `bentoml build` read it before importing the service.
export BENTOML_HOME ?= $(or $(FRAUD_DATA_DIR),$(CURDIR)/data)/bentoml

.PHONY: venv dagster-home demo test test-fast bench ui lint drift-demo serve

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check uv
	$(VENV)/bin/uv pip install --python $(PY) -q -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

# The Dagster instance: the project's dagster.yaml (telemetry off) unless the instance already has one.
dagster-home:
	mkdir -p $(DAGSTER_HOME)
	test -f $(DAGSTER_HOME)/dagster.yaml || cp orchestration/dagster.yaml $(DAGSTER_HOME)/dagster.yaml

# demo prepares dbt's manifest itself (orchestration.resources.prepare_dbt_project).
demo: venv dagster-home
	$(PY) -m orchestration.demo

# Every test: Redis (127.0.0.1:6379) must be running; the tests start the Kafka broker themselves.
test: venv
	$(PY) -m pytest

# The pure-logic tier (features, contract, signing, metrics, SQL rendering, decisions, ...): no Redis, no
# broker, no dbt or Dagster run, no `bentoml serve`; about a minute. Markers: pyproject.toml.
test-fast: venv
	$(PY) -m pytest -m "not (redis or kafka or pipeline or service or slow)"

bench: venv
	$(PY) -m benchmarks.run

drift-demo: venv
	mkdir -p $(DAGSTER_HOME)
	$(PY) -m benchmarks.drift_loop

serve: venv
	$(VENV)/bin/bentoml serve

# `dagster dev` prepares dbt's manifest on load (DbtProject.prepare_if_dev) with the `dbt` on PATH: the venv's.
ui: venv dagster-home
	PATH="$(CURDIR)/$(VENV)/bin:$$PATH" $(VENV)/bin/dagster dev -w workspace.yaml

lint: venv
	$(VENV)/bin/ruff check .
