"""The study's parameters: ``params.yaml`` is the one place study values live; every notebook reads it here.

A notebook's ``parameters`` cell declares its study parameters as ``None`` and calls
``notebook_parameters(globals(), "<section>", [keys])``. Each key is filled from the ``params.yaml`` section
(``seed`` from the top level) unless the notebook or ``papermill -p`` gave a value. A key the section lacks,
a key the section has but the notebook does not read (a typo), a missing ``params.yaml``, a section that is
not a mapping, and duplicate YAML keys are errors before any work starts. The project root is found from
any working directory (the nearest folder up holding ``dvc.yaml`` and ``params.yaml``), and the notebook
runs there, so it works the same from ``dvc repro`` (papermill) and from JupyterLab (kernel in ``notebooks/``).

**Where a notebook writes** (:func:`notebook_outputs`): run by the pipeline (``notebooks/run.sh``, which every DVC
stage calls, exports ``TOPO2VEC_OUTPUT_ROOT=.``), a notebook writes its outputs where ``dvc.yaml`` expects them.
Run any other way (cell by cell in JupyterLab, ``papermill`` by hand, ``python notebooks/x.py``) it reads the same
params and the same pipeline data but writes its relative output paths under ``scratch/<notebook>/`` in the
project (git-ignored), so trying a parameter never overwrites a DVC output. A notebook's ``output_root``
parameter (or ``$TOPO2VEC_OUTPUT_ROOT``) chooses: ``"."`` (or ``"pipeline"``) writes the pipeline's outputs, any
other folder writes there; absolute output paths given to a notebook are always kept.
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, MutableMapping, Sequence
from pathlib import Path
from typing import Any

import yaml

ROOT_MARKERS = ("dvc.yaml", "params.yaml")
TOP_LEVEL = ("seed",)
OUTPUT_ROOT_ENV = "TOPO2VEC_OUTPUT_ROOT"
"""Set to ``.`` by ``notebooks/run.sh``: notebooks run by the pipeline write the pipeline's outputs."""
SCRATCH = "scratch"
"""Folder (in the project root) of the outputs of notebooks run by hand: ``scratch/<notebook>/``."""


def project_root(start: str | os.PathLike | None = None) -> Path | None:
    """The nearest folder at or above ``start`` (default: the working directory) holding ``dvc.yaml`` and
    ``params.yaml``; None when there is none."""
    here = Path(start or Path.cwd()).resolve()
    for folder in (here, *here.parents):
        if all((folder / m).is_file() for m in ROOT_MARKERS):
            return folder
    return None


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML safe loader that refuses duplicate keys (plain YAML keeps the last one silently)."""


def _mapping_without_duplicates(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, int] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r} (first at line {seen[key] + 1}, again at line "
                f"{key_node.start_mark.line + 1})", key_node.start_mark)
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _mapping_without_duplicates)


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    """Read a ``params.yaml`` (a mapping of sections); FileNotFoundError / ValueError naming the file otherwise."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"params file {path} does not exist (give the study's params.yaml; a mistyped "
                                f"path never falls back to defaults)")
    try:
        with open(path) as f:
            params = yaml.load(f, Loader=_UniqueKeyLoader)  # noqa: S506 (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ValueError(f"{path} is not valid YAML: {err}") from None
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a mapping of parameter sections, got {type(params).__name__}")
    return params


def section(params: Mapping, name: str, path: str | os.PathLike = "params.yaml") -> dict:
    """The section ``name`` of ``params`` as a dict; ValueError when it is missing or not a mapping."""
    if name not in params:
        raise ValueError(f"{path} has no section {name!r}; it has {sorted(params)}")
    value = params[name]
    if not isinstance(value, Mapping):
        raise ValueError(f"{path}: section {name!r} must be a mapping of keys to values, got "
                         f"{type(value).__name__} {value!r}")
    return dict(value)


def resolve_params_path(params_path: str | os.PathLike | None) -> Path:
    """``params_path`` as given, or the project root's ``params.yaml`` when None."""
    if params_path is not None:
        return Path(params_path)
    root = project_root()
    if root is None:
        raise FileNotFoundError(f"no params.yaml given and none found in {Path.cwd()} or a folder above it "
                                f"(with dvc.yaml); pass params_path")
    return root / "params.yaml"


