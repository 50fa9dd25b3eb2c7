"""Shared test fixtures: tiny georeferenced terrains and a papermill notebook runner."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import xarray as xr

REPO = Path(__file__).resolve().parents[1]
TINY_OVERRIDES = REPO / "tests" / "data" / "params_tiny.yaml"


@pytest.fixture(scope="session", autouse=True)
def synthetic_block_cache(tmp_path_factory):
    """One disk cache of the synthetic world's routing blocks for the whole session (``TOPO2VEC_CACHE_DIR``,
    inherited by notebook kernels and Dask workers): each block is computed once, by the first test that needs
    it, instead of once per notebook run (tests/test_synthetic.py tests the cache itself)."""
    mp = pytest.MonkeyPatch()
    path = tmp_path_factory.mktemp("synthetic-cache")
    mp.setenv("TOPO2VEC_CACHE_DIR", str(path))
    yield path
    mp.undo()


def copy_repo(dest: Path) -> None:
    """The project as git sees it (tracked files and untracked ones it does not ignore) copied to ``dest``."""
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=REPO, check=True,
                           capture_output=True, text=True).stdout.split("\0")
    for rel in filter(None, files):
        src = REPO / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)


def deep_merge(base: dict, over: dict) -> dict:
    """``base`` with ``over`` merged in: mappings recursively, anything else replaced."""
    out = dict(base)
    for key, value in over.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) \
            else value
    return out


def tiny_params(**sections) -> dict:
    """The study's params.yaml with the tiny sizes of tests/data/params_tiny.yaml (and ``sections``) over it."""
    import yaml

    study = yaml.safe_load((REPO / "params.yaml").read_text())
    return deep_merge(deep_merge(study, yaml.safe_load(TINY_OVERRIDES.read_text())), sections)


def regions(size_km=4, train_center=(12.0, 47.2), test_center=(7.6, 46.6)) -> dict:
    """``data.regions`` with the paper's boxes and windows of ``size_km`` around the study's centres."""
    return {"train": {"box": [10.0, 45.0, 15.0, 50.0], "center": list(train_center), "size_km": size_km},
            "test": {"box": [5.0, 45.0, 10.0, 50.0], "center": list(test_center), "size_km": size_km}}


def write_params(path: Path, **sections) -> Path:
    """Write :func:`tiny_params` (with ``sections`` merged over it) to ``path``; returns the path."""
    import yaml

    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(tiny_params(**sections), sort_keys=False))
    return path


def make_terrain(elevation: np.ndarray, res_m: float = 30.0, center_lonlat=(12.0, 47.2),
                 crs: str = "EPSG:3035", region: str = "train") -> xr.DataArray:
    """A terrain DataArray (docs/architecture.md) from a 2-D array, row 0 = north, centred on a lon/lat.

    The window is snapped so pixel centres sit on a multiple of ``res_m`` plus half a pixel.
    """
    import rioxarray  # noqa: F401  (registers .rio)
    from pyproj import Transformer

    elevation = np.asarray(elevation, dtype=np.float32)
    ny, nx = elevation.shape
    cx, cy = Transformer.from_crs("EPSG:4326", crs, always_xy=True).transform(*center_lonlat)
    x0 = np.floor(cx / res_m) * res_m - (nx // 2) * res_m
    y0 = np.floor(cy / res_m) * res_m + (ny // 2) * res_m
    x = x0 + (np.arange(nx) + 0.5) * res_m
    y = y0 - (np.arange(ny) + 0.5) * res_m
    bounds = {"train": [10.0, 45.0, 15.0, 50.0], "test": [5.0, 45.0, 10.0, 50.0]}.get(region, [-180, -90, 180, 90])
    da = xr.DataArray(elevation, dims=("y", "x"), coords={"y": y, "x": x}, name="elevation",
                      attrs={"res_m": float(res_m), "region": region, "region_lonlat": bounds,
                             "source": "test", "units": "m"})
    return da.rio.write_crs(crs).rio.write_transform()


@pytest.fixture
def terrain_factory():
    """Call with a 2-D elevation array (and optional res_m, center_lonlat, crs, region)."""
    return make_terrain


def run_notebook(name: str, out_dir: Path, parameters: dict, cwd: Path = REPO) -> Path:
    """Execute ``notebooks/<name>.py`` (jupytext) through papermill with ``parameters``; return the .ipynb.

    Runs in a fresh python3 kernel like the DVC stage does, so a failing cell fails the test with its log.
    """
    import jupytext
    import papermill

    out_dir.mkdir(parents=True, exist_ok=True)
    nb = jupytext.read(REPO / "notebooks" / f"{name}.py")
    src = out_dir / f"{name}.src.ipynb"
    jupytext.write(nb, src)
    out = out_dir / f"{name}.ipynb"
    papermill.execute_notebook(str(src), str(out), parameters=parameters, kernel_name="python3",
                               cwd=str(cwd), progress_bar=False)
    return out


@pytest.fixture
def notebook_runner():
    return run_notebook
