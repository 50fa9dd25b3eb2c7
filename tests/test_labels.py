"""Label rules on hand-made terrains, the class registry, label tables and the labels notebook."""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy import ndimage

from topo2vec_lib import labels as L
from topo2vec_lib.grid import slope_deg

RES = 30.0


def cone(shape, center, top_m, slope_m_per_px=10.0):
    r, c = np.indices(shape)
    return top_m - slope_m_per_px * np.hypot(r - center[0], c - center[1])


def valley(shape=(60, 41), floor_col=20, down_m_per_px=2.0, side_m_per_px=8.0):
    """A valley tilted south (rows) whose floor is column ``floor_col``."""
    r, c = np.indices(shape)
    return 1000.0 - down_m_per_px * r + side_m_per_px * np.abs(c - floor_col)


def mountains(n=120, seed=3):
    """Smooth random relief, ~1500 m, for the proxy classes."""
    rng = np.random.default_rng(seed)
    z = ndimage.gaussian_filter(rng.normal(size=(n, n)), 8)
    return (z - z.min()) / np.ptp(z) * 1500.0 + 500.0


# --- registry ---------------------------------------------------------------------------------------
def test_registry_has_the_eight_classes():
    assert set(L.classes_of("exp1")) == {"peak", "saddle", "river", "cliff"}
    assert set(L.classes_of("exp2")) == {"aerialway_station", "alpine_hut", "waterfall", "sinkhole"}
    assert L.get_class("river").tags == {"waterway": "river"}
    assert L.get_class("alpine_hut").source == "derived-proxy"
    assert L.get_class("sinkhole").source == "derived"


def test_unknown_class_error_lists_valid_names():
    with pytest.raises(ValueError, match="unknown label class 'volcano'.*peak"):
        L.get_class("volcano")
    with pytest.raises(ValueError, match="unknown label rule parameter.*peak_prominence_m"):
        L.rule_params(peak_prominance_m=3)
    with pytest.raises(ValueError, match="unknown label source 'wikipedia'"):
        L.check_source("wikipedia")


def test_thin_points_is_greedy_non_maximum_suppression():
    rng = np.random.default_rng(0)
    rows, cols, score = rng.integers(0, 50, 400), rng.integers(0, 50, 400), rng.random(400)
    keep = L.thin_points(rows, cols, score, 6.0)
    pts = np.c_[rows, cols].astype(float)
    d = np.hypot(*(pts[:, None, :] - pts[None, :, :]).transpose(2, 0, 1))
    assert d[np.ix_(keep, keep)][np.triu_indices(keep.size, 1)].min() >= 6.0
    dropped = np.setdiff1d(np.arange(400), keep)
    # every dropped point lies within the spacing of a kept point with a higher score
    assert all(((d[j, keep] < 6.0) & (score[keep] >= score[j])).any() for j in dropped)
    assert keep[0] == np.argmax(score)


# --- prominence, peaks, saddles ------------------------------------------------------------------------
def brute_prominence(z):
    """Prominence of every strict local maximum by thresholding at every elevation (tiny arrays only)."""
    out = {}
    levels = np.sort(np.unique(z))[::-1]
    peaks = [i for i in range(z.size) if z.flat[i] == ndimage.maximum_filter(z, 3, mode="constant",
                                                                              cval=-np.inf).flat[i]]
    for p in peaks:
        prom = z.flat[p] - z.min()
        for h in levels[levels <= z.flat[p]]:
            lab, _ = ndimage.label(z >= h, structure=np.ones((3, 3)))
            if (z[lab == lab.flat[p]] > z.flat[p]).any():
                prom = z.flat[p] - h
                break
        out[p] = prom
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_prominence_matches_brute_force(seed):
    z = np.random.default_rng(seed).random((9, 11)) * 100
    pr = L.topographic_prominence(z)
    expected = brute_prominence(z)
    assert sorted(pr.peak.tolist()) == sorted(expected)
    for p, prom in zip(pr.peak, pr.prominence_m):
        assert prom == pytest.approx(expected[int(p)])


