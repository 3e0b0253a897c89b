# Set-up and the two everyday commands. Everything installs into .venv on first use.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
ANCHORS ?= ../shared/anchors
export TF_CPP_MIN_LOG_LEVEL := 3

.PHONY: install demo test lint

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev,peers]'
	touch $@

install: $(BIN)/.installed

# The main job, offline: inspect the real T5X checkpoint and rank-classify with it.
demo: install
	$(BIN)/prompt-transfer checkpoint-info $(ANCHORS)/t5x_checkpoints/test_t5_1_1_tiny/checkpoint_3
	$(BIN)/prompt-transfer score --size tiny \
	  --checkpoint $(ANCHORS)/t5x_checkpoints/test_t5_1_1_tiny/checkpoint_3 \
	  --vocab $(ANCHORS)/t5_vocab/sentencepiece.model \
	  --inputs "sst2 sentence: a gripping, beautifully acted film" \
	  --targets positive negative

test: install
	$(BIN)/ruff check .
	$(BIN)/python -m pytest -q

lint: install
	$(BIN)/ruff check . && $(BIN)/ruff format --check .
