"""Atomic writes and small file helpers.

Every file the study writes goes through :func:`atomic_path`: the content is written to a temporary
sibling and renamed into place only when complete, so an interrupted stage never leaves a half file
that a later stage (or a resumed run) would trust.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import yaml


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    Works for files and for directories (zarr stores): ``is_dir=True`` replaces a whole directory.
    On error the temporary is removed and any existing ``path`` is left untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target} for {path}")
        if is_dir and path.exists():
            old = path.with_name(f".{path.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")


def load_params(path: str | os.PathLike = "params.yaml") -> dict:
    """Read the study's ``params.yaml`` (the single source of every stage's parameters)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"params file {path} does not exist")
    with open(path) as f:
        params = yaml.safe_load(f)
    if not isinstance(params, dict):
        raise ValueError(f"{path} must hold a mapping of parameter sections, got {type(params).__name__}")
    return params


def fill_from_params(namespace: dict, params_path: str | os.PathLike | None, section: str,
                     defaults: dict, top_level: tuple[str, ...] = ("seed",)) -> dict:
    """Fill a notebook's parameters that were left ``None`` from ``params.yaml``.

    For each key of ``defaults``: a value given explicitly (papermill ``-p``) wins; else ``params[section][key]``;
    for ``top_level`` keys (the study ``seed``) ``params[key]``; else the default. Updates ``namespace`` (a
    notebook's ``globals()``) in place and returns the resolved values. Keys of the section that the notebook
    does not know are an error, so a typo in params.yaml never passes silently.
    """
    study = load_params(params_path) if params_path and Path(params_path).exists() else {}
    given_section = study.get(section) or {}
    unknown = sorted(set(given_section) - set(defaults))
    if unknown:
        raise ValueError(f"{params_path}: unknown key(s) {unknown} in section {section!r}; valid: {sorted(defaults)}")
    resolved = {}
    for key, default in defaults.items():
        value = namespace.get(key)
        if value is None:
            value = study.get(key) if key in top_level and key in study else given_section.get(key, default)
        resolved[key] = namespace[key] = value
    return resolved
