"""The params.yaml schema: every study section, its keys and the check of each value, in one table.

:data:`SECTION_CHECKS` maps each notebook section (``data``, ``labels``, ``scale_selection``, ``exp1`` ...
``exp4``) to ``{key: check}`` (:mod:`topo2vec_lib.checks`: types and ranges, e.g. ``line_spacing_m > 0``,
``seed`` an integer >= 0, ``classes`` a *list* of known classes); :data:`SECTION_RULES` adds the checks across
keys (a geotiff source needs an existing file, both windows must lie in their paper polygons, a probe's
``reference`` must be one of its ``models``). The ``train`` section and ``models.<name>`` are checked by their
typed configurations (:mod:`topo2vec_lib.models.config`), which import torch, so the ``params_check`` stage
runs them beside :func:`check_params`.

Two users, one table:

- every notebook reads its section with :func:`notebook_section` (``params.notebook_parameters`` plus these
  checks): a bad value fails before the notebook does any work, whether it came from params.yaml or from
  ``papermill -p``; the checks only validate, so valid values reach the notebook exactly as written;
- the first DVC stage, ``params_check`` (``notebooks/params_check.py``), runs :func:`check_params` over the whole
  file, on which every other stage depends: DVC deletes a stage's outputs just before it runs the stage, so a typo
  in params.yaml fails there and no model, metric or table of a previous good run is removed.

A new parameter gets its row here (and a row in ``tests/test_bad_inputs.py``); a new section gets an entry in
:data:`SECTION_CHECKS` (or in :data:`CONFIG_SECTIONS`), else ``params_check`` refuses the file.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

from topo2vec_lib import checks as C
from topo2vec_lib.grid import check_crs
from topo2vec_lib.labels import CLASSES, LABEL_SOURCES, RULE_CHECKS, check_rule_order, rule_params
from topo2vec_lib.params import load_params, notebook_parameters, resolve_params_path, section
from topo2vec_lib.regions import regions_from, study_windows
from topo2vec_lib.terrain import SOURCES

TOP_LEVEL_CHECKS: dict[str, C.Check] = {"seed": C.integer(0)}
"""Keys at the top of params.yaml."""

CONFIG_SECTIONS = ("train", "models")
"""Sections checked by the model configurations (``models.model_config(..., complete=True)``), not here."""


def class_name(key: str, v: Any) -> str:
    """Check: the name of a label class of the registry (:data:`topo2vec_lib.labels.CLASSES`)."""
    if not isinstance(v, str) or v not in CLASSES:
        raise ValueError(f"{key}={v!r}: expected a label class, one of {sorted(CLASSES)}")
    return v


def crs_check(key: str, v: Any) -> str:
    """Check: a projected CRS in metres (``grid.check_crs``)."""
    if not isinstance(v, str):
        raise ValueError(f"{key}={v!r}: expected a CRS string such as 'EPSG:3035'")
    try:
        return check_crs(v)
    except ValueError as err:
        raise ValueError(f"{key}: {err}") from None


def crs_or_auto(key: str, v: Any) -> str:
    """Check: ``auto`` or a projected CRS in metres."""
    return v if v == "auto" else crs_check(key, v)


def regions_check(key: str, v: Any) -> dict:
    """Check: the study's regions (:func:`topo2vec_lib.regions.regions_from`: train and test, each a box or polygon
    file with a window centre and size)."""
    regions_from(v, key)
    return v


def tile_check(key: str, v: Any) -> int:
    """Check: a tile side in pixels, a multiple of 512 (the zarr chunk) from 512 to 16384."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 512 or v > 16384 or v % 512:
        raise ValueError(f"{key}={v!r}: expected a multiple of 512 from 512 to 16384 (pixels a tile side; zarr "
                         f"chunks are 512 px)")
    return v


def scheduler_check(key: str, v: Any) -> str:
    """Check: ``sync``, ``processes`` or a dask.distributed scheduler address (``tcp://host:port``, ...)."""
    if not isinstance(v, str) or not (v in ("sync", "processes") or "://" in v):
        raise ValueError(f"{key}={v!r}: expected null (a local cluster of n_workers processes), 'sync' (in the "
                         f"notebook's process) or a scheduler address such as 'tcp://10.0.0.5:8786'")
    return v


def even_count(key: str, v: Any) -> int:
    """Check: an even integer >= 2 (balanced sets: half positives, half negatives)."""
    if isinstance(v, bool) or not isinstance(v, int) or v < 2 or v % 2:
        raise ValueError(f"{key}={v!r}: expected an even integer >= 2 (half positives, half negatives)")
    return v


def seeds_check(key: str, v: Any) -> int | list[int]:
    """Check: a count of seeds >= 1, or a non-empty list of distinct integer seeds >= 0."""
    if isinstance(v, list):
        return C.list_of(C.integer(0), "integer seeds", distinct=True)(key, v)
    return C.integer(1)(key, v)


