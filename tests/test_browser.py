"""The generated web maps open in headless Chromium with no network: they render and log no errors."""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
from browser import image_is_varied, load_page, requires_chromium

from topo2vec_lib import maps

pytestmark = [pytest.mark.browser, requires_chromium]


@pytest.fixture(scope="module")
def terrain():
    from conftest import make_terrain

    rng = np.random.default_rng(0)
    z = rng.normal(0, 4, size=(120, 120)).cumsum(0).cumsum(1).astype(np.float32)
    return make_terrain(z, center_lonlat=(7.6, 46.6), region="test")


def _scores(terrain, names=("peak", "saddle", "river", "cliff")):
    import xarray as xr

    rng = np.random.default_rng(1)
    x, y = terrain.x.values[8:-8:3], terrain.y.values[8:-8:3]
    s = rng.normal(-0.5, 1, size=(len(names), y.size, x.size)).astype(np.float32)
    return xr.DataArray(s, dims=("class", "y", "x"), coords={"class": list(names), "y": y, "x": x})


def _overlay_images(dom: str) -> list[str]:
    """The <img> elements Leaflet created for image overlays."""
    return re.findall(r"<img[^>]*leaflet-image-layer[^>]*>", dom)


def _centre_is_varied(png, min_colours=50) -> bool:
    """The middle of the screenshot (where the overlays are) holds many colours, not a blank grey map."""
    import matplotlib.image as mpimg

    img = mpimg.imread(png)[..., :3]
    h, w = img.shape[:2]
    mid = img[h // 4: 3 * h // 4, w // 4: 3 * w // 4]
    return len(np.unique((mid.reshape(-1, 3) * 255).astype(np.uint8), axis=0)) >= min_colours


def test_multiscale_map_renders_offline(terrain, tmp_path):
    from topo2vec_lib.grid import xy_to_lonlat

    hs = maps.hillshade_raster(terrain)
    lon, lat = xy_to_lonlat(terrain.rio.crs, terrain.x.values[20:100:10], terrain.y.values[20:100:10])
    labels = pd.DataFrame({"lon": lon, "lat": lat, "class": ["peak", "river"] * 4})
    m = maps.multiscale_map(hs, {30: _scores(terrain), 60: _scores(terrain)}, terrain.rio.crs, labels)
    path = maps.save_map(m, tmp_path / "multiscale.html")
    page = load_page(path, screenshot=tmp_path / "shot.png")
    assert page.console_errors == []
    assert page.screenshot is not None and image_is_varied(page.screenshot) and _centre_is_varied(page.screenshot)
    for name in ("hillshade (terrain)", "peak @ 30 m/px", "cliff @ 60 m/px", "label points (8 of 8)",
                 "predicted class"):
        assert name in page.dom, name
    # hillshade + the 4 classes of the first scale are shown; the 60 m/px layers wait, off, in the layer control
    assert len(_overlay_images(page.dom)) == 1 + 4
    assert "leaflet-control-layers" in page.dom


def test_retrieval_map_renders_offline(terrain, tmp_path):
    from topo2vec_lib.grid import xy_to_lonlat

    hs = maps.hillshade_raster(terrain)
    q = xy_to_lonlat(terrain.rio.crs, terrain.x.values[[30, 40]], terrain.y.values[[30, 40]])
    mt = xy_to_lonlat(terrain.rio.crs, terrain.x.values[50:90:8], terrain.y.values[50:90:8])
    m = maps.retrieval_map(hs, terrain.rio.crs, q, mt, match_labels=["peak"] * 5)
    path = maps.save_map(m, tmp_path / "retrieval.html")
    page = load_page(path, screenshot=tmp_path / "shot.png")
    assert page.console_errors == []
    assert page.screenshot is not None and _centre_is_varied(page.screenshot)
    for name in ("queries (2)", "matches (5)", "retrieved place"):
        assert name in page.dom, name
    assert page.dom.count("leaflet-interactive") >= 7          # the 7 circle markers were drawn


def test_cdn_html_fails_offline_so_the_check_can_fail(terrain, tmp_path):
    """Control: folium's own HTML (Leaflet from a CDN) does not work without network, and the check sees it."""
    m = maps.base_map(maps.hillshade_raster(terrain), terrain.rio.crs)
    path = tmp_path / "cdn.html"
    m.save(str(path))
    page = load_page(path)
    assert page.console_errors, "expected errors for CDN scripts with no network"
    assert _overlay_images(page.dom) == []
