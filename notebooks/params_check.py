# ---
# jupyter:
#   jupytext:
#     notebook_metadata_filter: -jupytext.text_representation.jupytext_version,-jupytext.text_representation.format_version
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Parameter check: all of params.yaml, before any stage runs
#
# DVC deletes a stage's outputs just before it runs the stage, so a typo in `params.yaml` that only the
# training notebook would notice used to cost the previous good models and metrics. This first stage checks
# every value of the file (`topo2vec_lib.schema.check_params`: sections, keys, types, ranges, rules across keys,
# models the experiments name; and every model's typed configuration with its device), and every other stage
# depends on its output. A bad value fails here, and no other stage's outputs are touched.
#
# Its output, `reports/params_check.json`, is the same for every valid file (it lists the sections checked, not
# their values), so a change of one section re-runs only the stages that read it.

# %% tags=["parameters"]
params_path = None                      # None: the project's params.yaml
out_path = "reports/params_check.json"
output_root = None                      # None: scratch/params_check/ unless run by the pipeline; "." writes its output

# %%
from topo2vec_lib.models import model_config
from topo2vec_lib.models.trainer import resolve_device
from topo2vec_lib.params import model_parameters, notebook_outputs, project_root, resolve_params_path
from topo2vec_lib.schema import check_params
from topo2vec_lib.storage import write_json
from topo2vec_lib.tiling import check_scheduler

path = resolve_params_path(params_path).resolve()
params = check_params(path)                       # every section but train/models
models = {}
for name in params["models"]:                     # train + models.<name>: the typed configurations
    try:
        config, _ = model_parameters(name, path)
        cfg = model_config(config, complete=True)
        resolve_device(cfg.device)                # device: cuda on a machine without CUDA fails here
    except ValueError as err:
        raise ValueError(f"{path}: models.{name} (over the train section): {err}") from None
    models[name] = cfg.KIND
address = params["dask"]["scheduler"]
if address and "://" in address:                  # an existing cluster must answer before any stage starts
    check_scheduler(address)
print(f"{path}: every section is valid; models {models}")

# %%
root = project_root()
notebook_outputs(globals(), "params_check", ["out_path"])
write_json(out_path if root is None else root / out_path,
           {"params": path.name, "sections": sorted(params), "valid": True})
