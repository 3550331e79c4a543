# Two commands on a fresh machine: `make demo` and `make test` (each creates .venv first if needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# The CPU build of torch that this project's machines keep on local disk. Elsewhere, any torch>=2.4
# works: `make test TORCH='torch>=2.4'`.
TORCH ?= torch==2.13.0

.PHONY: demo test lint bench clean fuzz

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet "$(TORCH)"
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/cnnkit demo --overwrite

test: $(VENV)/.installed
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/python -m pytest

# Mutation fuzzing of the Keras reader, more files than `make test` (500): KERAS_FUZZ_COUNT, KERAS_FUZZ_SEED.
KERAS_FUZZ_COUNT ?= 5000
KERAS_FUZZ_SEED ?= 17
fuzz: $(VENV)/.installed
	KERAS_FUZZ_COUNT=$(KERAS_FUZZ_COUNT) KERAS_FUZZ_SEED=$(KERAS_FUZZ_SEED) $(BIN)/python -m pytest \
		tests/keras/test_fuzz.py -p no:cacheprovider -q -s

bench: $(VENV)/.installed
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
