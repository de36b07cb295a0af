# Continual-learning pipeline. `make help` lists the targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

PYTHON ?= python3
UV_VERSION := 0.13.9
VENV := .venv
PY := $(VENV)/bin/python
# uv from PATH when present, else a private copy bootstrapped with pip into .tools/
UV := $(shell command -v uv 2>/dev/null || echo .tools/bin/uv)
STAMP := $(VENV)/.installed

EXP ?= seed_forgetting
ARGS ?=
STRATEGIES ?= all
SEEDS ?= 3
DATA ?= data
STRATEGY ?= ewc
SWEEP ?= default
TRIALS ?=
WORKERS ?= 1
STUDY ?=
RULE ?= knee
RESUME ?=
TABLE ?=
UNLEARN ?= exact
TEST_WORKERS ?= 2
DOCS_PORT ?= 8000
# Team mode: the tracking server and the study storage every command uses (see docs/team-mode.md).
TRACKING ?=
STORAGE ?=
ifneq ($(TRACKING),)
export MLFLOW_TRACKING_URI := $(TRACKING)
endif
ifneq ($(STORAGE),)
export OPTUNA_STORAGE := $(STORAGE)
endif
# `make server` (team mode). Plain `=`: HOST and PORT often sit in the environment for other
# programs; give these on the command line.
HOST = 127.0.0.1
PORT = 5000
PG_PORT = 5433
PG_DATA =
DB =
AUTH =

# A value as one shell word, whatever it holds: '...' with each ' inside written '\''.
q = '$(subst ','\'',$(1))'

# The one rule every pipeline command runs by: `$(call pipeline,<command and its options>)`
# gives it the data folder (DATA=) and the overrides (ARGS=) the same way; TRACKING= and STORAGE=
# reach it as MLFLOW_TRACKING_URI and OPTUNA_STORAGE (exported above).
pipeline = $(PY) -m pipeline $(1) $(call q,paths.data=$(DATA)) $(ARGS)

.PHONY: help install data forget run runs compare reproduce shards erase audit register landscape sweep best dashboard test test-slow lint format bench ui clean
.PHONY: server server-stop test-ui docs docs-serve

help: ## list the targets
	@awk 'BEGIN {FS = ":.*## "} /^[a-zA-Z_-]+:.*## / {printf "  make %-12s %s\n", $$1, $$2}' $(MAKEFILE_LIST)
	@echo "  variables: EXP=<conf/experiment name> ARGS=\"key=value ...\" DATA=<data dir>"
	@echo "             TRACKING=<MLflow store or http://server> STORAGE=<study storage> (every target;"
	@echo "             else MLFLOW_TRACKING_URI / OPTUNA_STORAGE, else mlruns/)"
	@echo "             RESUME=<run id> (run: a run cut off; compare: the parent run of a comparison)"
	@echo "             STRATEGIES=all|a,b,c+d SEEDS=3 (compare)"
	@echo "             TABLE=<conf/table name> SEEDS=5 JOBS=1 CELLS=<key>,... (reproduce: JOBS runs at a time,"
	@echo "             CELLS only those cells, e.g. domain-ewc,class-lwf)"
	@echo "             STRATEGY=ewc TRIALS=30 WORKERS=1 SWEEP=default STUDY=<name> RULE=knee (sweep, best)"
	@echo "             multi-objective sweeps (SWEEP=default, prefix) are not pruned: Optuna cannot prune them"
	@echo "             PG_DATA=<folder> (server): PostgreSQL's files there; as root in a folder the postgres user"
	@echo "             cannot enter (/root, mode 700) they go to ~postgres/pipeline-<hash> (a line says so)"

.tools/bin/uv:
	$(PYTHON) -m venv .tools
	.tools/bin/pip install --quiet uv==$(UV_VERSION)

# --compile-bytecode: the packages' .pyc files are written once, here. Without them, where
# PYTHONDONTWRITEBYTECODE is set (as in many container images), every process compiles torch,
# Lightning and MLflow from source: a run reached its first step in 22-26 s instead of 9-13.
# --quiet and a summary: a first install listed all 141 "+ package==version" lines.
$(STAMP): pyproject.toml uv.lock | $(UV)
	@$(UV) sync --locked --compile-bytecode --quiet
	@echo "installed $$(ls -d $(VENV)/lib/python*/site-packages/*.dist-info | wc -l) packages into $(VENV)/ ($$(du -sh $(VENV) | cut -f1)) from uv.lock"
	@touch $@

