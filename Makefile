# Two commands on a fresh machine: `make demo` and `make test` (each creates .venv first if needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and the torchvision built for it (the model-zoo tests of masked() need torchvision and
# segmentation-models-pytorch; torchvision's compiled ops need the matching full torch build, which this
# project's machines keep on local disk: a CUDA build, ~6 GB in the venv, run on the CPU). Elsewhere any
# matching pair works: `make test TORCH='torch torchvision'`.
TORCH ?= torch==2.14.1 torchvision==0.29.1

.PHONY: demo test lint bench clean fuzz

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
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
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .hypothesis