def test_one_cone_one_peak_at_apex():
    z = cone((41, 41), (17, 23), 800.0)
    rows, cols = L.peak_cells(z, RES, prominence_m=30)
    assert list(zip(rows, cols)) == [(17, 23)]
    assert L.saddle_cells(z, RES)[0].size == 0


def test_maximum_on_the_window_edge_is_no_peak():
    r, c = np.indices((41, 41))
    z = 10.0 * c - 0.5 * (r - 20) ** 2        # rises to the east edge: cut off, not a summit
    pr = L.topographic_prominence(z)
    assert pr.peak.tolist() == [20 * 41 + 40] and pr.prominence_m[0] > 30
    assert L.peak_cells(z, RES)[0].size == 0


def test_two_cones_one_saddle_at_the_col():
    z = np.maximum(cone((41, 61), (20, 15), 500.0), cone((41, 61), (20, 45), 400.0))
    pr = L.topographic_prominence(z)
    second = pr.peak == 20 * 61 + 45
    assert pr.prominence_m[second][0] == pytest.approx(100.0)  # 400 - col at 300
    rows, cols = L.saddle_cells(z, RES, prominence_m=30)
    assert list(zip(rows, cols)) == [(20, 35)]
    assert sorted(zip(*L.peak_cells(z, RES))) == [(20, 15), (20, 45)]
    # a smaller knob than the prominence threshold is neither a peak nor has a saddle
    assert L.saddle_cells(z, RES, prominence_m=150)[0].size == 0


def test_nearby_peaks_are_merged():
    z = np.maximum(cone((41, 41), (20, 18), 500.0, 50.0), cone((41, 41), (20, 21), 490.0, 50.0))
    assert L.peak_cells(z, RES, prominence_m=5, merge_m=0)[0].size == 2
    assert list(zip(*L.peak_cells(z, RES, prominence_m=5, merge_m=120))) == [(20, 18)]


# --- rivers, waterfalls, sinkholes, cliffs -------------------------------------------------------------
def test_tilted_valley_river_points_along_its_floor():
    z = valley()
    rows, cols = L.river_cells(z, RES, min_area_km2=0.3, spacing_m=300)
    assert rows.size >= 3
    assert set(cols.tolist()) == {20}
    gaps = np.diff(np.sort(rows))
    assert gaps.min() >= 5 and gaps.max() <= 10  # about every 300 m = 10 px, merged no closer than half
    assert L.river_cells(z, RES, min_area_km2=50.0)[0].size == 0


def test_steep_channel_drop_is_one_waterfall():
    z = valley()
    assert L.waterfall_cells(z, RES, min_area_km2=0.2, min_drop_m=25, reach_m=90)[0].size == 0
    z[:30] += 60.0  # a 60 m step across the valley between rows 29 and 30
    rows, cols = L.waterfall_cells(z, RES, min_area_km2=0.2, min_drop_m=25, reach_m=90)
    assert list(zip(rows, cols)) == [(29, 20)]


def test_pit_is_a_sinkhole_at_its_bottom():
    r, c = np.indices((40, 40))
    z = 500.0 - 0.5 * r                      # gentle plane draining south
    pit = np.hypot(r - 22, c - 13) < 4
    z[pit] -= 10.0 - 2.0 * np.hypot(r - 22, c - 13)[pit]
    assert list(zip(*L.sinkhole_cells(z, RES, min_depth_m=2))) == [(22, 13)]
    assert L.sinkhole_cells(z, RES, min_depth_m=20)[0].size == 0
    assert L.sinkhole_cells(z, RES, min_depth_m=2, max_area_m2=5 * RES * RES)[0].size == 0


