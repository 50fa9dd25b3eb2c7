"""OpenStreetMap labels through the Overpass API, and a user's own label files, as label tables.

:func:`osm_labels` asks Overpass for each class's tag (the paper's eight classes, :data:`OSM_CLASSES`) over a
lon/lat box split into ``tile_deg`` tiles, so every request stays small. Point classes come from nodes
(and from the centre of ways, e.g. a hut mapped as a building outline); line classes (rivers, cliffs) are
ways fetched with ``out geom`` and turned into points every ``spacing_m`` metres of geodesic length along
each way (not one per vertex, which over-samples densely mapped lines). Raw answers are cached on disk,
keyed by a hash of the query, so a re-run (or a new ``spacing_m``) sends no request. Requests are spaced by
a polite ``delay_s`` and retried with backoff on 429/5xx/time-outs (:mod:`topo2vec_lib.download`).

Label table (docs/architecture.md): ``pandas.DataFrame`` with columns ``lon, lat, class, source, region,
osm_id`` (lon/lat EPSG:4326 degrees; ``osm_id`` nullable Int64, NA for user files).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import urllib.parse
from pathlib import Path

import numpy as np
import pandas as pd

from .download import DownloadError, HttpConfig, TransientError, fetch_bytes
from .grid import check_bounds_lonlat, lonlat_to_xy

DEFAULT_ENDPOINT = "https://overpass-api.de/api/interpreter"
"""The main public Overpass instance (others: https://overpass.kumi.systems/api/interpreter, ...)."""

COLUMNS = ["lon", "lat", "class", "source", "region", "osm_id"]


@dataclasses.dataclass(frozen=True)
class OsmClass:
    key: str
    value: str
    geometry: str  # "point" | "line"


OSM_CLASSES: dict[str, OsmClass] = {
    "peak": OsmClass("natural", "peak", "point"),
    "saddle": OsmClass("natural", "saddle", "point"),
    "river": OsmClass("waterway", "river", "line"),
    "cliff": OsmClass("natural", "cliff", "line"),
    "aerialway_station": OsmClass("aerialway", "station", "point"),
    "alpine_hut": OsmClass("tourism", "alpine_hut", "point"),
    "waterfall": OsmClass("waterway", "waterfall", "point"),
    "sinkhole": OsmClass("natural", "sinkhole", "point"),
}
"""The paper's classes (Exp. 1: peak, saddle, river, cliff; Exp. 2: the other four) and their OSM tags."""


# ---------------------------------------------------------------- queries and tiles
def overpass_query(cls: OsmClass, bbox_lonlat, timeout_s: int = 90) -> str:
    """Overpass QL for one class in one box (lon_min, lat_min, lon_max, lat_max); JSON output.

    Points: nodes, and ways as their centre (``out center``). Lines: ways with their full geometry
    (``out geom``) plus any nodes carrying the tag.
    """
    w, s, e, n = (f"{float(v):.6f}".rstrip("0").rstrip(".") for v in bbox_lonlat)
    box = f"({s},{w},{n},{e})"  # Overpass order: south, west, north, east
    tag = f'["{cls.key}"="{cls.value}"]'
    out = "out center;" if cls.geometry == "point" else "out geom;"
    return f"[out:json][timeout:{int(timeout_s)}];(node{tag}{box};way{tag}{box};);{out}"


def bbox_tiles(bounds_lonlat, tile_deg: float = 0.5) -> list[tuple[float, float, float, float]]:
    """Split (lon_min, lat_min, lon_max, lat_max) into boxes of at most ``tile_deg`` degrees, on a
    ``tile_deg`` grid anchored at (lon_min, lat_min); south to north, west to east."""
    lon0, lat0, lon1, lat1 = check_bounds_lonlat(bounds_lonlat)
    if not (tile_deg > 0):
        raise ValueError(f"tile_deg must be > 0 degrees, got {tile_deg!r}")
    nx, ny = math.ceil((lon1 - lon0) / tile_deg - 1e-9), math.ceil((lat1 - lat0) / tile_deg - 1e-9)
    lons = [round(min(lon1, lon0 + i * tile_deg), 6) for i in range(nx + 1)]
    lats = [round(min(lat1, lat0 + j * tile_deg), 6) for j in range(ny + 1)]
    return [(lons[i], lats[j], lons[i + 1], lats[j + 1]) for j in range(ny) for i in range(nx)]


# ---------------------------------------------------------------- geometry
def points_along(lon, lat, spacing_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Points every ``spacing_m`` metres of geodesic (WGS84) length along a polyline given by vertex arrays.

    The first point is ``spacing_m / 2`` from the start, so consecutive ways of one river do not double up
    at their shared vertex; a line shorter than ``spacing_m`` gives its midpoint. Returns (lon, lat) arrays.
    """
    from pyproj import Geod

    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    if not spacing_m > 0:
        raise ValueError(f"spacing_m must be > 0 metres, got {spacing_m!r}")
    if lon.size == 0:
        return lon, lat
    geod = Geod(ellps="WGS84")
    az, _, dist = geod.inv(lon[:-1], lat[:-1], lon[1:], lat[1:])
    az, dist = np.atleast_1d(az), np.atleast_1d(dist)
    cum = np.concatenate([[0.0], np.cumsum(dist)])
    length = cum[-1]
    if length == 0:
        return lon[:1], lat[:1]
    s = np.arange(spacing_m / 2, length, spacing_m) if length >= spacing_m else np.array([length / 2])
    i = np.clip(np.searchsorted(cum, s, side="right") - 1, 0, dist.size - 1)
    plon, plat, _ = geod.fwd(lon[i], lat[i], az[i], s - cum[i])
    return np.asarray(plon, dtype=float), np.asarray(plat, dtype=float)


def elements_to_points(elements, geometry: str, spacing_m: float) -> list[tuple[str, int, float, float]]:
    """(osm_type, osm_id, lon, lat) rows from Overpass JSON ``elements`` (nodes, ways with center/geometry)."""
    rows = []
    for el in elements:
        kind, osm_id = el.get("type"), int(el.get("id", -1))
        if "lat" in el and "lon" in el:
            rows.append((kind, osm_id, float(el["lon"]), float(el["lat"])))
        elif "center" in el:
            rows.append((kind, osm_id, float(el["center"]["lon"]), float(el["center"]["lat"])))
        elif el.get("geometry"):
            pts = [p for p in el["geometry"] if p]  # Overpass writes null for vertices it could not place
            lon, lat = np.array([p["lon"] for p in pts]), np.array([p["lat"] for p in pts])
            if geometry == "line":
                lon, lat = points_along(lon, lat, spacing_m)
                rows.extend((kind, osm_id, float(x), float(y)) for x, y in zip(lon, lat))
            else:
                rows.append((kind, osm_id, float(lon.mean()), float(lat.mean())))
    return rows


# ---------------------------------------------------------------- Overpass
def _check_overpass_json(url: str):
    def check(body: bytes) -> None:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            head = body[:200].decode("utf-8", "replace").strip()
            raise DownloadError(f"{url}: the answer is not valid JSON ({err}); it starts with {head!r}",
                                url=url) from None
        if not isinstance(doc, dict) or not isinstance(doc.get("elements"), list):
            raise DownloadError(f"{url}: the answer is JSON but has no 'elements' list", url=url)
        remark = str(doc.get("remark", ""))
        if "runtime error" in remark or "timed out" in remark:  # Overpass ran out of time or memory
            raise TransientError(f"Overpass reported: {remark.strip()}")

    return check


def cache_path(query: str, cache_dir: str | os.PathLike) -> Path:
    """Where the answer to ``query`` is cached: ``cache_dir/<first 24 hex of sha256(query)>.json``."""
    return Path(cache_dir) / f"{hashlib.sha256(query.encode()).hexdigest()[:24]}.json"


def overpass(query: str, cache_dir: str | os.PathLike, endpoint: str | None = None,
             config: HttpConfig | None = None) -> tuple[dict, bool]:
    """The JSON answer to ``query``, from ``cache_dir/<sha256>.json`` or the endpoint; (doc, was_cached).

    Only complete, well-formed answers are cached (atomically). Malformed JSON raises
    :class:`DownloadError` naming the URL; an Overpass run-time error (``remark``) is retried.
    """
    from .storage import atomic_path

    path = cache_path(query, cache_dir)
    if path.exists():
        return json.loads(path.read_bytes()), True
    endpoint = endpoint or DEFAULT_ENDPOINT
    body = fetch_bytes(endpoint, data=urllib.parse.urlencode({"data": query}).encode(),
                       headers={"Content-Type": "application/x-www-form-urlencoded"}, config=config,
                       check=_check_overpass_json(endpoint))
    with atomic_path(path) as tmp:
        tmp.write_bytes(body)
    return json.loads(body), False


def osm_labels(classes, bounds_lonlat, region: str, cache_dir: str | os.PathLike = "data/raw/osm",
               endpoint: str | None = None, spacing_m: float = 300.0, tile_deg: float = 0.5,
               delay_s: float = 1.0, timeout_s: int = 90, config: HttpConfig | None = None,
               progress: bool = True) -> pd.DataFrame:
    """OSM points of ``classes`` (names of :data:`OSM_CLASSES`) inside ``bounds_lonlat`` as a label table.

    ``bounds_lonlat``: (lon_min, lat_min, lon_max, lat_max) degrees, split into ``tile_deg`` tiles (one
    request per class and tile). ``endpoint`` None means :data:`DEFAULT_ENDPOINT` (read at call time).
    ``spacing_m``: metres between points along line classes. ``delay_s``:
    pause between two network requests (cache hits are free). ``timeout_s``: Overpass server-side limit;
    the client's read time-out defaults to ``timeout_s + 30``. Points are de-duplicated (same OSM element,
    same position: a way seen from two tiles) and clipped to ``bounds_lonlat``.
    Returns columns ``lon, lat, class, source="osm", region, osm_id``, sorted by class, osm_id, lon, lat.
    """
    from tqdm import tqdm

    classes = [classes] if isinstance(classes, str) else list(classes)
    unknown = [c for c in classes if c not in OSM_CLASSES]
    if unknown or not classes:
        raise ValueError(f"unknown OSM classes {unknown}: valid classes are {list(OSM_CLASSES)}")
    if not spacing_m > 0:
        raise ValueError(f"spacing_m must be > 0 metres, got {spacing_m!r}")
    box = check_bounds_lonlat(bounds_lonlat)
    config = config or HttpConfig(read_timeout_s=timeout_s + 30.0)
    jobs = [(c, t) for c in classes for t in bbox_tiles(box, tile_deg)]
    rows, n_sent = [], 0
    for name, tile in tqdm(jobs, desc="overpass", unit="query", disable=not progress):
        cls = OSM_CLASSES[name]
        query = overpass_query(cls, tile, timeout_s)
        cache = Path(cache_dir) / name
        if n_sent and not cache_path(query, cache).exists():
            config.sleep(delay_s)  # polite pause before the next real request
        doc, cached = overpass(query, cache, endpoint, config)
        n_sent += not cached
        rows.extend((name, *r) for r in elements_to_points(doc["elements"], cls.geometry, spacing_m))

    df = pd.DataFrame(rows, columns=["class", "osm_type", "osm_id", "lon", "lat"])
    df = df[(df.lon >= box[0]) & (df.lon <= box[2]) & (df.lat >= box[1]) & (df.lat <= box[3])]
    key = [df["class"], df.osm_type, df.osm_id, df.lon.round(7), df.lat.round(7)]
    df = df[~pd.concat(key, axis=1).duplicated()]
    df = df.assign(source="osm", region=str(region), osm_id=df.osm_id.astype("Int64"))
    return _table(df.sort_values(["class", "osm_id", "lon", "lat"]))


def terrain_bounds_lonlat(terrain) -> tuple[float, float, float, float]:
    """(lon_min, lat_min, lon_max, lat_max) degrees enclosing a terrain DataArray's footprint (edges densified)."""
    from rasterio.warp import transform_bounds

    return tuple(float(v) for v in transform_bounds(terrain.rio.crs, "EPSG:4326", *terrain.rio.bounds(),
                                                    densify_pts=21))


def osm_labels_for_terrain(terrain, classes, **kwargs) -> pd.DataFrame:
    """:func:`osm_labels` over a terrain's footprint, keeping the points inside its x/y window.

    ``region`` comes from ``terrain.attrs["region"]``; ``kwargs`` go to :func:`osm_labels` (``cache_dir``,
    ``endpoint``, ``spacing_m``, ``tile_deg``, ``delay_s``, ``timeout_s``, ``config``, ``progress``).
    """
    df = osm_labels(classes, terrain_bounds_lonlat(terrain), str(terrain.attrs.get("region", "window")), **kwargs)
    return clip_to_terrain(df, terrain)


def clip_to_terrain(df: pd.DataFrame, terrain) -> pd.DataFrame:
    """The rows of a label table whose lon/lat fall inside the terrain's x/y window."""
    x, y = lonlat_to_xy(terrain.rio.crs, df.lon.to_numpy(), df.lat.to_numpy())
    xmin, ymin, xmax, ymax = terrain.rio.bounds()
    inside = (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)
    return df[inside].reset_index(drop=True)


def _table(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"lon": df["lon"].astype(float).to_numpy(), "lat": df["lat"].astype(float).to_numpy(),
                        "class": df["class"].astype(str).to_numpy(), "source": df["source"].astype(str).to_numpy(),
                        "region": df["region"].astype(str).to_numpy(),
                        "osm_id": pd.array(df["osm_id"].to_numpy(), dtype="Int64")})
    return out[COLUMNS]


