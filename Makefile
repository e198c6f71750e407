# Two entry points for a fresh machine: `make run` and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-stamp

.PHONY: setup run test test-fast lint bench clean

# The venv is rebuilt only when the dependency pins change.
$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -c constraints.txt -e '.[launchers,server,dev]'
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/fnnlab-train experiment=reference
	$(BIN)/fnnlab-train -m model.hidden_dim=8,16,32 optim.lr=0.01,0.1 'seed=range(5)'
	$(BIN)/fnnlab-aggregate
	@echo
	@echo "Runs are in the embedded store mlruns/mlflow.db (artifacts under mlruns/artifacts)."
	@echo "Browse them with: $(BIN)/fnnlab-ui"
	@echo "The sweep's summary (CSV, report.md, plots) is also on its parent run, under aggregate/."

# Two test processes (pytest-xdist), one per core of the CI machine; a test file stays in
# one process, so its module fixtures (a sweep per launcher, a store) are made once. The 20
# slowest tests are listed at the end: the suite has to stay well inside CI's time.
test: setup lint
	$(BIN)/python -m pytest -n 2 --dist loadfile --durations=20

test-fast: setup
	$(BIN)/python -m pytest -n 2 --dist loadfile -m "not slow"

lint: setup
	$(BIN)/ruff check src tests benchmarks
	$(BIN)/ruff format --check src tests benchmarks

# Sweep throughput against the naive way and, with BASELINE=<commit>, an earlier version
# (benchmarks/sweep_throughput.py); what the store's durability costs; several minutes.
BASELINE ?=
bench: setup
	$(BIN)/python benchmarks/sweep_throughput.py $(if $(BASELINE),--baseline $(BASELINE))
	$(BIN)/python benchmarks/store_durability.py

clean:
	rm -rf outputs multirun

# A real MLflow tracking server on PostgreSQL, bound to 127.0.0.1 (see scripts/server.sh).
.PHONY: server server-stop
server: setup
	bash scripts/server.sh start

server-stop:
	bash scripts/server.sh stop