def test_step_gives_cliff_points_along_it():
    r, c = np.indices((60, 40))
    z = 300.0 + 0.5 * r + np.where(c >= 20, 100.0, 0.0)
    rows, cols = L.cliff_cells(z, RES, min_slope_deg=45, min_length_m=90, spacing_m=300)
    assert set(cols.tolist()) <= {19, 20}
    assert rows.size >= 5
    d = np.hypot(np.subtract.outer(rows, rows), np.subtract.outer(cols, cols))
    assert d[np.triu_indices(rows.size, 1)].min() >= 10
    # a short steep patch is not a cliff
    z2 = 300.0 + 0.5 * r
    z2[10:12, 20:22] += 100.0
    assert L.cliff_cells(z2, RES, min_length_m=300)[0].size == 0


def test_nodata_is_ignored():
    z = cone((41, 41), (20, 20), 800.0)
    z[:, :5] = np.nan
    out = L.derive_cells(z, RES, seed=0, classes=["peak", "river", "cliff", "sinkhole"])
    assert list(zip(*out["peak"])) == [(20, 20)]
    for rows, cols in out.values():
        assert np.isfinite(z[rows, cols]).all()


# --- proxies --------------------------------------------------------------------------------------------
PROXY_PARAMS = dict(aerialway_lines_per_100km2=40, aerialway_min_gain_m=300, hut_per_100km2=60)


def test_proxy_classes_are_deterministic_for_a_seed():
    z = mountains()
    a = L.derive_cells(z, RES, seed=5, classes=["aerialway_station", "alpine_hut"], **PROXY_PARAMS)
    b = L.derive_cells(z, RES, seed=5, classes=["aerialway_station", "alpine_hut"], **PROXY_PARAMS)
    c = L.derive_cells(z, RES, seed=6, classes=["aerialway_station", "alpine_hut"], **PROXY_PARAMS)
    for name in a:
        assert a[name][0].size > 0
        np.testing.assert_array_equal(np.c_[a[name]], np.c_[b[name]])
    assert any(not np.array_equal(np.c_[a[n]], np.c_[c[n]]) for n in a)


def test_proxy_rules_hold():
    z = mountains()
    p = L.rule_params(**PROXY_PARAMS)
    out = L.derive_cells(z, RES, seed=1, **PROXY_PARAMS)
    sr, sc = out["aerialway_station"]
    assert sr.size % 2 == 0 and sr.size > 0
    top, bottom = z[sr[0::2], sc[0::2]], z[sr[1::2], sc[1::2]]
    length_m = RES * np.hypot(sr[0::2] - sr[1::2], sc[0::2] - sc[1::2])
    assert (top - bottom >= p["aerialway_min_gain_m"] - 10 * 15).all()  # upper station within 150 m of the top
    assert (length_m <= p["aerialway_max_length_m"] + 150).all()
    hr, hc = out["alpine_hut"]
    assert (z[hr, hc] >= np.quantile(z, p["hut_min_elev_quantile"])).all()
    assert (slope_deg(z, RES)[hr, hc] <= p["hut_max_slope_deg"]).all()


# --- terrain -> table, I/O, counts ----------------------------------------------------------------------
def test_derive_labels_table(terrain_factory):
    z = np.maximum(cone((41, 61), (20, 15), 500.0), cone((41, 61), (20, 45), 400.0))
    terrain = terrain_factory(z, region="test")
    df = L.derive_labels(terrain, seed=0, classes=["peak", "saddle"])
    assert list(df.columns) == L.LABEL_COLUMNS
    assert sorted(df["class"]) == ["peak", "peak", "saddle"]
    assert set(df["source"]) == {"derived"} and set(df["region"]) == {"test"}
    # the higher peak's lon/lat is the pixel centre of (20, 15)
    from pyproj import Transformer
    lon, lat = Transformer.from_crs(terrain.rio.crs, "EPSG:4326", always_xy=True).transform(
        float(terrain.x[15]), float(terrain.y[20]))
    peak = df[df["class"] == "peak"].iloc[0]
    assert (peak.lon, peak.lat) == pytest.approx((lon, lat))
    assert 11.9 < lon < 12.1 and 47.1 < lat < 47.3