def notebook_parameters(namespace: MutableMapping[str, Any], section_name: str, keys: Sequence[str], *,
                        params_path: str | os.PathLike | None = None,
                        checks: Mapping[str, Callable[[str, Any], Any]] | None = None) -> dict:
    """Fill a notebook's study parameters ``keys`` (its ``globals()``) from ``params.yaml``; return them.

    Moves the working directory to the project root (when one is found), so relative paths such as
    ``data/terrain`` resolve the same from ``dvc repro`` and from JupyterLab. ``params_path``: default
    ``namespace["params_path"]``, else the project's ``params.yaml``. A value already in ``namespace`` (not
    None) wins over the file. ``checks``: ``{key: check(key, value) -> value}`` run on the final values
    (e.g. range checks, :mod:`topo2vec_lib.schema`), so bad values fail before any work; the error says whether
    the value came from the file or was given to the notebook.
    """
    if params_path is None:
        params_path = namespace.get("params_path")
    root = project_root()
    path = resolve_params_path(params_path).resolve() if params_path is not None else resolve_params_path(None)
    if root is not None:
        os.chdir(root)
    params = load_params(path)
    given = section(params, section_name, path)
    wanted = [k for k in keys if k not in TOP_LEVEL]
    unknown = sorted(set(given) - set(wanted))
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown} in section {section_name!r}; valid: {sorted(wanted)}")
    resolved: dict[str, Any] = {}
    for key in keys:
        value = namespace.get(key)
        origin = "given to the notebook (papermill -p or the notebook itself)"
        if value is None:
            source = params if key in TOP_LEVEL else given
            if key not in source:
                where = "at the top level" if key in TOP_LEVEL else f"in section {section_name!r}"
                raise ValueError(f"{path} lacks {key!r} {where}: params.yaml states every study value "
                                 f"(null where the notebook documents what null means)")
            value = source[key]
            origin = f"in {path}" + ("" if key in TOP_LEVEL else f" section {section_name!r}")
        if checks and key in checks:
            try:
                value = checks[key](key, value)
            except ValueError as err:
                raise ValueError(f"{err} ({origin})") from None
        resolved[key] = namespace[key] = value
    namespace["params_path"] = str(path)
    return resolved


def model_parameters(model: str, params_path: str | os.PathLike | None = None,
                     overrides: Mapping[str, Any] | None = None) -> tuple[dict, int]:
    """The configuration of ``models.<model>`` merged over the ``train`` section (model keys win, then
    ``overrides``), with ``name = model``, and the study seed. Moves to the project root like
    :func:`notebook_parameters`."""
    root = project_root()
    path = resolve_params_path(params_path).resolve()
    if root is not None:
        os.chdir(root)
    params = load_params(path)
    models = section(params, "models", path)
    if model not in models:
        raise ValueError(f"model {model!r} is not in {path} `models`; known: {sorted(models)}")
    own = models[model]
    if not isinstance(own, Mapping):
        raise ValueError(f"{path}: models.{model} must be a mapping of keys to values, got {own!r}")
    if "seed" not in params:
        raise ValueError(f"{path} lacks the top-level 'seed'")
    config = {**section(params, "train", path), **own, **dict(overrides or {}), "name": model}
    return config, params["seed"]


def output_root(namespace: Mapping[str, Any], notebook: str) -> Path:
    """Where notebook ``notebook`` writes its relative output paths: the notebook's ``output_root`` parameter if
    given, else ``$TOPO2VEC_OUTPUT_ROOT``, else ``<project root>/scratch/<notebook>``. ``"."`` or ``"pipeline"``
    means the project root (the pipeline's outputs); a relative folder is taken from the project root."""
    value = namespace.get("output_root")
    if value is None:
        value = os.environ.get(OUTPUT_ROOT_ENV) or None
    root = project_root() or Path.cwd()
    if value is None:
        return root / SCRATCH / notebook
    if not isinstance(value, (str, os.PathLike)) or str(value).strip() == "":
        raise ValueError(f"output_root={value!r}: expected '.' (the pipeline's outputs), a folder, or None "
                         f"(scratch/{notebook}/)")
    if str(value) in (".", "pipeline"):
        return root
    folder = Path(value)
    return folder if folder.is_absolute() else root / folder


def notebook_outputs(namespace: MutableMapping[str, Any], notebook: str, keys: Sequence[str]) -> Path:
    """Send a notebook's outputs where :func:`output_root` says: each parameter in ``keys`` holding a relative
    path is rewritten under that folder unless it is the project root (absolute paths and None are kept).
    Sets ``namespace["output_root"]`` to the folder, prints where the outputs go when it is not the pipeline's,
    and returns it. Call it after the notebook's parameters are read (the working directory is the root)."""
    out = output_root(namespace, notebook)
    root = project_root() or Path.cwd()
    redirected = out.resolve() != root.resolve()
    for key in keys:
        value = namespace.get(key)
        if value is None:
            continue
        if not isinstance(value, (str, os.PathLike)):
            raise ValueError(f"{key}={value!r}: expected a path")
        if redirected and not Path(value).is_absolute():
            namespace[key] = str(out / value)
    namespace["output_root"] = str(out)
    if redirected:
        shown = out.relative_to(root) if out.is_relative_to(root) else out
        print(f"{notebook}: not run by the pipeline, so outputs go to {shown}/ and the pipeline's stay untouched "
              f"(output_root = '.' overwrites them); inputs are the pipeline's")
    return out