def probe_scale(key: str, v: Any) -> float | str:
    """Check: a probe pixel size in m/px, or ``"selected"`` (per class, from the scale selection)."""
    if v == "selected":
        return v
    try:
        return C.number()(key, v)
    except ValueError:
        raise ValueError(f"{key}={v!r}: expected a positive pixel size in m/px or 'selected'") from None


def _path_or_paths(key: str, v: Any) -> str | list[str]:
    if isinstance(v, list):
        return C.list_of(C.text(nonempty=True), "file paths")(key, v)
    return C.text(nonempty=True)(key, v)


CLASS_LIST = C.list_of(class_name, "label class names", distinct=True)
MODEL_NAME = C.text(nonempty=True)
MODEL_LIST = C.list_of(MODEL_NAME, "model names (keys of `models`)", distinct=True)
PIXEL_SIZES = C.list_of(C.number(), "pixel sizes in m/px", distinct=True)

_PROBE: dict[str, C.Check] = {
    "classes": CLASS_LIST, "n_train": even_count, "n_test": even_count, "seeds": seeds_check,
    "models": MODEL_LIST, "res_m": probe_scale, "min_neg_distance_m": C.number(0.0, strict=False),
    "svm_C": C.list_of(C.number(), "positive SVM C values", distinct=True), "reference": MODEL_NAME,
}

ABLATION_FAMILIES = ("length", "scale", "k", "window", "label_noise")
"""The families of ``topo2vec_lib.ablations.FAMILIES`` (named here so reading params.yaml never imports the runner;
tests/test_ablations.py checks they agree)."""


def _power_of_two(key: str, v: Any) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 1 or v & (v - 1):
        raise ValueError(f"{key}={v!r}: expected a power of two >= 1 (1, 2, 4, 8, ...)")
    return v


def _noise_point(key: str, v: Any) -> list:
    if not isinstance(v, (list, tuple)) or len(v) != 2:
        raise ValueError(f"{key}={v!r}: expected [jitter_sigma_m, drop_fraction]")
    C.number(0.0, strict=False)(f"{key}[0]", v[0])
    C.number(0.0, strict=False, below=1.0)(f"{key}[1]", v[1])
    return list(v)


_ABLATION_FAMILY_KEYS: dict[str, dict[str, C.Check]] = {
    "length": {"models": MODEL_LIST, "images": C.list_of(C.integer(1), "image counts", distinct=True)},
    "scale": {"models": MODEL_LIST, "probe_res_m": PIXEL_SIZES, "multiscale": C.mapping(values=PIXEL_SIZES)},
    "k": {"base": MODEL_NAME, "k": C.list_of(_power_of_two, "fractal factors", distinct=True),
          "input_res_m": C.number(), "equal": C.choice("flops", "images")},
    "window": {"models": MODEL_LIST, "size_km": C.list_of(C.number(), "window sizes in km", distinct=True)},
    "label_noise": {"models": MODEL_LIST,
                    "points": C.list_of(_noise_point, "[jitter_sigma_m, drop_fraction] points")},
}
_ABLATION_TOP: dict[str, C.Check] = {
    "size": C.choice("full", "tiny"),
    "families": C.list_of(C.choice(*ABLATION_FAMILIES), "ablation families", distinct=True),
    "reference": MODEL_NAME, "classes": CLASS_LIST, "seeds": C.integer(1), "train_seeds": C.integer(1),
    "res_m": C.number(), "images_scale": C.number(), "jobs": C.integer(1),
}
ABLATIONS: dict[str, C.Check] = {
    **_ABLATION_TOP,
    **{family: C.mapping(keys=keys, required=True) for family, keys in _ABLATION_FAMILY_KEYS.items()},
    "tiny": C.mapping(keys={**_ABLATION_TOP, **{f: C.mapping(keys=k) for f, k in _ABLATION_FAMILY_KEYS.items()}}),
}
"""The ``ablations`` section (notebooks/ablations.py, ``make ablations``); ``tiny`` overrides any of its keys."""