def table(n_peaks=3, n_rivers=1, region="train"):
    rows = [(12.0 + i / 100, 47.0, "peak", "derived", region) for i in range(n_peaks)]
    rows += [(12.0, 47.0 + i / 100, "river", "derived", region) for i in range(n_rivers)]
    return pd.DataFrame(rows, columns=L.LABEL_COLUMNS)


def test_parquet_round_trip(tmp_path):
    df = pd.concat([table(), table(1, 2, "test")], ignore_index=True)
    paths = L.write_labels(df, tmp_path / "labels")
    assert {p.name for p in paths} == {f"{c}.parquet" for c in L.CLASSES}
    back = L.read_labels(tmp_path / "labels")
    key = ["class", "region", "lon", "lat"]
    pd.testing.assert_frame_equal(back.sort_values(key).reset_index(drop=True),
                                  df.sort_values(key).reset_index(drop=True))
    assert len(L.read_labels(tmp_path / "labels", classes=["river"])) == 3
    assert len(L.read_labels(tmp_path / "labels" / "peak.parquet")) == 4
    assert len(L.read_labels(tmp_path / "labels", classes=["cliff"])) == 0
    assert not list((tmp_path / "labels").glob("*.tmp"))


def test_bad_tables_and_paths(tmp_path):
    with pytest.raises(ValueError, match="unknown class"):
        L.write_labels(table().assign(**{"class": "volcano"}), tmp_path)
    with pytest.raises(ValueError, match="lacks column"):
        L.write_labels(table().drop(columns="region"), tmp_path)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        L.read_labels(tmp_path / "nope")
    L.write_labels(table(), tmp_path / "some", classes=["peak"])
    with pytest.raises(FileNotFoundError, match="river.parquet"):
        L.read_labels(tmp_path / "some", classes=["river"])


def test_check_counts():
    df = pd.concat([table(3, 1), table(1, 5, "test")], ignore_index=True)
    assert L.check_counts(df, {"peak": 3}, region="train") == {"peak": 3}
    with pytest.raises(L.InsufficientLabelsError, match=r"region 'train': river: 1 < 2, cliff: 0 < 1"):
        L.check_counts(df, {"peak": 2, "river": 2, "cliff": 1}, region="train")
    with pytest.raises(ValueError, match="unknown label class"):
        L.check_counts(df, {"volcano": 1})
    assert L.label_counts(df)["test"]["river"] == 5


def test_bad_dem():
    with pytest.raises(ValueError, match="2-D"):
        L.peak_cells(np.zeros(5), RES)
    with pytest.raises(ValueError, match="res_m"):
        L.peak_cells(np.zeros((5, 5)), -1)
    with pytest.raises(ValueError, match="no finite"):
        L.peak_cells(np.full((5, 5), np.nan), RES)


# --- the DVC stage notebook -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_terrain_dir(tmp_path_factory):
    synthetic = pytest.importorskip("topo2vec_lib.synthetic", reason="synthetic.py (engineer A) is absent")
    terrain = pytest.importorskip("topo2vec_lib.terrain", reason="terrain.py (engineer A) is absent")
    d = tmp_path_factory.mktemp("terrain")
    for region, center in [("train", (12.0, 47.2)), ("test", (7.6, 46.6))]:
        terrain.save_terrain(synthetic.synthetic_terrain(region, center, 5.0, 30), d / f"{region}.zarr")
    return d


