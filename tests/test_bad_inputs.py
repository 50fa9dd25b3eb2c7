"""Hostile input to the library and the study's parameters (issue 14): each row is a bad input and the error it
must give (type and a fragment of the message). The download/OSM readers have their own table
(tests/test_bad_inputs_download.py).

A new parameter, source or entry point gets its rows here: ``ROWS`` for a call that must raise, ``PARAM_ROWS``
for a value in params.yaml (each is checked by the params_check stage, ``schema.check_params``, and by the
notebook that reads it, ``schema.notebook_section``). Below the tables: the behaviours that are more than one
error (nothing silent, nothing lost).
"""
from __future__ import annotations

import ast
import dataclasses
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from conftest import REPO, make_terrain, tiny_params
from scipy.ndimage import gaussian_filter

from topo2vec_lib import evaluation, grid, labels, schema, storage, terrain
from topo2vec_lib.models import checkpoints, load_embedder, model_config, train_model
from topo2vec_lib.models.embedder import NonFiniteEmbeddingError
from topo2vec_lib.models.trainer import NonFiniteLossError, resolve_device, torch_threads
from topo2vec_lib.sampler import NodataError, OutsideTerrainError, PatchSampler

CUDA = torch.cuda.is_available()
TINY_T2V = {"kind": "topo2vec", "k": 1, "train_res_m": [30], "images": 64, "batch_size": 8, "epochs": 1,
            "chunk_batches": 2, "log_steps": 0, "device": "cpu"}