install: $(STAMP) ## create .venv from uv.lock (a no-op when up to date)

data: install ## provision datasets into data/, verified by MD5: MNIST and Fashion-MNIST, or DATASETS=cifar10,svhn,... [FROM=<folder holding their files>]
	$(PY) -m pipeline data --root $(call q,$(DATA))$(if $(DATASETS), --dataset $(call q,$(DATASETS)))$(if $(FROM), --from $(call q,$(FROM)))

forget: install data ## the founding experiment: MNIST -> Fashion-MNIST, plain fine-tuning
	$(call pipeline,run seed_forgetting --landscape)

run: install ## run any experiment: make run EXP=<name> ARGS="key=value ..." (RESUME=<run id>: carry it on)
	$(call pipeline,run $(if $(RESUME),--resume $(call q,$(RESUME)),$(call q,$(EXP))))

runs: install ## the newest runs, what became of them, which can be resumed [EXP=<MLflow experiment>]
	$(call pipeline,runs $(if $(filter command line,$(origin EXP)),$(call q,$(EXP))))

reproduce: install data ## a published table (conf/table/): every cell over seeds, ours beside theirs: make reproduce TABLE=<name> [SEEDS=5] [JOBS=1] [CELLS=<key>,...] [RESUME=<parent run>]
	$(call pipeline,reproduce $(call q,$(TABLE)) --seeds $(call q,$(if $(filter command line environment,$(origin SEEDS)),$(SEEDS),5)) $(if $(JOBS),--jobs $(call q,$(JOBS))) $(if $(CELLS),--cells $(call q,$(CELLS))) $(if $(RESUME),--resume $(call q,$(RESUME))))

compare: install data ## strategies x seeds on EXP: table, report in reports/, MLflow parent run (RESUME=<its id>)
	$(call pipeline,compare $(call q,$(EXP)) --strategies $(call q,$(STRATEGIES)) --seeds $(call q,$(SEEDS)) $(if $(RESUME),--resume $(call q,$(RESUME))))

landscape: install ## forgetting in weight space: make landscape RUN=<run id> [VS=<run id>]
	$(call pipeline,landscape $(call q,$(RUN)) $(if $(VS),--vs $(call q,$(VS))))

sweep: install data ## Optuna study: make sweep [EXP=..] STRATEGY=ewc [TRIALS=30] [WORKERS=2] [SWEEP=default|accuracy|prefix] (resumes)
	$(call pipeline,sweep $(call q,$(EXP)) --strategy $(call q,$(STRATEGY)) --sweep $(call q,$(SWEEP)) $(if $(TRIALS),--trials $(call q,$(TRIALS))) --workers $(call q,$(WORKERS)) $(if $(STUDY),--study $(call q,$(STUDY))))

best: install ## choose from a study, write conf/experiment/best/<study>.yaml (git-ignored), test once: make best STUDY=<name> [RULE=knee]
	$(call pipeline,best $(call q,$(STUDY)) --rule $(call q,$(RULE)))

dashboard: install ## optuna-dashboard over the study storage (STORAGE=) [PORT=8080 HOST=127.0.0.1]
	$(call pipeline,dashboard --port $(call q,$(if $(filter command line environment,$(origin PORT)),$(PORT),8080)) --host $(call q,$(HOST)))

shards: install ## write a task as litdata shards, to stream it: make shards EXP=<name> TASK=<task> OUT=<folder or s3://bucket/prefix>
	$(call pipeline,shards $(call q,$(EXP)) --task $(call q,$(TASK)) --out $(call q,$(OUT)))

erase: install ## right to erasure: make erase RUN=<run id> TASK=<task> IDS=<id,...> (or IDS_FILE=<file>, CANARIES=1): retrains without them in a new run, then audits it (AUDIT=0: not; UNLEARN=approx [BUDGET=0.2] [FALLBACK=0]: NegGrad+, audited; UNLEARN=buffers: stored samples only; LIST=1: the ids each checkpoint holds)
	$(call pipeline,erase $(call q,$(RUN)) $(if $(TASK),--task $(call q,$(TASK))) $(if $(LIST),--list,$(if $(CANARIES),--canaries,$(if $(IDS_FILE),--ids-file $(call q,$(IDS_FILE)),--ids $(call q,$(IDS))))) --mode $(call q,$(UNLEARN)) $(if $(filter 0,$(AUDIT)),--no-audit) $(if $(BUDGET),--budget $(call q,$(BUDGET))) $(if $(filter 0,$(FALLBACK)),--no-fallback))