@pytest.mark.slow
def test_labels_notebook_smoke(tiny_terrain_dir, tmp_path, notebook_runner):
    """A short class fails the stage before anything is written (validate first, write last); a run that
    passes writes tables, map and metrics that agree."""
    import papermill

    outs = dict(out_dir=str(tmp_path / "labels"), plots_dir=str(tmp_path / "plots"),
                metrics_path=str(tmp_path / "metrics" / "labels.json"))
    params = dict(terrain_dir=str(tiny_terrain_dir), **outs, min_train_exp1=1, min_test_exp1=1, min_train_exp2=0)
    with pytest.raises(papermill.PapermillExecutionError,
                       match=r"nothing was written.*too few labels in region 'test': aerialway_station: \d+ < 1000000"):
        notebook_runner("labels", tmp_path / "nb", {**params, "min_test_exp2": 10**6})
    assert not (tmp_path / "labels").exists() and not (tmp_path / "plots").exists()
    assert not (tmp_path / "metrics").exists()

    notebook_runner("labels", tmp_path / "nb", {**params, "min_test_exp2": 0})
    metrics = json.loads((tmp_path / "metrics" / "labels.json").read_text())
    assert set(metrics["counts"]) == {"train", "test"} and metrics["short"] == {}
    df = L.read_labels(tmp_path / "labels")
    assert set(df["region"]) == {"train", "test"}
    for region in ("train", "test"):
        assert metrics["counts"][region] == {c: int(((df["region"] == region) & (df["class"] == c)).sum())
                                             for c in L.CLASSES}
        assert metrics["counts"][region]["peak"] >= 1
    assert (tmp_path / "plots" / "labels_map.png").stat().st_size > 10_000


# ------------------------------------------------------------------------------------------- label noise
def _noise_table(n_per=(10, 3, 1)):
    """Labels at lat 47 (the study's latitudes): groups (peak, train) x n_per[0], (saddle, test) x n_per[1],
    (cliff, train) x n_per[2], with an id column to follow rows and an OSM-style extra column."""
    rows = []
    for (cls, region), n in zip([("peak", "train"), ("saddle", "test"), ("cliff", "train")], n_per):
        for i in range(n):
            rows.append({"lon": 12.0 + 0.01 * i, "lat": 47.0 + 0.001 * len(rows), "class": cls, "source": "derived",
                         "region": region, "osm_id": len(rows)})
    return pd.DataFrame(rows)


def test_perturb_labels_jitter_has_the_gaussian_displacement_it_promises():
    from pyproj import Geod

    n, sigma = 20_000, 60.0
    df = pd.DataFrame({"lon": np.full(n, 12.0), "lat": np.full(n, 47.2), "class": "peak", "source": "derived",
                       "region": "train"})
    out = L.perturb_labels(df, sigma_m=sigma, seed=3)
    az, _, dist = Geod(ellps="WGS84").inv(df["lon"].to_numpy(), df["lat"].to_numpy(), out["lon"].to_numpy(),
                                          out["lat"].to_numpy())
    east, north = dist * np.sin(np.radians(az)), dist * np.cos(np.radians(az))
    assert abs(dist.mean() / (sigma * np.sqrt(np.pi / 2)) - 1) < 0.02          # Rayleigh mean: 75.2 m
    assert abs(east.std() / sigma - 1) < 0.03 and abs(north.std() / sigma - 1) < 0.03
    assert abs(east.mean()) < 4 * sigma / np.sqrt(n) and abs(north.mean()) < 4 * sigma / np.sqrt(n)
    assert abs(np.corrcoef(east, north)[0, 1]) < 0.03
    assert list(out.columns) == list(df.columns) and (out["class"] == "peak").all()


def test_perturb_labels_is_reproducible_and_off_by_default():
    df = _noise_table()
    assert L.perturb_labels(df).equals(df)
    assert L.perturb_labels(df, 0.0, 0.0, seed=9).equals(df)
    a, b = L.perturb_labels(df, 30.0, 0.3, seed=1), L.perturb_labels(df, 30.0, 0.3, seed=1)
    assert a.equals(b)
    assert not np.allclose(a["lon"], L.perturb_labels(df, 30.0, 0.3, seed=2)["lon"])
    assert df["lon"].iloc[0] == 12.0                                           # the input is not modified


