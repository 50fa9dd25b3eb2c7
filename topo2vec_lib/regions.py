"""The study's regions as parameters: a lon/lat box (or a polygon file) per region, with its window, and the CRS.

``params.yaml`` ``data.regions`` holds one entry per region (the study needs ``train`` and ``test``)::

    regions:
      train: {box: [10.0, 45.0, 15.0, 50.0], center: [12.0, 47.2], size_km: 60}
      test:  {box: [5.0, 45.0, 10.0, 50.0], center: [7.6, 46.6], size_km: 60}

- ``box``: ``[lon_min, lat_min, lon_max, lat_max]`` (degrees, lon/lat order), or ``polygon``: the path of a GeoJSON
  file holding one polygon (its exterior ring; the box is then its bounding box). One of the two.
- ``center``: ``[lon, lat]`` of the window, or null for the middle of the box.
- ``size_km``: the window's side (a number: a square) or ``[width_km, height_km]``.

The window must lie inside its region (box or polygon). A box crossing the antimeridian (lon_min > lon_max), an
empty box, lat_min >= lat_max and a box reaching a pole are errors naming the value (:func:`grid.check_region_box`).

``data.crs``: a projected CRS in metres, or ``auto``: EPSG:3035 (ETRS89-LAEA, the paper's DEM's) when every
region lies in its area of use (Europe), else a Lambert azimuthal equal-area projection centred on the
regions (:func:`auto_crs`), named by its PROJ string so it is the same on every machine.
Every value is a plain YAML value, so ``dvc exp run -S data.regions.train.center=[-118.2,34.3]`` changes one.
"""
from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from .grid import check_crs, check_lonlat, check_region_box, check_size_km, region_window

REGION_NAMES = ("train", "test")
"""The regions the study needs (training places and probe training in ``train``, probe testing in ``test``)."""
REGION_KEYS = ("box", "polygon", "center", "size_km")
EPSG3035_AREA = (-35.58, 24.60, 44.83, 84.73)
"""EPSG:3035's area of use (lon_min, lat_min, lon_max, lat_max), from the EPSG registry."""


@dataclasses.dataclass(frozen=True)
class Region:
    """One study region: its lon/lat box, optional polygon ring, and its window (centre, size)."""

    name: str
    box: tuple[float, float, float, float]
    center: tuple[float, float]
    size_km: tuple[float, float]                     # (width, height)
    polygon: tuple[tuple[float, float], ...] | None = None
    polygon_path: str | None = None

    @property
    def region_lonlat(self) -> list[float]:
        return [float(v) for v in self.box]

    def window(self, res_m: float, crs: str) -> tuple[float, float, float, float]:
        """The window's bounds (xmin, ymin, xmax, ymax) in metres of ``crs``, checked to lie in the region."""
        size: Any = self.size_km[0] if self.size_km[0] == self.size_km[1] else list(self.size_km)
        try:
            return region_window(self.name, list(self.center), size, res_m, crs, region_lonlat=self.box,
                                 polygon=None if self.polygon is None else np.asarray(self.polygon))
        except ValueError as err:
            raise ValueError(f"regions.{self.name}: {err}") from None