# ---------------------------------------------------------------- a user's own files
def read_label_files(paths_by_class: dict, region: str, spacing_m: float = 300.0) -> pd.DataFrame:
    """A user's labels as the same table: ``{class: path or [paths]}`` of GeoJSON, CSV or Parquet files.

    GeoJSON (``.geojson``/``.json``, EPSG:4326): Points and MultiPoints as they are, (Multi)LineStrings as
    points every ``spacing_m`` metres, (Multi)Polygons as the mean of their outer ring. CSV / Parquet: columns
    ``lon`` and ``lat`` (or ``longitude`` and ``latitude``) in degrees. ``source`` is ``"file"``, ``osm_id``
    is NA. Raises ValueError for an unknown format, missing columns or coordinates out of range.
    """
    if not isinstance(paths_by_class, dict) or not paths_by_class:
        raise ValueError(f"paths_by_class must be a non-empty {{class: path}} mapping, got {paths_by_class!r}")
    frames = []
    for name, paths in paths_by_class.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"class names must be non-empty strings, got {name!r}")
        for path in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
            lon, lat = _read_points(Path(path), spacing_m)
            bad = ~(np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180) & (np.abs(lat) <= 90))
            if bad.any():
                i = int(np.argmax(bad))
                raise ValueError(f"{path}: {int(bad.sum())} points are not valid lon/lat degrees "
                                 f"(first: lon={float(lon[i])}, lat={float(lat[i])}); lon must be -180..180, lat -90..90")
            frames.append(pd.DataFrame({"lon": lon, "lat": lat, "class": name, "source": "file",
                                        "region": str(region), "osm_id": pd.NA}))
    return _table(pd.concat(frames, ignore_index=True))