def test_perturb_labels_drops_a_share_of_every_class_but_never_all():
    df = _noise_table((10, 3, 1))
    out = L.perturb_labels(df, drop_fraction=0.3, seed=0)
    counts = out.groupby(["class", "region"]).size().to_dict()
    assert counts == {("peak", "train"): 7, ("saddle", "test"): 2, ("cliff", "train"): 1}   # 10-3, 3-1, 1-0
    heavy = L.perturb_labels(df, drop_fraction=0.9, seed=0).groupby("class").size().to_dict()
    assert heavy == {"peak": 1, "saddle": 1, "cliff": 1}                      # every class kept
    assert set(out.columns) == set(df.columns) and (out["source"] == "derived").all()
    assert np.array_equal(out[["lon", "lat"]].to_numpy(), df.set_index("osm_id").loc[out["osm_id"], ["lon", "lat"]]
                          .to_numpy())                                        # no jitter asked: positions kept


def test_perturb_labels_nested_drops_and_jitter_independent_of_the_drop():
    df = _noise_table((40, 20, 5))
    light, heavy = (L.perturb_labels(df, 50.0, f, seed=4) for f in (0.2, 0.5))
    assert set(heavy["osm_id"]) < set(light["osm_id"])                        # nested
    moved = L.perturb_labels(df, 50.0, 0.0, seed=4).set_index("osm_id")
    assert np.array_equal(heavy[["lon", "lat"]].to_numpy(), moved.loc[heavy["osm_id"], ["lon", "lat"]].to_numpy())


@pytest.mark.parametrize("kw", [{"sigma_m": -1.0}, {"sigma_m": float("nan")}, {"drop_fraction": 1.0},
                                {"drop_fraction": -0.1}, {"sigma_m": True}])
def test_perturb_labels_bad_values(kw):
    with pytest.raises(ValueError, match=list(kw)[0]):
        L.perturb_labels(_noise_table(), **kw)


@pytest.mark.slow
def test_labels_notebook_tiled_on_a_local_cluster_equals_one_piece(tiny_terrain_dir, tmp_path, notebook_runner):
    """The stage's tiled path (windows wider than tile_px, a dask.distributed LocalCluster of 2 processes)
    writes the same tables as its one-piece path; a tile smaller than the rules' reach fails before any work,
    and so does a scheduler address that does not answer, both writing nothing."""
    import papermill

    common = dict(terrain_dir=str(tiny_terrain_dir), min_train_exp1=0, min_test_exp1=0, min_train_exp2=0,
                  min_test_exp2=0)

    def outs(name):
        return dict(out_dir=str(tmp_path / name / "labels"), plots_dir=str(tmp_path / name / "plots"),
                    metrics_path=str(tmp_path / name / "metrics.json"))
    notebook_runner("labels", tmp_path / "nb1", {**common, **outs("one"), "tile_px": 4096})
    notebook_runner("labels", tmp_path / "nb2", {**common, **outs("tiled"), "tile_px": 136, "n_workers": 2})
    one, tiled = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("one", "tiled"))
    assert one["tiled"] == {"train": False, "test": False} and tiled["tiled"] == {"train": True, "test": True}
    assert one["counts"] == tiled["counts"]
    a, b = L.read_labels(tmp_path / "one" / "labels"), L.read_labels(tmp_path / "tiled" / "labels")
    key = ["region", "class", "lon", "lat"]
    assert a.sort_values(key).reset_index(drop=True).equals(b.sort_values(key).reset_index(drop=True))

    with pytest.raises(papermill.PapermillExecutionError, match="tile_px = 100 is smaller than the "
                                                               "aerialway_station reach of 135 cells"):
        notebook_runner("labels", tmp_path / "nb3", {**common, **outs("small"), "tile_px": 100})
    with pytest.raises(papermill.PapermillExecutionError, match="dask scheduler 'tcp://127.0.0.1:9' does not answer"):
        notebook_runner("labels", tmp_path / "nb4", {**common, **outs("nosched"), "tile_px": 136,
                                                     "scheduler": "tcp://127.0.0.1:9"})
    for name in ("small", "nosched"):
        assert not (tmp_path / name).exists()
