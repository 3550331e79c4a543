# Two commands on a fresh machine: `make demo` and `make test` (each creates .venv first if needed).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch and the torchvision built for it (the model-zoo tests of masked() need torchvision and
# segmentation-models-pytorch; torchvision's compiled ops need the matching full torch build, which this
# project's machines keep on local disk: a CUDA build, ~6 GB in the venv, run on the CPU). Elsewhere any
# matching pair works: `make test TORCH='torch torchvision'`.
TORCH ?= torch==2.14.1 torchvision==0.29.1
# The tf-keras oracle of tests/keras (TensorFlow's Keras 2 writes the model files cnnkit must read): its own
# venv, since TensorFlow's protobuf and numpy pins do not mix with torch's. Only the tests run it, in a child
# process; cnnkit never imports it. About 2.2 GB; needs the network once.
TF_VENV ?= .venv-tf
TF_KERAS ?= 'tensorflow-cpu==2.21.*' 'tf-keras==2.21.*'

.PHONY: demo test lint bench clean fuzz

$(VENV)/.installed: pyproject.toml Makefile
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet $(TORCH)
	$(BIN)/python -m pip install --quiet -e ".[test]"
	touch $@

demo: $(VENV)/.installed
	$(BIN)/cnnkit demo --overwrite

$(TF_VENV)/.installed:
	@# an existing venv (TF_VENV=...) is used as it is when it already imports tf_keras: never rebuilt
	if ! $(TF_VENV)/bin/python -c "import tf_keras" 2>/dev/null; then \
	    { [ -x $(TF_VENV)/bin/python ] || $(PYTHON) -m venv $(TF_VENV); } && \
	    $(TF_VENV)/bin/python -m pip install --quiet $(TF_KERAS) || { echo "make: could not install the tf-keras \
	test oracle ($(TF_KERAS)) into $(TF_VENV); the tests in tests/keras that compare with tf-keras need it. \
	Check the network (PyPI), or point at a venv that has it: make test TF_VENV=/path/to/venv" >&2; exit 1; }; \
	fi
	touch $@

test: $(VENV)/.installed $(TF_VENV)/.installed
	$(BIN)/python -m ruff check src tests benchmarks
	$(BIN)/lint-imports --no-cache  # the floors of docs/architecture.md ([tool.importlinter] in pyproject.toml)
	CNNKIT_TF_KERAS_PYTHON=$(abspath $(TF_VENV))/bin/python $(BIN)/python -m pytest

# Mutation fuzzing of the Keras reader and of cnnkit predict's raster readers, more files than `make test` (500 and
# 320): KERAS_FUZZ_COUNT, KERAS_FUZZ_SEED, RASTER_FUZZ_COUNT, RASTER_FUZZ_SEED.
KERAS_FUZZ_COUNT ?= 5000
KERAS_FUZZ_SEED ?= 17
RASTER_FUZZ_COUNT ?= 4000
RASTER_FUZZ_SEED ?= 27
fuzz: $(VENV)/.installed
	KERAS_FUZZ_COUNT=$(KERAS_FUZZ_COUNT) KERAS_FUZZ_SEED=$(KERAS_FUZZ_SEED) $(BIN)/python -m pytest \
		tests/keras/test_fuzz.py -p no:cacheprovider -q -s
	RASTER_FUZZ_COUNT=$(RASTER_FUZZ_COUNT) RASTER_FUZZ_SEED=$(RASTER_FUZZ_SEED) $(BIN)/python -m pytest \
		tests/rasters/test_fuzz.py -p no:cacheprovider -q -s

bench: $(VENV)/.installed
	$(BIN)/python -m pip install --quiet -e ".[bench]"
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .venv-tf .pytest_cache .hypothesis  # the default oracle venv only, never a TF_VENV of yours
