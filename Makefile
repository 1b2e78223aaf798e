# Every target sets itself up: `make test` on a fresh clone creates .venv,
# installs optsvc with its dev, compare and ray extras, then runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.cfg
SRC := optsvc cli tests $(wildcard bench)


.PHONY: test test-fast lint format train soak venv thinc9-reference clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,compare,ray]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q

# The inner loop: everything but the tests marked slow (subprocesses, SIGKILL,
# fuzz and soak). `make test` (and CI) runs them all.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -q -m "not slow"

lint: $(STAMP)
	$(BIN)/ruff check $(SRC)
	$(BIN)/ruff format --check $(SRC)

format: $(STAMP)
	$(BIN)/ruff format $(SRC)
	$(BIN)/ruff check --fix $(SRC)

# The main job: an MLP learns three interleaved spirals (well under a minute
# on 2 CPU cores). Each run starts afresh in runs/quickstart.
train: $(STAMP)
	$(BIN)/optsvc train $(CONFIG) -o runs/quickstart --overwrite

# The reliability soak (issue 6): 50 training runs SIGKILLed and resumed, checkpoint
# corruptions, 10,000 fuzzed configs, command lines and optimizer calls; the
# figures go to bench/results/soak.json (README, Reliability). About 20-30 min
# on 2 CPU cores; exit 1 if any promise broke. `make test` runs a small version
# (tests/test_reliability.py).
soak: $(STAMP)
	$(BIN)/python tests/soak.py --kills 50 --fuzz 10000 --json bench/results/soak.json

# Thinc 9.1.1 pins confection < 1.0, so its reference trajectories come from
# a separate virtualenv (see tests/reference/README.md).
thinc9-reference:
	test -x /tmp/thinc9-venv/bin/python || ($(PYTHON) -m venv /tmp/thinc9-venv && /tmp/thinc9-venv/bin/pip install --quiet thinc==9.1.1)
	/tmp/thinc9-venv/bin/python tests/reference/make_thinc9_reference.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
