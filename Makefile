# Two commands on a fresh machine (only Python 3.11 needed):
#   make repro   -> virtual environment, install, `dvc repro` of the whole study on the synthetic default
#   make test    -> virtual environment, install, the test suite (CI runs exactly this via .ci/run)
PYTHON ?= python3.11
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup repro test lint bench lab clean-env

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# the CPU torch wheel first: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	touch $(STAMP)

setup: $(STAMP)

repro: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro

lint: setup
	$(BIN)/ruff check topo2vec_lib tests benchmarks notebooks scripts
	$(BIN)/mypy

test: lint
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python -m pytest -q

bench: setup
	for b in sampler training regional tiled_labels; do PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/$$b.py || exit 1; done
	# the scale benchmark keeps sizes measured before (big ones run once): benchmarks/scale.py --sizes 352 paper
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/scale.py

lab: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/jupyter lab

clean-env:
	rm -rf $(VENV)