def read_polygon(path, what: str = "polygon") -> tuple[tuple[float, float], ...]:
    """The exterior ring (lon/lat vertices) of the one polygon in a GeoJSON file (a Polygon, a MultiPolygon of one
    part, or a Feature / FeatureCollection holding one of them); ValueError naming the file otherwise."""
    p = Path(path)
    if not p.is_file():
        raise ValueError(f"{what}={str(path)!r} is not an existing file (a GeoJSON polygon in lon/lat)")
    try:
        obj = json.loads(p.read_text())
    except (OSError, ValueError) as err:
        raise ValueError(f"{what}={str(path)!r} is not readable GeoJSON ({err})") from None
    geoms = []
    if isinstance(obj, dict) and obj.get("type") == "FeatureCollection":
        geoms = [f.get("geometry") for f in obj.get("features", []) if isinstance(f, dict)]
    elif isinstance(obj, dict) and obj.get("type") == "Feature":
        geoms = [obj.get("geometry")]
    elif isinstance(obj, dict):
        geoms = [obj]
    rings = []
    for g in geoms:
        if isinstance(g, dict) and g.get("type") == "Polygon":
            rings.append(g["coordinates"][0])
        elif isinstance(g, dict) and g.get("type") == "MultiPolygon":
            rings.extend(part[0] for part in g["coordinates"])
    if len(rings) != 1:
        raise ValueError(f"{what}={str(path)!r} must hold exactly one polygon (GeoJSON Polygon, or one Feature of "
                         f"one), found {len(rings)}")
    try:
        ring = np.asarray(rings[0], np.float64)[:, :2]
    except (TypeError, ValueError, IndexError):
        raise ValueError(f"{what}={str(path)!r}: its polygon's coordinates are not [lon, lat] pairs") from None
    if ring.shape[0] < 4 or not np.isfinite(ring).all():
        raise ValueError(f"{what}={str(path)!r}: its polygon needs at least 3 distinct finite [lon, lat] vertices")
    if np.array_equal(ring[0], ring[-1]):
        ring = ring[:-1]
    check_region_box([ring[:, 0].min(), ring[:, 1].min(), ring[:, 0].max(), ring[:, 1].max()],
                     f"{what} (bounding box of {p.name})")
    return tuple((float(a), float(b)) for a, b in ring)


def region_from(name: str, value, key: str | None = None) -> Region:
    """A :class:`Region` from its params.yaml entry; ValueError ``"<key>.<field>=...: ..."`` naming the value."""
    key = key or f"regions.{name}"
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}={value!r}: expected a mapping with box (or polygon), center and size_km")
    unknown = sorted(map(str, set(value) - set(REGION_KEYS)))
    if unknown:
        raise ValueError(f"{key}: unknown key(s) {unknown}; valid: {list(REGION_KEYS)}")
    has_box, has_poly = value.get("box") is not None, value.get("polygon") is not None
    if has_box == has_poly:
        raise ValueError(f"{key}: give exactly one of box ([lon_min, lat_min, lon_max, lat_max]) or polygon (a "
                         f"GeoJSON file), got {'both' if has_box else 'neither'}")
    polygon = None
    if has_box:
        box = check_region_box(value["box"], f"{key}.box")
    else:
        if not isinstance(value["polygon"], str) or not value["polygon"].strip():
            raise ValueError(f"{key}.polygon={value['polygon']!r}: expected the path of a GeoJSON file")
        polygon = read_polygon(value["polygon"], f"{key}.polygon")
        ring = np.asarray(polygon)
        box = (float(ring[:, 0].min()), float(ring[:, 1].min()), float(ring[:, 0].max()), float(ring[:, 1].max()))
    if "size_km" not in value:
        raise ValueError(f"{key}: lacks size_km (the window's side in km, or [width_km, height_km])")
    try:
        size = check_size_km(value["size_km"], f"{key}.size_km")
    except ValueError as err:
        raise ValueError(str(err) if str(err).startswith(key) else f"{key}.size_km: {err}") from None
    center = value.get("center")
    if center is None:
        center = ((box[0] + box[2]) / 2, (box[1] + box[3]) / 2)
    else:
        try:
            center = check_lonlat(center, f"{key}.center")
        except ValueError:
            raise ValueError(f"{key}.center={center!r}: expected [lon, lat] in degrees (lon -180..180, lat "
                             f"-90..90) or null for the middle of the box") from None
    return Region(name, box, (float(center[0]), float(center[1])), size, polygon,
                  None if polygon is None else str(value["polygon"]))