def _read_points(path: Path, spacing_m: float) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"label file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        pts = _geojson_points(json.loads(path.read_text()), spacing_m, path)
        arr = np.array(pts, dtype=float).reshape(-1, 2)
        return arr[:, 0], arr[:, 1]
    if suffix == ".csv":
        df = pd.read_csv(path)
    elif suffix in (".parquet", ".pq"):
        df = pd.read_parquet(path)
    else:
        raise ValueError(f"{path}: unknown label file type {suffix!r}: use .geojson, .json, .csv or .parquet")
    for lon_col, lat_col in (("lon", "lat"), ("longitude", "latitude")):
        if lon_col in df.columns and lat_col in df.columns:
            return (pd.to_numeric(df[lon_col], errors="coerce").to_numpy(float),
                    pd.to_numeric(df[lat_col], errors="coerce").to_numpy(float))
    raise ValueError(f"{path}: needs columns 'lon' and 'lat' (or 'longitude' and 'latitude'), has {list(df.columns)}")


def _geojson_points(obj, spacing_m: float, path) -> list[tuple[float, float]]:
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "FeatureCollection":
        return [p for f in obj.get("features", []) for p in _geojson_points(f, spacing_m, path)]
    if kind == "Feature":
        return _geojson_points(obj["geometry"], spacing_m, path) if obj.get("geometry") else []
    if kind == "GeometryCollection":
        return [p for g in obj.get("geometries", []) for p in _geojson_points(g, spacing_m, path)]
    coords = obj.get("coordinates") if isinstance(obj, dict) else None
    if kind == "Point":
        return [(coords[0], coords[1])]
    if kind == "MultiPoint":
        return [(c[0], c[1]) for c in coords]
    if kind in ("LineString", "MultiLineString"):
        lines = [coords] if kind == "LineString" else coords
        out = []
        for line in lines:
            a = np.asarray(line, dtype=float)[:, :2]
            lon, lat = points_along(a[:, 0], a[:, 1], spacing_m)
            out.extend(zip(lon.tolist(), lat.tolist()))
        return out
    if kind in ("Polygon", "MultiPolygon"):
        polys = [coords] if kind == "Polygon" else coords
        return [tuple(np.asarray(poly[0], dtype=float)[:-1, :2].mean(axis=0)) for poly in polys]
    raise ValueError(f"{path}: unsupported GeoJSON object of type {kind!r}")
