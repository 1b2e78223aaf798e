# Every target sets itself up: `make test` on a fresh clone creates .venv,
# installs optsvc with its dev extra and every optional one (compare, plot,
# thinc, spacy, ray, tensorboard, mlflow), so that the integration tests run
# for real, then runs the tests.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
CONFIG ?= configs/quickstart.cfg
SRC := optsvc cli tests configs/spacy $(wildcard bench)


.PHONY: test test-fast peer-tests peer-tests-thinc9 lint format train spacy-train spacy-side-by-side compare-optimizers plot-example soak venv thinc9-reference clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev,compare,plot,thinc,spacy,ray,tensorboard,mlflow]'
	touch $(STAMP)

venv: $(STAMP)

test: $(STAMP)
	$(BIN)/python -m pytest -q
	$(BIN)/python tests/peer/run.py

# Thinc's and spaCy's own shipped tests, as shipped and with optsvc in place of
# Thinc's optimizers and schedules; fails if a test passes only as shipped.
# About 4 minutes on 2 CPU cores.
peer-tests: $(STAMP)
	$(BIN)/python tests/peer/run.py

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

# The README's picture: the quickstart job with two learning-rate schedules,
# plotted by `optsvc plot` into docs/plot-two-schedules.png (about a minute).
plot-example: $(STAMP)
	$(BIN)/python docs/make_plot_example.py

# spaCy trains a blank-English tagger with optsvc.Adam.v1 and
# optsvc.warmup_cosine.v1 (configs/spacy/tagger.cfg), found through Thinc's
# registries: no --code file. The corpus is generated, seeded, in runs/spacy.
spacy-train: $(STAMP)
	$(BIN)/python configs/spacy/make_corpus.py runs/spacy/corpus
	$(BIN)/python -m spacy train configs/spacy/tagger.cfg -o runs/spacy/tagger

# The same training with Thinc's Adam.v1 and optsvc.Adam.v1, step by step, and
# the optimizer's time per step (README, spaCy). About a minute on 2 CPU cores.
spacy-side-by-side: $(STAMP)
	$(BIN)/python configs/spacy/side_by_side.py --json runs/spacy/side_by_side.json

# What the new optimizers buy (issue 22): spaCy's default Adam with
# warmup_linear, Schedule-Free AdamW with no schedule and Lion, on the spaCy
# tagger (1000 steps) and the quickstart job (3000 steps), each again with
# early stopping; one table (README, New optimizers). About a minute on 2 CPU
# cores.
compare-optimizers: $(STAMP)
	$(BIN)/python bench/compare_optimizers.py

# The reliability soak (issue 6): 50 training runs SIGKILLed and resumed, checkpoint
# corruptions, 10,000 fuzzed configs, command lines and optimizer calls; the
# figures go to bench/results/soak.json (README, Reliability). About 12 min
# on 2 CPU cores; exit 1 if any promise broke. `make test` runs a small version
# (tests/test_reliability.py).
soak: $(STAMP)
	$(BIN)/python tests/soak.py --kills 50 --fuzz 10000 --sweeps 6 --loggers 6 --json bench/results/soak.json

# Thinc 9.1.1 pins confection < 1.0, so its reference trajectories come from
# a separate virtualenv (see tests/reference/README.md).
THINC9 := /tmp/thinc9-venv/bin/python
$(THINC9):
	$(PYTHON) -m venv /tmp/thinc9-venv
	/tmp/thinc9-venv/bin/pip install --quiet thinc==9.1.1 pytest safetensors

thinc9-reference: $(THINC9)
	$(THINC9) tests/reference/make_thinc9_reference.py

# Thinc 9.1.1's own optimizer and schedule tests against optsvc's API, in that
# virtualenv (optsvc's core needs neither confection nor its config layer):
# the counts, as shipped and swapped.
peer-tests-thinc9: $(THINC9)
	/tmp/thinc9-venv/bin/pip install --quiet --no-deps -e .
	$(THINC9) tests/peer/run.py --report thinc9

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis *.egg-info