def relief(n: int = 60, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (sum(gaussian_filter(rng.normal(size=(n, n)), s) * s * 40 for s in (1, 4)) + 1000).astype(np.float32)


def geotiff(path: Path, z, *, transform=None, crs="EPSG:4326", nodata=None, dtype="float32") -> Path:
    """A GeoTIFF of ``z`` (default: 0.001 degree pixels from lon 11.5, lat 47.7 south-east)."""
    import rasterio
    from rasterio.transform import from_origin

    z = np.asarray(z).astype(dtype)
    with rasterio.open(path, "w", driver="GTiff", height=z.shape[0], width=z.shape[1], count=1, dtype=dtype,
                       crs=crs, transform=transform or from_origin(11.5, 47.7, 0.001, 0.001), nodata=nodata) as f:
        f.write(z, 1)
    return path


@dataclasses.dataclass
class Ctx:
    tmp: Path
    terrain: Any           # 60 x 60 px relief around lon 12.0, lat 47.2 (train region)
    sampler: PatchSampler
    model: Path            # a tiny trained topo2vec checkpoint

    @property
    def window(self):
        """A 4 km window around lon 12.0, lat 47.2 at 30 m (the GeoTIFFs cover it)."""
        return grid.window_bounds((12.0, 47.2), 4, 30)

    def store(self, name: str, damage: Callable[[Path], None]) -> Path:
        """A zarr terrain store (32 px chunks) with ``damage`` done to it."""
        path = self.tmp / f"{name}.zarr"
        terrain.save_terrain(self.terrain, path, chunk_px=32)
        damage(path)
        return path

    def labels_dir(self, name: str, df: pd.DataFrame, cls: str = "peak") -> Path:
        d = self.tmp / f"labels_{name}"
        d.mkdir(exist_ok=True)
        df.to_parquet(d / f"{cls}.parquet")
        return d

    def checkpoint(self, name: str, edit: Callable[[dict], None]) -> Path:
        """The tiny model's checkpoint with ``edit`` done to the raw payload (so its checksum no longer holds)."""
        payload = torch.load(self.model, weights_only=True)
        edit(payload)
        path = self.tmp / f"{name}.pt"
        torch.save(payload, path)
        return path


@pytest.fixture(scope="module")
def ctx(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("bad_inputs")
    t = make_terrain(relief())
    s = PatchSampler(t, threads=1)
    with torch_threads(1):
        train_model(TINY_T2V, s, out_path=tmp / "t2v.pt", progress=False)
    return Ctx(tmp, t, s, tmp / "t2v.pt")


GOOD_LABELS = pd.DataFrame({"lon": [12.0, 12.005], "lat": [47.2, 47.205], "class": "peak", "source": "derived",
                            "region": "train"})


def _chunk(path: Path, i: int = 0, j: int = 1) -> Path:
    return next(p for p in (path / "elevation" / "c" / str(i) / str(j), path / "elevation" / f"{i}.{j}")
                if p.exists())


def _truncate(f: Path) -> None:
    f.write_bytes(f.read_bytes()[:50])


def _flip(f: Path) -> None:
    b = bytearray(f.read_bytes())
    b[len(b) // 2] ^= 0x10
    f.write_bytes(bytes(b))


def _first_weight(payload: dict) -> torch.Tensor:
    return next(iter(payload["state"]["encoder"].values()))


def _kind_id(payload: dict) -> None:
    """A topo2vec state relabelled 'id', written with a valid checksum (so only the kind check can catch it)."""
    payload["kind"], payload["config"] = "id", {"kind": "id"}
    payload["checksum"] = checkpoints.payload_digest("id", payload["config"], payload["state"])


@dataclasses.dataclass
class Row:
    id: str
    run: Callable[[Ctx], Any]
    error: type[BaseException]
    fragment: str
    needs_no_cuda: bool = False


ROWS = [
    # ---- places: lon/lat never wrap, never a raw numpy error
    Row("lon 367.6 to the sampler", lambda c: c.sampler.patches([367.6], [47.2], 30), ValueError,
        "lon[0] = 367.6 is outside [-180, 180] degrees (degrees east; never wrapped (to 7.6))"),
    Row("lon 367.6 to grid.lonlat_to_xy", lambda c: grid.lonlat_to_xy("EPSG:3035", [367.6], [46.6]), ValueError,
        "never wrapped"),
    Row("lat 112 (lon/lat swapped?)", lambda c: c.sampler.patches([12.0], [112.0], 30), ValueError,
        "lat[0] = 112.0 is outside [-90, 90] degrees (lon/lat order?)"),
    Row("lon as text", lambda c: c.sampler.patches(["12.0E"], [47.2], 30), ValueError,
        "lon must be real numbers, got text values (first: '12.0E')"),
    Row("lon as a dict", lambda c: c.sampler.patches({"lon": 12.0}, [47.2], 30), ValueError,
        "lon must be real numbers (a number, list or array), got dict"),
    Row("lon as complex numbers", lambda c: c.sampler.patches(np.array([12 + 1j]), [47.2], 30), ValueError,
        "lon must be real numbers, got complex values"),
    Row("lat with None in it", lambda c: c.sampler.patches([12.0, 12.0], [47.2, None], 30), ValueError,
        "lat must be real numbers, got NoneType None"),
    Row("embed at text places", lambda c: load_embedder(c.model).embed(c.sampler, ["a"], ["b"]), ValueError,
        "lon must be real numbers"),
    # ---- seeds are integers, never truncated
    Row("random_places seed 1.5", lambda c: c.sampler.random_places(3, 1.5, 30), ValueError,
        "rng (a seed) must be an integer >= 0, got 1.5"),
    Row("derive_labels seed 1.5", lambda c: labels.derive_labels(c.terrain, seed=1.5, classes=["peak"]),
        ValueError, "seed must be an integer >= 0, got 1.5"),
    Row("load_terrain seed 1.5", lambda c: terrain.load_terrain("synthetic", "train", center_lonlat=(12.0, 47.2),
                                                                 size_km=2, seed=1.5), ValueError,
        "seed must be an integer >= 0, got 1.5"),
    Row("probe seeds [1.5]", lambda c: _probe(c, seeds=[1.5]), ValueError, "seeds[0] must be an integer >= 0, got 1.5"),
    Row("probe seeds 2.5 (a count)", lambda c: _probe(c, seeds=2.5), ValueError,
        "seeds (a count) must be an integer >= 1, got 2.5"),
    # ---- classes='peak' is never the classes 'p', 'e', 'a', 'k'
    Row("read_labels classes='peak'", lambda c: labels.read_labels(c.labels_dir("one", GOOD_LABELS), classes="peak"),
        ValueError, "classes='peak' is one string, not a list of class names; write ['peak']"),
    Row("derive_labels classes='peak'", lambda c: labels.derive_labels(c.terrain, classes="peak"), ValueError,
        "classes='peak' is one string"),
    Row("probe classes='peak'", lambda c: _probe(c, classes="peak"), ValueError, "classes='peak' is one string"),
    # ---- regions, windows and CRSs
    Row("region_lonlat of 3 numbers", lambda c: terrain.load_terrain(
        "synthetic", "mine", center_lonlat=(12.0, 47.2), size_km=2, region_lonlat=[11, 46, 13]), ValueError,
        "region_lonlat must be 4 numbers (lon_min, lat_min, lon_max, lat_max), got [11, 46, 13]"),
    Row("region_lonlat as text", lambda c: grid.region_window("mine", (12.0, 47.2), 2, 30,
                                                              region_lonlat="11,46,13,48"), ValueError,
        "region_lonlat must be 4 numbers"),
    Row("a CRS in US feet to PatchSampler", lambda c: PatchSampler(make_terrain(
        relief(), crs="EPSG:2263", center_lonlat=(-74.0, 40.7), region="nyc")), ValueError,
        "must be a projected CRS in metres (e.g. 'EPSG:3035'), got a projected CRS in ['US survey foot']"),
    Row("a 100% nodata terrain to PatchSampler", lambda c: PatchSampler(make_terrain(np.full((40, 40), np.nan))),
        NodataError, "is 100% nodata"),
    Row("a place whose patch leaves the terrain", lambda c: c.sampler.patches([12.2], [47.2], 30),
        OutsideTerrainError, "leaves the terrain"),
    # ---- GeoTIFFs
    Row("GeoTIFF truncated to 2,000 bytes", lambda c: terrain.geotiff_terrain(
        _truncated_tif(c), c.window, "EPSG:3035", 30), ValueError, "truncated, corrupt or not a raster"),
    Row("GeoTIFF with a rotated transform", lambda c: terrain.geotiff_terrain(geotiff(
        c.tmp / "rot.tif", relief(200), transform=_rotated()), c.window, "EPSG:3035", 30), ValueError,
        "has a rotated or sheared transform"),
    Row("GeoTIFF of 1 x 1 pixels", lambda c: terrain.geotiff_terrain(geotiff(
        c.tmp / "one.tif", [[500.0]], transform=_one_pixel()), c.window, "EPSG:3035", 30), ValueError,
        "is 1 x 1 pixels; a DEM needs at least 2 x 2"),
    Row("GeoTIFF window that is 100% nodata", lambda c: terrain.load_terrain(
        "geotiff", "train", center_lonlat=(12.0, 47.2), size_km=4, geotiff_path=geotiff(
            c.tmp / "nodata.tif", np.full((800, 800), -1.0), nodata=-1.0)), terrain.NodataWindowError,
        "is 100% nodata (133 x 133 px, no valid height at all)"),
    Row("geotiff source without a path", lambda c: terrain.load_terrain(
        "geotiff", "train", center_lonlat=(12.0, 47.2), size_km=4), ValueError, "needs geotiff_path"),
    # ---- zarr stores: every chunk is verified against the manifest, every failure names the store
    Row("zarr store with a deleted chunk", lambda c: terrain.open_terrain(c.store("deleted", lambda p: _chunk(
        p).unlink())), terrain.TerrainStoreError, "chunk (0, 1) of 'elevation' (file elevation/c/0/1: pixel rows "
        "0..31, columns 32..59) is missing (deleted?)"),
    Row("zarr store with a truncated chunk", lambda c: terrain.open_terrain(c.store("truncated", lambda p: _truncate(
        _chunk(p)))), terrain.TerrainStoreError, "the manifest says"),
    Row("zarr store with an altered chunk", lambda c: terrain.open_terrain(c.store("flipped", lambda p: _flip(
        _chunk(p)))), terrain.TerrainStoreError, "does not match its SHA-256"),
    Row("zarr store with a truncated chunk, lazily opened", lambda c: terrain.open_terrain(c.store(
        "truncated_lazy", lambda p: _truncate(_chunk(p))), chunks="auto"), terrain.TerrainStoreError,
        "(truncated?)"),
    Row("zarr store without manifest and a truncated chunk", lambda c: _quiet(terrain.open_terrain, c.store(
        "old_truncated", lambda p: (_truncate(_chunk(p)), (p / terrain.MANIFEST_NAME).unlink()))),
        terrain.TerrainStoreError, "old_truncated.zarr is not a readable terrain store"),
    # ---- label tables: checked file by file, and against the terrain they meet
    Row("label parquet with the wrong columns", lambda c: labels.read_labels(c.labels_dir(
        "columns", GOOD_LABELS.rename(columns={"lon": "x", "lat": "y"}))), ValueError,
        "peak.parquet: label table lacks column(s) ['lon', 'lat']"),
    Row("label parquet with lon 367.6", lambda c: labels.read_labels(c.labels_dir(
        "wrapped", GOOD_LABELS.assign(lon=[367.6, 12.0]))), ValueError, "lon outside -180..180 (not wrapped)"),
    Row("label parquet with lon and lat swapped", lambda c: labels.read_labels(c.labels_dir(
        "swapped", GOOD_LABELS.rename(columns={"lon": "lat", "lat": "lon"})), terrains={"train": c.sampler}),
        ValueError, "lon and lat look swapped"),
    Row("peak.parquet holding rivers", lambda c: labels.read_labels(c.labels_dir(
        "mixed", GOOD_LABELS.assign(**{"class": "river"}))), ValueError,
        "a 'peak' label file holds rows of class(es) ['river']"),
    Row("probe set from swapped labels", lambda c: evaluation.probe_dataset(
        GOOD_LABELS.rename(columns={"lon": "lat", "lat": "lon"}), "peak", "train", 2, c.sampler,
        np.random.default_rng(0)), ValueError, "labels of class 'peak' in region 'train': lon and lat look swapped"),
    Row("rule line_spacing_m = 0", lambda c: labels.rule_params(line_spacing_m=0), ValueError,
        "line_spacing_m=0: expected a finite number > 0"),
    Row("rule hut_per_100km2 = -1", lambda c: labels.derive_labels(c.terrain, hut_per_100km2=-1), ValueError,
        "hut_per_100km2=-1: expected a finite number >= 0"),
    # ---- checkpoints and models
    Row("checkpoint with altered weights", lambda c: load_embedder(c.checkpoint(
        "altered", lambda p: _first_weight(p).view(-1)[0].add_(1e-3))), checkpoints.CheckpointError,
        "do not match the checksum written with them"),
    Row("checkpoint of format version 1", lambda c: load_embedder(c.checkpoint(
        "v1", lambda p: (p.update(version=1), p.pop("checksum")))), checkpoints.CheckpointError,
        "version 1; this library reads version 2 (written before checkpoints carried a checksum"),
    Row("checkpoint whose kind does not match its state", lambda c: load_embedder(c.checkpoint("kind", _kind_id)),
        checkpoints.CheckpointError, "a 'id' checkpoint whose configuration or state does not match its kind"),
    Row("checkpoint with NaN weights (checksum valid)", lambda c: load_embedder(c.checkpoint(
        "nan", lambda p: (_first_weight(p).fill_(float("nan")), p.update(checksum=checkpoints.payload_digest(
            p["kind"], p["config"], p["state"]))))), checkpoints.CheckpointError, "holds NaN or inf"),
    Row("embed with diverged weights", lambda c: _nan_weights(load_embedder(c.model)).embed(
        c.sampler, [12.0], [47.2]), NonFiniteEmbeddingError, "returned NaN or infinite vectors for 1 of 1 finite"),
    Row("embed_patches with diverged weights", lambda c: _nan_weights(load_embedder(c.model)).embed_patches(
        np.zeros((2, 17, 17), np.float32)), NonFiniteEmbeddingError, "its weights are corrupt or diverged"),
    Row("model config lr: inf", lambda c: model_config({**TINY_T2V, "lr": float("inf")}), ValueError,
        "lr=inf: expected a finite number > 0"),
    Row("model config lambda_l1: nan", lambda c: model_config({**TINY_T2V, "lambda_l1": float("nan")}), ValueError,
        "lambda_l1=nan: expected a finite number >= 0"),
    Row("load_embedder on cuda without CUDA", lambda c: load_embedder(c.model, device="cuda"), ValueError,
        "CUDA is not available", needs_no_cuda=True),
    Row("training on cuda without CUDA", lambda c: train_model({**TINY_T2V, "device": "cuda"}, c.sampler,
                                                               out_path=c.tmp / "cuda.pt", progress=False),
        ValueError, "CUDA is not available", needs_no_cuda=True),
]


def _probe(c: Ctx, **kw):
    from topo2vec_lib.models.identity import IdEmbedder

    args = dict(classes=["peak"], n_train=2, n_test=2, seeds=1)
    return evaluation.run_probe_experiment({"id": IdEmbedder()}, {"train": c.sampler, "test": c.sampler},
                                           GOOD_LABELS, **{**args, **kw}, progress=False)


def _quiet(fn, *a, **kw):
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return fn(*a, **kw)


def _truncated_tif(c: Ctx) -> Path:
    whole = geotiff(c.tmp / "whole.tif", relief(800))
    (c.tmp / "trunc.tif").write_bytes(whole.read_bytes()[:2000])
    return c.tmp / "trunc.tif"


def _rotated():
    from affine import Affine
    from rasterio.transform import from_origin

    return from_origin(11.5, 47.7, 0.001, 0.001) @ Affine.rotation(10)


def _one_pixel():
    from rasterio.transform import from_origin

    return from_origin(11.9, 47.3, 0.2, 0.2)


def _nan_weights(emb):
    with torch.no_grad():
        next(emb.encoder.parameters()).fill_(float("nan"))
    return emb


@pytest.mark.parametrize("row", ROWS, ids=[r.id for r in ROWS])
def test_bad_input_gives_a_clear_error(row, ctx):
    if row.needs_no_cuda and CUDA:
        pytest.skip("CUDA is available here")
    with pytest.raises(row.error) as err:
        row.run(ctx)
    assert row.fragment in str(err.value), f"{row.fragment!r} not in {str(err.value)!r}"


# ------------------------------------------------------------------------------------------------ params.yaml
def _regions(**changes) -> dict:
    """The tiny study's ``data.regions`` with some fields of some regions changed (None: the field removed)."""
    from conftest import regions

    out = regions(9)
    for name, fields in changes.items():
        out[name] = {k: v for k, v in {**out[name], **fields}.items() if v is not None or k == "center"}
    return out


@dataclasses.dataclass
class ParamRow:
    id: str
    section: str | None      # None: the top level
    key: str
    value: Any
    fragment: str
    notebook: bool = True    # False: a check across sections, which only the params_check stage sees


PARAM_ROWS = [
    ParamRow("negative minimum count", "labels", "min_train_exp1", -5, "labels.min_train_exp1=-5: expected an "
             "integer >= 0"),
    ParamRow("zero line spacing", "labels", "line_spacing_m", 0, "labels.line_spacing_m=0: expected a finite "
             "number > 0"),
    ParamRow("negative prominence", "labels", "peak_prominence_m", -10.0, "peak_prominence_m=-10.0: expected a "
             "finite number >= 0"),
    ParamRow("negative lift density", "labels", "aerialway_lines_per_100km2", -2.0, "aerialway_lines_per_100km2="
             "-2.0: expected a finite number >= 0"),
    ParamRow("negative hut density", "labels", "hut_per_100km2", -1, "hut_per_100km2=-1: expected a finite number"),
    ParamRow("quantile above 1", "labels", "hut_min_elev_quantile", 1.5, "hut_min_elev_quantile=1.5"),
    ParamRow("prominence as text", "labels", "peak_prominence_m", "20 m", "peak_prominence_m='20 m'"),
    ParamRow("unknown label source", "labels", "source", "OSM", "labels.source='OSM': expected one of"),
    ParamRow("negative label jitter", "labels", "jitter_sigma_m", -30.0, "labels.jitter_sigma_m=-30.0: expected a "
             "finite number >= 0"),
    ParamRow("every label dropped", "labels", "drop_fraction", 1.0, "labels.drop_fraction=1.0: expected a finite "
             "number >= 0 and < 1"),
    ParamRow("label file of an unknown class", "labels", "label_files", {"volcano": "v.csv"},
             "label_files names unknown class(es) ['volcano']"),
    ParamRow("sinkhole areas inverted", "labels", "sinkhole_min_area_m2", 2.0e6,
             "sinkhole_min_area_m2=2000000.0 is larger than sinkhole_max_area_m2=1000000.0"),
    ParamRow("unknown osm option", "labels", "osm", {"endpoint": "https://x", "timeout": 9}, "osm: unknown key(s) "
             "['timeout']"),
    ParamRow("no held-out pairs", "heldout", "test_pairs", 0, "heldout.test_pairs=0: expected an integer >= 1"),
    ParamRow("ablation size huge", "ablations", "size", "huge", "ablations.size='huge': expected one of"),
    ParamRow("unknown ablation family", "ablations", "families", ["length", "depth"],
             "ablations.families[1]='depth': expected one of"),
    ParamRow("k = 3 in the k family", "ablations", "k", {"base": "topo2vec-4", "k": [1, 3], "input_res_m": 30,
             "equal": "flops"}, "k.k[1]=3: expected a power of two"),
    ParamRow("label noise dropping everything", "ablations", "label_noise",
             {"models": ["id"], "points": [[30, 1.0]]}, "label_noise.points[0][1]=1.0"),
    ParamRow("ablation of an untrained model", "ablations", "window", {"models": ["topo2vec-8"], "size_km": [44]},
             "ablations.window.models names model 'topo2vec-8'", notebook=False),
    ParamRow("seed 1.5", None, "seed", 1.5, "seed=1.5: expected an integer >= 0"),
    ParamRow("seed as text", None, "seed", "0", "seed='0': expected an integer >= 0"),
    ParamRow("res_m: thirty", "data", "res_m", "thirty", "data.res_m='thirty': expected a finite number > 0"),
    ParamRow("size_km: 0", "data", "regions", _regions(train={"size_km": 0}),
             "data.regions.train.size_km must be a positive number, got 0"),
    ParamRow("size_km of 3 numbers", "data", "regions", _regions(test={"size_km": [1, 2, 3]}),
             "data.regions.test.size_km=[1, 2, 3]: expected a number"),
    ParamRow("a CRS in degrees", "data", "crs", "EPSG:4326", "got a geographic CRS"),
    ParamRow("a CRS in feet", "data", "crs", "EPSG:2263", "must be a projected CRS in metres"),
    ParamRow("train window in the test polygon", "data", "regions", _regions(train={"center": [7.6, 46.6]}),
             "which is not inside region 'train'"),
    ParamRow("window larger than its box", "data", "regions", _regions(test={"size_km": 600}),
             "which is not inside region 'test'"),
    ParamRow("test centre lon 367.6", "data", "regions", _regions(test={"center": [367.6, 46.6]}),
             "data.regions.test.center=[367.6, 46.6]: expected [lon, lat] in degrees"),
    ParamRow("box lon_min >= lon_max", "data", "regions", _regions(train={"box": [15.0, 45.0, 15.0, 50.0]}),
             "data.regions.train.box=[15.0, 45.0, 15.0, 50.0]: lon_min 15 >= lon_max 15"),
    ParamRow("box across the antimeridian", "data", "regions",
             _regions(train={"box": [175.0, -45.0, -175.0, -40.0], "center": None}),
             "lon_min 175 > lon_max -175: a box crossing the antimeridian (180 degrees) is not supported"),
    ParamRow("box reaching a pole", "data", "regions", _regions(test={"box": [5.0, 80.0, 10.0, 90.0],
                                                                   "center": None}),
             "data.regions.test.box=[5.0, 80.0, 10.0, 90.0]: the box reaches the north pole"),
    ParamRow("box in lat/lon order", "data", "regions", _regions(test={"box": [45.0, 5.0, 50.0, 10.0]}),
             "which is not inside region 'test'"),
    ParamRow("box and polygon", "data", "regions", _regions(test={"polygon": "test.geojson"}),
             "data.regions.test: give exactly one of box"),
    ParamRow("a polygon file that is not there", "data", "regions",
             _regions(test={"box": None, "polygon": "no/such.geojson"}),
             "data.regions.test.polygon='no/such.geojson' is not an existing file"),
    ParamRow("a third region", "data", "regions", {**_regions(), "valid": _regions()["test"]},
             "data.regions must name exactly the regions ['train', 'test']"),
    ParamRow("an unknown region key", "data", "regions", _regions(train={"centre": [12.0, 47.2]}),
             "data.regions.train: unknown key(s) ['centre']"),
    ParamRow("terrain tile not a multiple of 512", "data", "tile_px", 1000, "data.tile_px=1000: expected a multiple "
             "of 512"),
    ParamRow("label tile smaller than the rules' reach", "labels", "tile_px", 100, "labels.tile_px = 100 is smaller "
             "than the aerialway_station reach of 135 cells", notebook=False),
    ParamRow("scheduler without a scheme", "dask", "scheduler", "localhost:8786", "dask.scheduler='localhost:8786': "
             "expected null"),
    ParamRow("zero workers", "dask", "n_workers", 0, "dask.n_workers=0: expected an integer >= 1"),
    ParamRow("geotiff source without a file", "data", "source", "geotiff", "source='geotiff' needs geotiff_path"),
    ParamRow("classes: 'peak' (a string)", "exp1", "classes", "peak", "exp1.classes='peak': expected a list of "
             "label class names, not a single str"),
    ParamRow("scale_selection classes: 'peak'", "scale_selection", "classes", "peak", "not a single str"),
    ParamRow("an unknown class", "exp2", "classes", ["waterfall", "volcano"], "classes[1]='volcano': expected a "
             "label class"),
    ParamRow("a list where a number is expected", "exp1", "n_train", [1000, 200], "exp1.n_train=[1000, 200]: "
             "expected an even integer >= 2"),
    ParamRow("an odd balanced set", "exp2", "n_test", 101, "exp2.n_test=101: expected an even integer"),
    ParamRow("probe reference not probed", "exp1", "reference", "cnn2", "reference='cnn2' is not one of models"),
    ParamRow("probe of a model that is not trained", "exp2", "models", ["topo2vec-4", "topo2vec-8"],
             "exp2.models names model 'topo2vec-8', which is not in `models`", notebook=False),
    ParamRow("res_m neither a scale nor 'selected'", "exp1", "res_m", "best", "expected a positive pixel size in "
             "m/px or 'selected'"),
    ParamRow("box of 3 numbers", "exp3", "box_lonlat", [5.0, 45.0, 10.0], "exp3.box_lonlat=[5.0, 45.0, 10.0]"),
    ParamRow("upsample_finer: 'yes'", "exp3", "upsample_finer", "yes", "expected true or false"),
    ParamRow("queries in lat/lon order", "exp4", "query_lonlat", [[46.6, 97.6]], "query_lonlat[0]=[46.6, 97.6]"),
    ParamRow("k = 0", "exp4", "k", 0, "exp4.k=0: expected an integer >= 1"),
    ParamRow("negative exclusion radius", "exp4", "exclude_radius_m", -1.0, "exclude_radius_m=-1.0"),
]


def _params_with(row: ParamRow) -> dict:
    p = tiny_params()
    (p if row.section is None else p[row.section])[row.key] = row.value
    return p


def _write(tmp_path: Path, params: dict) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


@pytest.mark.parametrize("row", PARAM_ROWS, ids=[r.id for r in PARAM_ROWS])
def test_params_check_stage_refuses(row, tmp_path):
    """The params_check stage (schema.check_params) fails on the value, naming it, before any stage runs."""
    with pytest.raises(ValueError) as err:
        schema.check_params(_write(tmp_path, _params_with(row)))
    assert row.fragment in str(err.value), f"{row.fragment!r} not in {str(err.value)!r}"


NOTEBOOK_OF = {"data": "terrain", "labels": "labels", "heldout": "train", "ablations": "ablations",
               "scale_selection": "scale_selection", "exp1": "probe",
               "exp2": "probe", "exp3": "multiscale_maps", "exp4": "retrieval"}


@pytest.mark.parametrize("row", [r for r in PARAM_ROWS if r.section is not None and r.notebook], ids=lambda r: r.id)
def test_notebook_refuses_the_value_from_the_file_or_from_papermill(row, tmp_path, monkeypatch):
    """The notebook that reads the section refuses the same value, from params.yaml or given with papermill -p,
    and says where the value came from."""
    monkeypatch.chdir(REPO)
    section = row.section
    assert section is not None
    for origin, params, given in [(f"section {section!r}", _params_with(row), {}),
                                  ("given to the notebook", tiny_params(), {row.key: row.value})]:
        path = _write(tmp_path, params)
        namespace = {k: None for k in [*schema.SECTION_CHECKS[section], "seed"]} | given | {"params_path": str(path)}
        with pytest.raises(ValueError) as err:
            schema.notebook_section(namespace, section)
        text = str(err.value)
        assert row.fragment in text, f"{row.fragment!r} not in {text!r}"
        if "expected" in row.fragment:             # a value's own check (not a rule across keys): says where
            assert origin in text, f"{origin!r} not in {text!r}"


def test_model_sections_are_checked_by_their_configurations(tmp_path):
    """The params_check stage also runs every model's typed configuration (over the train section)."""
    from topo2vec_lib.params import model_parameters

    p = tiny_params()
    p["models"]["topo2vec-4"]["lr"] = float("inf")
    p["train"]["batch_size"] = 1
    path = _write(tmp_path, p)
    schema.check_params(path)                       # the schema leaves train/models to the configurations
    with pytest.raises(ValueError, match="batch_size=1: expected an integer >= 2"):
        model_config(model_parameters("id", path)[0], complete=True)
    p["train"]["batch_size"] = 32
    with pytest.raises(ValueError, match="lr=inf"):
        model_config(model_parameters("topo2vec-4", _write(tmp_path, p))[0], complete=True)
    if not CUDA:
        with pytest.raises(ValueError, match="CUDA is not available"):
            resolve_device(model_config({**TINY_T2V, "device": "cuda"}).device)


def test_params_structure_errors(tmp_path):
    p = tiny_params()
    p["exp5"] = p.pop("exp4")
    with pytest.raises(ValueError, match=r"unknown section\(s\) \['exp5'\]"):
        schema.check_params(_write(tmp_path, p))
    p = tiny_params()
    del p["labels"]["hut_spacing_m"]
    with pytest.raises(ValueError, match=r"section 'labels' lacks key\(s\) \['hut_spacing_m'\]"):
        schema.check_params(_write(tmp_path, p))
    p = tiny_params()
    p["data"]["res"] = 30
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['res'\] in section 'data'"):
        schema.check_params(_write(tmp_path, p))
    with pytest.raises(FileNotFoundError, match="params.yml does not exist"):
        schema.check_params(tmp_path / "params.yml")


def test_the_study_params_pass_the_check():
    assert set(schema.check_params(REPO / "params.yaml")) >= set(schema.SECTION_CHECKS)


def test_notebook_values_reach_the_notebook_unchanged(tmp_path, monkeypatch):
    """The checks only validate: a valid run sees its values exactly as written (so its outputs do not move)."""
    monkeypatch.chdir(REPO)
    namespace = {k: None for k in [*schema.SECTION_CHECKS["exp3"], "seed"]} | {"params_path": str(REPO / "params.yaml")}
    values = schema.notebook_section(namespace, "exp3")
    study = yaml.safe_load((REPO / "params.yaml").read_text())["exp3"]
    assert values == {**study, "seed": 0}
    assert [type(v) for v in values["scales_m"]] == [type(v) for v in study["scales_m"]]


def _parameters_cell(notebook: Path) -> dict[str, Any]:
    """Names assigned in the notebook's ``parameters`` cell and their literal values."""
    text = notebook.read_text()
    cell = text.split('# %% tags=["parameters"]', 1)[1].split("\n# %%", 1)[0]
    out = {}
    for node in ast.parse(cell).body:
        if isinstance(node, ast.Assign) and isinstance(node.targets[0], ast.Name):
            try:
                out[node.targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                out[node.targets[0].id] = ...
    return out


@pytest.mark.parametrize("section", sorted(NOTEBOOK_OF))
def test_every_schema_key_is_a_notebook_parameter(section):
    """Each key of a section's schema is a parameter (None: read from params.yaml) of the notebook that reads it,
    and the notebook reads its section through the schema."""
    nb = REPO / "notebooks" / f"{NOTEBOOK_OF[section]}.py"
    declared = _parameters_cell(nb)
    for key in [*schema.SECTION_CHECKS[section], "seed"]:
        assert key in declared and declared[key] is None, f"{nb.name}: parameter {key!r} must be declared as None"
    assert "notebook_section(globals()" in nb.read_text()


# ------------------------------------------------------------------------------------------------ nothing silent
def test_undeclared_nodata_sentinel_is_nan_with_a_warning(tmp_path):
    z = relief(800)
    z[495:505] = -32768                                     # an int16 DEM's nodata, not declared
    path = geotiff(tmp_path / "sentinel.tif", z, dtype="int16")
    b = grid.window_bounds((12.0, 47.2), 4, 30)
    with pytest.warns(terrain.NodataSentinelWarning, match=r"hold heights no DEM can hold \(-32768\)"):
        da = terrain.geotiff_terrain(path, b, "EPSG:3035", 30)
    assert np.isnan(da.values).any() and np.nanmin(da.values) > 0     # never a -32768 m valley, nor averaged in
    z = relief(800)
    z[495:505] = -9999.0
    with pytest.warns(terrain.NodataSentinelWarning, match=r"\(-9999\)"):
        da = terrain.geotiff_terrain(geotiff(tmp_path / "s2.tif", z), b, "EPSG:3035", 30)
    assert np.nanmin(da.values) > 0


def test_synthetic_source_passes_the_region_box_on():
    box = (11.0, 46.0, 13.0, 48.0)
    da = terrain.load_terrain("synthetic", "mine", center_lonlat=(12.0, 47.2), size_km=2, region_lonlat=box)
    assert da.attrs["region"] == "mine" and da.attrs["region_lonlat"] == list(box)
    with pytest.raises(ValueError, match=r"not inside region 'mine' \[11.0, 46.0, 13.0, 48.0\]"):
        terrain.load_terrain("synthetic", "mine", center_lonlat=(13.0, 47.2), size_km=2, region_lonlat=box)


def test_a_good_store_opens_and_its_manifest_lists_every_chunk(ctx):
    path = ctx.store("good", lambda p: None)
    manifest = (path / terrain.MANIFEST_NAME).read_text()
    assert "elevation/c/1/1" in manifest or "elevation/1.1" in manifest
    da = terrain.open_terrain(path)
    np.testing.assert_array_equal(da.values, ctx.terrain.values)
    tif = ctx.tmp / "good.tif"
    terrain.save_terrain(ctx.terrain, tif)
    np.testing.assert_array_equal(terrain.open_terrain(tif).values, ctx.terrain.values)


class PoisonSampler:
    """A sampler whose ``poison_at``-th chunk of fractal pairs is NaN (a stand-in for weights that diverge)."""

    def __init__(self, sampler, poison_at):
        self.sampler, self.poison_at, self.calls = sampler, poison_at, 0

    def random_places(self, *a, **kw):
        return self.sampler.random_places(*a, **kw)

    def fractal_pairs(self, *a, **kw):
        self.calls += 1
        x, y = self.sampler.fractal_pairs(*a, **kw)
        return (x * np.nan, y) if self.calls >= self.poison_at else (x, y)


def test_a_non_finite_loss_stops_training_and_keeps_the_last_good_resume_file(ctx, tmp_path):
    cfg = {**TINY_T2V, "epochs": 2, "checkpoint_steps": 2}      # 8 steps per epoch, chunks of 2 steps
    out, resume = tmp_path / "m.pt", tmp_path / "m.resume.pt"
    with torch_threads(1), pytest.raises(NonFiniteLossError, match=r"non-finite loss \{'loss_l1': nan\} at step 7 "
                                                                   r"\(epoch 0, chunk 3\).*keeps the last good state "
                                                                   r"\(step 6\).*m.pt was not written"):
        train_model(cfg, PoisonSampler(ctx.sampler, poison_at=4), out_path=out, resume_path=resume, progress=False)
    assert not out.exists()
    state = checkpoints.load_resume_state(resume)          # checksum and finiteness verified on load
    assert state is not None and state["step"] == 6
    with torch_threads(1):                                 # the same run, resumed on good data, finishes
        metrics = train_model(cfg, ctx.sampler, out_path=out, resume_path=resume, progress=False)
    assert metrics["resumed_from_step"] == 6 and np.isfinite(metrics["final_loss"]) and not resume.exists()


# ------------------------------------------------------------------------------------------------ nothing lost
_WRITER = """
import sys, time
from pathlib import Path
from topo2vec_lib.storage import atomic_path
with atomic_path(Path(sys.argv[1]), is_dir=True) as tmp:
    tmp.mkdir()
    (tmp / "chunk").write_bytes(b"x" * 100_000)
    print("writing", flush=True)
    time.sleep(60)
"""


def test_killed_writers_leave_no_litter(tmp_path):
    """kill -9 during an atomic write leaves a hidden temporary; the next write of the same path removes it (and
    those of other killed writers), but never the temporary of a writer that still runs."""
    target = tmp_path / "train.zarr"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = []
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(target)], env=env, stdout=subprocess.PIPE,
                                text=True)
        assert proc.stdout is not None and proc.stdout.readline().strip() == "writing"
        procs.append(proc)
    for proc in procs[:2]:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    try:
        assert len(list(tmp_path.glob(".train.zarr.*.tmp"))) == 3
        legacy = tmp_path / ".train.zarr.abc123.tmp"          # the older, pid-less naming: removed once old
        legacy.mkdir()
        os.utime(legacy, (time.time() - 2 * storage.LEGACY_STALE_S,) * 2)
        with storage.atomic_path(target, is_dir=True) as tmp:
            tmp.mkdir()
        left = [p.name for p in tmp_path.iterdir() if p.name != "train.zarr"]
        assert len(left) == 1 and left[0].startswith(f".train.zarr.{procs[2].pid}."), left   # the live writer's
    finally:
        procs[2].kill()
        procs[2].wait()
    with storage.atomic_path(target, is_dir=True) as tmp:
        tmp.mkdir()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["train.zarr"]


# ------------------------------------------------------------------------------------------------ the check stage
@pytest.mark.slow
def test_params_check_notebook(tmp_path, notebook_runner):
    """The params_check stage's notebook: a valid file gives the same small record whatever its values (so it
    never re-runs other stages by itself); a bad value fails naming it and writes nothing."""
    import json

    import papermill

    out = tmp_path / "check.json"
    notebook_runner("params_check", tmp_path / "nb", {"params_path": str(_write(tmp_path, tiny_params())),
                                                      "out_path": str(out)})
    record = json.loads(out.read_text())
    assert record == {"params": "params.yaml", "sections": sorted(tiny_params()), "valid": True}
    out.unlink()
    bad = tiny_params()
    bad["models"]["saumoco"]["temperature"] = 0
    with pytest.raises(papermill.PapermillExecutionError, match=r"models.saumoco \(over the train section\): "
                                                                r"temperature=0: expected a finite number > 0"):
        notebook_runner("params_check", tmp_path / "nb", {"params_path": str(_write(tmp_path, bad)),
                                                          "out_path": str(out)})
    assert not out.exists()
    bad = tiny_params(dask={"scheduler": "tcp://127.0.0.1:9"})    # nothing listens on the discard port
    with pytest.raises(papermill.PapermillExecutionError, match=r"dask scheduler 'tcp://127.0.0.1:9' does not answer"):
        notebook_runner("params_check", tmp_path / "nb", {"params_path": str(_write(tmp_path, bad)),
                                                          "out_path": str(out)})
    assert not out.exists()