unlearn-tune: install ## Optuna study of UNLEARN=approx's settings against exact unlearning: make unlearn-tune RUN=<run id> TASK=<task> [SIZE=100] [TRIALS=20]
	$(call pipeline,unlearn-tune $(call q,$(RUN)) --task $(call q,$(TASK)) --size $(call q,$(or $(SIZE),100)) --trials $(call q,$(or $(TRIALS),20)))

register: install ## the MLflow Model Registry: make register RUN=<run id> [NAME=<model name>]: the run's final model as a new version of NAME (default: its experiment) with alias champion and its lineage tags
	$(call pipeline,register $(call q,$(RUN)) $(if $(filter command line,$(origin NAME)),--name $(call q,$(NAME))))

audit: install ## membership audit of an unlearned run against runs retrained without the samples: make audit RUN=<run id>
	$(call pipeline,audit $(call q,$(RUN)))

test: install ## the test suite on synthetic data, 2 processes (real data: `make test-slow`; the linters: `make lint`)
	$(PY) -m pytest -m "not slow and not browser" -q -n $(TEST_WORKERS) --dist loadfile --durations=15

test-slow: install data ## the tests that need the real datasets
	$(PY) -m pytest -m slow -q

test-ui: install data ## the MLflow UI in headless Chromium (Debian's chromium); screenshots to docs/img/
	@command -v chromium >/dev/null || { echo "error: no chromium on PATH: install Debian's package first (as root: apt-get install -y chromium)" >&2; exit 2; }
	UI_SCREENSHOTS=docs/img $(PY) -m pytest -m browser -q tests/test_ui_browser.py

docs: install ## build the docs site strictly into .site/ (a broken link or reference fails)
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs build --strict --quiet

docs-serve: install ## serve the docs on http://127.0.0.1:8000 [DOCS_PORT=8000]
	NO_MKDOCS_2_WARNING=1 $(VENV)/bin/mkdocs serve --dev-addr $(call q,127.0.0.1:$(DOCS_PORT))

lint: install ## ruff, mypy and the import contracts (CI runs it beside make test)
	$(VENV)/bin/ruff check pipeline tests benchmarks
	$(VENV)/bin/ruff format --check pipeline tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports --no-cache --no-logo pyproject.toml

format: install ## apply ruff's formatting and import order
	$(VENV)/bin/ruff check --fix pipeline tests benchmarks
	$(VENV)/bin/ruff format pipeline tests benchmarks

bench: install data ## pipeline vs a bare PyTorch loop: whole-process wall and memory, start-up, samples/s; strategy cost vs naive; study storages; a run beside 2 CPU-bound processes vs its fair share; the reduced ResNet-18 vs a bare loop; an 8 GB dataset streamed vs 1 GB, and vs memory
	$(PY) benchmarks/overhead.py --root $(call q,$(DATA))
	$(PY) benchmarks/throughput.py --root $(call q,$(DATA))
	$(PY) benchmarks/throughput.py --resnet --repeats 9
	$(PY) benchmarks/strategy_cost.py --root $(call q,$(DATA)) $(ARGS)
	$(PY) benchmarks/storages.py
	$(PY) benchmarks/contention.py --root $(call q,$(DATA))
	$(PY) benchmarks/streaming.py

ui: install ## the MLflow UI over mlruns/ (TRACKING=), opening on the training view [PORT=5000 HOST=127.0.0.1]
	$(call pipeline,ui --port $(call q,$(PORT)) --host $(call q,$(HOST)))

server: install ## team mode: PostgreSQL + MLflow server in .server/ [HOST= PORT= PG_PORT= PG_DATA=<folder for PostgreSQL's files> DB=postgresql://... AUTH=1]
	$(PY) -m pipeline.server start --host $(call q,$(HOST)) --port $(call q,$(PORT)) --pg-port $(call q,$(PG_PORT)) $(if $(PG_DATA),--pg-data $(call q,$(PG_DATA))) $(if $(DB),--db $(call q,$(DB))) $(if $(filter 1 yes true,$(AUTH)),--auth)

server-stop: ## stop what `make server` started (nothing running is fine)
	$(if $(wildcard $(PY)),$(PY),$(PYTHON)) -m pipeline.server stop

clean: ## remove caches (keeps .venv, data/ and the MLflow store)
	rm -rf .pytest_cache .mypy_cache .ruff_cache lightning_logs
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
