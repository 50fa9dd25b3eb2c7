#!/usr/bin/env bash
# Run one jupytext notebook source through papermill, the way every DVC stage does:
#   notebooks/run.sh SOURCE OUTPUT_NAME [papermill options, e.g. -p params_path params.yaml]
# writes the executed notebook to reports/notebooks/OUTPUT_NAME.ipynb (a stage output, never a dependency).
set -euo pipefail
# the pipeline writes the pipeline's outputs; a notebook run any other way writes under scratch/<notebook>/
# (topo2vec_lib.params.notebook_outputs)
export TOPO2VEC_OUTPUT_ROOT=.
src="$1"; name="$2"; shift 2
mkdir -p reports/notebooks
jupytext --to ipynb --set-kernel python3 "notebooks/${src}.py" -o - \
  | papermill - "reports/notebooks/${name}.ipynb" -k python3 --log-output --no-progress-bar "$@"
