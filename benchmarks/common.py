"""What the benchmarks share: an in-memory fractal test terrain and machine information."""
from __future__ import annotations

import os
import platform

import numpy as np

from topo2vec_lib.grid import make_dataarray, window_bounds
from topo2vec_lib.synthetic import fbm

RES_M = 30.0


def fractal_terrain(n: int, seed: int = 0, relief_m: float = 1500.0, region: str = "train"):
    """An ``n x n`` px terrain at 30 m/px (metres, EPSG:3035) by spectral synthesis, inside the paper's polygon.

    No hydrology or labels: a fast, rough, self-similar surface that exercises the sampler like real relief.
    """
    center, box = {"train": ((12.0, 47.2), [10.0, 45.0, 15.0, 50.0]),
                   "test": ((7.6, 46.6), [5.0, 45.0, 10.0, 50.0])}[region]
    bounds = window_bounds(center, n * RES_M / 1000.0, RES_M, "EPSG:3035")
    z = fbm((n, n), RES_M, np.random.default_rng(seed))
    z = (z - z.min()) / (z.max() - z.min()) * relief_m + 200.0
    return make_dataarray(z, bounds, RES_M, "EPSG:3035", region=region, region_lonlat=box, source="benchmark")


def machine() -> dict:
    import torch

    return {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "numpy": np.__version__, "torch": torch.__version__, "torch_threads": torch.get_num_threads()}
