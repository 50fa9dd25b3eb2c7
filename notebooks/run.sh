#!/usr/bin/env bash
# Run one jupytext notebook source through papermill, the way every DVC stage does:
#   notebooks/run.sh SOURCE OUTPUT_NAME [papermill options, e.g. -p params_path params.yaml]
# writes the executed notebook to reports/notebooks/OUTPUT_NAME.ipynb (a stage output, never a dependency).
set -euo pipefail
src="$1"; name="$2"; shift 2
mkdir -p reports/notebooks
jupytext --to ipynb --set-kernel python3 "notebooks/${src}.py" -o - \
  | papermill - "reports/notebooks/${name}.ipynb" -k python3 --log-output --no-progress-bar "$@"
