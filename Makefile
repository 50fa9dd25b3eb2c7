# Two commands on a fresh machine (only Python 3.11 needed):
#   make repro   -> virtual environment, install, `dvc repro` of the whole study on the synthetic default
#   make test    -> virtual environment, install, the test suite (CI runs exactly this via .ci/run)
PYTHON ?= python3.11
# the synthetic world's routing blocks on disk (topo2vec_lib/synthetic.py): re-runs and overlapping windows read them
# back (keyed by seed, resolution, world parameters and code; git-ignored; delete any time)
export TOPO2VEC_CACHE_DIR ?= $(CURDIR)/.cache
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup repro test lint bench lab clean-env ablations ablations-estimate

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	# the CPU torch wheel first: an unpinned torch would pull a multi-GB CUDA build
	$(BIN)/python -m pip install --disable-pip-version-check -q torch==2.13.0
	$(BIN)/python -m pip install --disable-pip-version-check -q -e '.[dev]'
	# the project's JupyterLab settings, for `jupyter lab` run from this venv (make lab passes them itself)
	mkdir -p $(VENV)/share/jupyter/lab/settings && cp .jupyter/lab/settings/overrides.json $(VENV)/share/jupyter/lab/settings/
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
	for b in sampler training regional tiled_labels embed_field; do PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/$$b.py || exit 1; done
	# the scale benchmark keeps sizes measured before (big ones run once): benchmarks/scale.py --sizes 352 paper
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/python benchmarks/scale.py

# Issue 15's ablation families (notebooks/ablations.py; params.yaml `ablations`): SIZE=full (about 75-80 min alone on the
# 2-core machine; the notebook prints its estimate first) or SIZE=tiny (two points per family, minutes). Not part
# of `dvc repro`; trained models and probe results are cached in models/ablations/, so a re-run does only what is new.
SIZE ?= full
ablations: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro labels
	PATH=$(abspath $(BIN)):$$PATH notebooks/run.sh ablations ablations -p params_path params.yaml -p size $(SIZE)

ablations-estimate: setup
	PATH=$(abspath $(BIN)):$$PATH $(BIN)/dvc repro labels
	PATH=$(abspath $(BIN)):$$PATH notebooks/run.sh ablations ablations_estimate -p params_path params.yaml \
	  -p size $(SIZE) -p estimate_only True

# JupyterLab with the project's settings (.jupyter/lab/settings/overrides.json: a double-click opens notebooks/*.py
# as notebooks, through jupytext) and its workspace state in .jupyter/lab/workspaces (git-ignored): nothing is
# written to the user's home. `jupyter lab` alone works too once setup copied the settings into the venv.
LAB_SETTINGS := $(CURDIR)/.jupyter/lab/settings
lab: setup
	PATH=$(abspath $(BIN)):$$PATH JUPYTERLAB_WORKSPACES_DIR=$(CURDIR)/.jupyter/lab/workspaces \
	  $(BIN)/jupyter lab --ServerApp.root_dir=$(CURDIR) --LabApp.app_settings_dir=$(LAB_SETTINGS)

clean-env:
	rm -rf $(VENV)