SECTION_CHECKS: dict[str, dict[str, C.Check]] = {
    "data": {
        "source": C.choice(*SOURCES), "crs": crs_or_auto, "res_m": C.number(), "regions": regions_check,
        "tile_px": tile_check, "geotiff_path": C.text(), "raw_dir": C.text(nonempty=True),
    },
    "dask": {
        "scheduler": C.optional(scheduler_check), "n_workers": C.optional(C.integer(1)), "scratch_dir": C.text(),
    },
    "labels": {
        "source": C.choice(*LABEL_SOURCES),
        "osm": C.mapping(keys={"endpoint": C.text(nonempty=True), "cache_dir": C.text(nonempty=True),
                               "tile_deg": C.number(0.0, maximum=180.0), "delay_s": C.number(0.0, strict=False),
                               "timeout_s": C.integer(1)}),
        "label_files": C.mapping(values=_path_or_paths),
        **RULE_CHECKS,
        "min_train_exp1": C.integer(0), "min_test_exp1": C.integer(0), "min_train_exp2": C.integer(0),
        "min_test_exp2": C.integer(0), "cnn_train_per_class": C.integer(0), "tile_px": C.integer(3),
        "jitter_sigma_m": C.number(0.0, strict=False), "drop_fraction": C.number(0.0, strict=False, below=1.0),
    },
    "heldout": {"test_pairs": C.integer(1)},
    "scale_selection": {
        "classes": CLASS_LIST, "scales_m": PIXEL_SIZES, "n": even_count, "seeds": seeds_check,
        "epochs": C.integer(1), "lr": C.number(), "min_neg_distance_m": C.number(0.0, strict=False),
    },
    "exp1": _PROBE,
    "exp2": _PROBE,
    "ablations": ABLATIONS,
    "exp3": {
        "model": MODEL_NAME, "classes": CLASS_LIST, "box_lonlat": C.optional(C.lonlat_box), "box_km": C.number(),
        "scales_m": PIXEL_SIZES, "stride_m": C.number(), "n_train": even_count, "upsample_finer": C.boolean,
    },
    "exp4": {
        "model": MODEL_NAME, "baselines": C.list_of(MODEL_NAME, "model names", min_len=0, distinct=True),
        "query_lonlat": C.optional(C.list_of(C.lonlat, "[lon, lat] places")), "query_class": class_name,
        "n_queries": C.integer(1), "k": C.integer(1), "res_m": C.number(), "box_lonlat": C.optional(C.lonlat_box),
        "stride_m": C.number(), "exclude_radius_m": C.optional(C.number(0.0, strict=False)),
        "classes": CLASS_LIST, "per_class": C.integer(1), "n_random": C.integer(1), "pk_queries": C.integer(1),
        "pk_k": C.integer(1), "repeats": C.integer(1),
    },
}
"""Section -> {key: check}: the keys each notebook section must state and what each value may be."""


# ---------------------------------------------------------------- rules across the keys of a section
def _data_rule(v: Mapping[str, Any]) -> None:
    if v["source"] == "geotiff":
        if not v["geotiff_path"]:
            raise ValueError("source='geotiff' needs geotiff_path: a local GeoTIFF/VRT covering both windows")
        if not Path(v["geotiff_path"]).is_file():
            raise ValueError(f"geotiff_path={v['geotiff_path']!r} is not an existing file")
    study_windows(v["regions"], v["crs"], v["res_m"], key="regions")


def _labels_rule(v: Mapping[str, Any]) -> None:
    check_rule_order(v)
    unknown = sorted(set(v["label_files"]) - set(CLASSES))
    if unknown:
        raise ValueError(f"label_files names unknown class(es) {unknown}; valid: {sorted(CLASSES)}")
    if v["source"] == "files" and not v["label_files"]:
        raise ValueError("source='files' needs label_files: {class: path} of GeoJSON, CSV or Parquet points")


def _probe_rule(v: Mapping[str, Any]) -> None:
    if v["reference"] not in v["models"]:
        raise ValueError(f"reference={v['reference']!r} is not one of models={v['models']}")


def labels_tile_rule(labels: Mapping[str, Any], res_m: float) -> None:
    """``labels.tile_px`` must hold every label rule's reach (:func:`tiled_labels.rule_reach_px`) at ``res_m``."""
    from topo2vec_lib.tiled_labels import rule_reach_px
    from topo2vec_lib.tiling import check_reach

    rules = rule_params(**{k: labels[k] for k in RULE_CHECKS})
    try:
        check_reach(int(labels["tile_px"]), rule_reach_px(float(res_m), rules, CLASSES))
    except ValueError as err:
        raise ValueError(f"labels.{err} (at data.res_m={res_m:g})") from None


SECTION_RULES: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "data": _data_rule, "labels": _labels_rule, "exp1": _probe_rule, "exp2": _probe_rule,
}
"""Section -> a check across its (already checked) keys; raises ValueError."""