def regions_from(value, key: str = "regions") -> dict[str, Region]:
    """The study's regions from ``data.regions``: exactly :data:`REGION_NAMES`, each a valid entry."""
    if not isinstance(value, Mapping):
        raise ValueError(f"{key}={value!r}: expected a mapping of region names ({', '.join(REGION_NAMES)}) to "
                         f"{{box, center, size_km}}")
    names = set(map(str, value))
    if names != set(REGION_NAMES):
        raise ValueError(f"{key} must name exactly the regions {list(REGION_NAMES)}, got {sorted(names)}")
    return {n: region_from(n, value[n], f"{key}.{n}") for n in REGION_NAMES}


def auto_crs(regions: Mapping[str, Region] | list[Region]) -> str:
    """EPSG:3035 when every region's box lies in its area of use, else a local Lambert azimuthal equal-area
    projection centred (to 0.1 degree) on the middle of the regions' boxes (WGS84, metres)."""
    regs = list(regions.values()) if isinstance(regions, Mapping) else list(regions)
    if not regs:
        raise ValueError("auto_crs needs at least one region")
    a = EPSG3035_AREA
    if all(a[0] <= r.box[0] and r.box[2] <= a[2] and a[1] <= r.box[1] and r.box[3] <= a[3] for r in regs):
        return "EPSG:3035"
    lon0, lon1 = min(r.box[0] for r in regs), max(r.box[2] for r in regs)
    lat0, lat1 = min(r.box[1] for r in regs), max(r.box[3] for r in regs)
    lon_c, lat_c = round((lon0 + lon1) / 2, 1), round((lat0 + lat1) / 2, 1)
    return f"+proj=laea +lat_0={lat_c:g} +lon_0={lon_c:g} +x_0=0 +y_0=0 +datum=WGS84 +units=m +no_defs +type=crs"


def resolve_crs(crs, regions: Mapping[str, Region], key: str = "crs") -> str:
    """The study CRS: ``crs`` checked to be projected in metres, or :func:`auto_crs` for ``"auto"``."""
    if crs == "auto":
        return auto_crs(regions)
    if not isinstance(crs, str):
        raise ValueError(f"{key}={crs!r}: expected 'auto' or a CRS string such as 'EPSG:3035' or 'EPSG:32611'")
    try:
        return check_crs(crs)
    except ValueError as err:
        raise ValueError(f"{key}: {err} (or 'auto' for a local equal-area projection)") from None


def study_windows(regions_value, crs, res_m: float, key: str = "regions"
                  ) -> tuple[str, dict[str, Region], dict[str, tuple[float, float, float, float]]]:
    """Everything the terrain stage needs, checked: (resolved CRS, regions, window bounds per region)."""
    regions = regions_from(regions_value, key)
    study_crs = resolve_crs(crs, regions)
    return study_crs, regions, {n: r.window(res_m, study_crs) for n, r in regions.items()}


def window_pixels(bounds, res_m: float) -> tuple[int, int]:
    """``(ny, nx)`` of a window."""
    return (int(round((bounds[3] - bounds[1]) / res_m)), int(round((bounds[2] - bounds[0]) / res_m)))


def inscribed_size_km(region: Region, crs: str, res_m: float = 30.0, step_km: float = 2.0) -> tuple[float, float]:
    """About the largest ``[width_km, height_km]`` window centred on the region's centre that fits in it (a
    search in ``step_km`` steps: the paper's whole polygon as one window, e.g. for the scale benchmark)."""
    w, h = 2 * step_km, 2 * step_km
    grown = True
    while grown:
        grown = False
        for dw, dh in ((step_km, 0.0), (0.0, step_km)):
            try:
                dataclasses.replace(region, size_km=(w + dw, h + dh)).window(res_m, crs)
            except ValueError:
                continue
            w, h, grown = w + dw, h + dh, True
    if math.isclose(w, 2 * step_km) and math.isclose(h, 2 * step_km):
        region.window(res_m, crs)
    return w, h