def _model_refs(name: str, v: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(key, model name) pairs a section refers to (they must be keys of `models`)."""
    if name in ("exp1", "exp2"):
        return [("models", m) for m in v["models"]]
    if name == "exp3":
        return [("model", v["model"])]
    if name == "exp4":
        return [("model", v["model"])] + [("baselines", m) for m in v["baselines"]]
    if name == "ablations":
        refs = [("reference", v["reference"])]
        for block, where in ((v, ""), (v.get("tiny", {}), "tiny.")):
            for family in ABLATION_FAMILIES:
                f = block.get(family, {})
                refs += [(f"{where}{family}.models", m) for m in f.get("models", [])]
                refs += [(f"{where}{family}.multiscale", m) for m in f.get("multiscale", {}) or {}]
                if "base" in f:
                    refs.append((f"{where}{family}.base", f["base"]))
        return refs
    return []


# ---------------------------------------------------------------- users
def check_section(name: str, values: Mapping[str, Any], where: str = "") -> dict:
    """Check the keys of section ``name`` that ``values`` holds and, when it holds them all, the rule across
    them; returns ``values`` unchanged (as a dict). ValueError ``"<where><section>.<key>=...: expected ..."``."""
    if name not in SECTION_CHECKS:
        raise ValueError(f"{where}no schema for section {name!r}; sections: {sorted(SECTION_CHECKS)}")
    schema = SECTION_CHECKS[name]
    for key, check in schema.items():
        if key in values:
            try:
                check(key, values[key])
            except ValueError as err:
                raise ValueError(f"{where}{name}.{err}") from None
    if set(schema) <= set(values) and name in SECTION_RULES:
        try:
            SECTION_RULES[name](values)
        except ValueError as err:
            raise ValueError(f"{where}section {name!r}: {err}") from None
    return dict(values)


def _validating(check: C.Check, prefix: str = "") -> C.Check:
    """``check`` run for validation only (errors name ``<prefix><key>``): the value is returned as given, so
    valid runs stay byte-identical."""
    def run(key: str, value: Any) -> Any:
        check(prefix + key, value)
        return value
    return run


def notebook_section(namespace: MutableMapping[str, Any], name: str, keys: Sequence[str] | None = None, *,
                     params_path: str | os.PathLike | None = None,
                     local: Mapping[str, C.Check] | None = None) -> dict:
    """:func:`topo2vec_lib.params.notebook_parameters` for section ``name`` with its checks from
    :data:`SECTION_CHECKS` (``keys``: default every key of the section, plus ``seed``) and its rule; ``local``
    checks the notebook's own parameters (paths, chunk sizes) the same way. Returns the section's values."""
    if name not in SECTION_CHECKS:
        raise ValueError(f"no schema for section {name!r}; sections: {sorted(SECTION_CHECKS)}")
    keys = [*SECTION_CHECKS[name], *TOP_LEVEL_CHECKS] if keys is None else list(keys)
    checks = {**{k: _validating(c, f"{name}.") for k, c in SECTION_CHECKS[name].items()},
              **{k: _validating(c) for k, c in TOP_LEVEL_CHECKS.items()}}
    values = notebook_parameters(namespace, name, keys, params_path=params_path, checks=checks)
    check_section(name, values)
    for key, check in (local or {}).items():
        try:
            check(key, namespace.get(key))
        except ValueError as err:
            raise ValueError(f"notebook parameter {err}") from None
    return values


def check_params(params_path: str | os.PathLike | None = None) -> dict:
    """Check a whole params.yaml except its configuration sections (:data:`CONFIG_SECTIONS`); returns the
    parsed file. ValueError naming the file, section and key for: unknown or missing sections, unknown or
    missing keys, bad values, broken rules, and sections that name a model ``models`` lacks."""
    path = resolve_params_path(params_path)
    params = load_params(path)
    where = f"{path}: "
    known = [*TOP_LEVEL_CHECKS, *SECTION_CHECKS, *CONFIG_SECTIONS]
    unknown = sorted(map(str, set(params) - set(known)))
    if unknown:
        raise ValueError(f"{where}unknown section(s) {unknown}; valid: {known} (a new section needs its schema "
                         f"in topo2vec_lib/schema.py)")
    missing = [k for k in known if k not in params]
    if missing:
        raise ValueError(f"{where}lacks section(s) {missing}")
    for key, check in TOP_LEVEL_CHECKS.items():
        try:
            check(key, params[key])
        except ValueError as err:
            raise ValueError(f"{where}{err}") from None
    models = section(params, "models", path)
    for name, schema in SECTION_CHECKS.items():
        values = section(params, name, path)
        bad = sorted(set(values) - set(schema))
        if bad:
            raise ValueError(f"{where}unknown key(s) {bad} in section {name!r}; valid: {sorted(schema)}")
        lacking = sorted(set(schema) - set(values))
        if lacking:
            raise ValueError(f"{where}section {name!r} lacks key(s) {lacking}: params.yaml states every study value")
        check_section(name, values, where)
        if name == "labels":
            try:
                labels_tile_rule(values, section(params, "data", path)["res_m"])
            except ValueError as err:
                raise ValueError(f"{where}section 'labels': {err}") from None
        for key, model in _model_refs(name, values):
            if model not in models:
                raise ValueError(f"{where}{name}.{key} names model {model!r}, which is not in `models` "
                                 f"({sorted(models)})")
    return params
