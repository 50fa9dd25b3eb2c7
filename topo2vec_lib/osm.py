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

Hostile input is refused, never repaired: an Overpass answer whose elements lack an id or a finite, in-range
position is a :class:`DownloadError` naming the URL and is not cached (a corrupt cached answer is fetched
again); a label file that is not valid GeoJSON/CSV/Parquet, has the wrong columns, non-numeric or non-finite
coordinates, lon outside -180..180 (367.6 is never wrapped to 7.6) or lat outside -90..90 is a ValueError
naming the file. :func:`check_label_table` checks any label table the same way. Swapped lon/lat within range
cannot be told from the numbers alone; :func:`clip_to_terrain` refuses a table in which more places fall
inside the terrain with lon and lat swapped than as given (see :func:`check_not_swapped`).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import numbers
import os
import urllib.parse
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .download import DownloadError, HttpConfig, TransientError, check_url, fetch_bytes
from .grid import check_bounds_lonlat, lonlat_to_xy

DEFAULT_ENDPOINT = "https://overpass-api.de/api/interpreter"
"""The main public Overpass instance (others: https://overpass.kumi.systems/api/interpreter, ...)."""

COLUMNS = ["lon", "lat", "class", "source", "region", "osm_id"]


@dataclasses.dataclass(frozen=True)
class OsmClass:
    """The OpenStreetMap tag of a class (``key=value``) and whether its features are points or lines."""

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
def _is_number(v) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _position_problem(p) -> str | None:
    """Why ``p`` (a ``{"lat", "lon"}`` mapping) is not a valid position, or None."""
    if not isinstance(p, dict) or not (_is_number(p.get("lat")) and _is_number(p.get("lon"))):
        return f"position {p!r} is not numeric lat/lon"
    lat, lon = float(p["lat"]), float(p["lon"])
    if not (math.isfinite(lat) and math.isfinite(lon) and -90 <= lat <= 90 and -180 <= lon <= 180):
        return f"position lat={lat}, lon={lon} is not finite lat -90..90, lon -180..180"
    return None


def element_problem(el) -> str | None:
    """Why an Overpass JSON element cannot give a labelled place, or None: it needs ``type`` node/way/relation,
    an integer ``id`` and a position (``lat``/``lon``, ``center`` or a ``geometry`` list; null vertices allowed)."""
    if not isinstance(el, dict):
        return f"element {el!r} is not an object"
    if el.get("type") not in ("node", "way", "relation") or not isinstance(el.get("id"), int) \
            or isinstance(el.get("id"), bool):
        return f"element {json.dumps(el)[:120]} has no type node/way/relation and integer id"
    where = f"{el['type']} {el['id']}"
    if "lat" in el or "lon" in el:
        problem = _position_problem(el)
    elif "center" in el:
        problem = _position_problem(el["center"])
    elif isinstance(el.get("geometry"), list) and any(v is not None for v in el["geometry"]):
        problem = next((q for v in el["geometry"] if v is not None for q in [_position_problem(v)] if q), None)
    else:
        problem = "no position (lat/lon, center or geometry)"
    return f"{where}: {problem}" if problem else None


def check_overpass_doc(doc, where: str) -> None:
    """ValueError naming ``where`` unless ``doc`` is an Overpass JSON answer whose elements all have positions."""
    if not isinstance(doc, dict) or not isinstance(doc.get("elements"), list):
        raise ValueError(f"{where}: the answer is JSON but has no 'elements' list")
    for el in doc["elements"]:
        problem = element_problem(el)
        if problem:
            raise ValueError(f"{where}: malformed Overpass element ({problem}); "
                             f"{len(doc['elements'])} elements in the answer")


def _check_overpass_json(url: str):
    def check(body: bytes) -> None:
        try:
            doc = json.loads(body)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            head = body[:200].decode("utf-8", "replace").strip()
            raise DownloadError(f"{url}: the answer is not valid JSON ({err}); it starts with {head!r}",
                                url=url) from None
        remark = str(doc.get("remark", "")) if isinstance(doc, dict) else ""
        if "runtime error" in remark or "timed out" in remark:  # Overpass ran out of time or memory
            raise TransientError(f"Overpass reported: {remark.strip()}")
        try:
            check_overpass_doc(doc, url)
        except ValueError as err:
            raise DownloadError(str(err), url=url) from None

    return check


def cache_path(query: str, cache_dir: str | os.PathLike) -> Path:
    """Where the answer to ``query`` is cached: ``cache_dir/<first 24 hex of sha256(query)>.json``."""
    return Path(cache_dir) / f"{hashlib.sha256(query.encode()).hexdigest()[:24]}.json"


def overpass(query: str, cache_dir: str | os.PathLike, endpoint: str | None = None,
             config: HttpConfig | None = None) -> tuple[dict, bool]:
    """The JSON answer to ``query``, from ``cache_dir/<sha256>.json`` or the endpoint; (doc, was_cached).

    Only complete, well-formed answers are cached (atomically). Malformed JSON, or elements without an id or
    a valid position, raise :class:`DownloadError` naming the URL; an Overpass run-time error (``remark``) is
    retried. A cached answer that no longer reads as a valid one is deleted (with a warning) and fetched again.
    """
    from .storage import atomic_path

    path = cache_path(query, cache_dir)
    if path.exists():
        try:
            doc = json.loads(path.read_bytes())
            check_overpass_doc(doc, str(path))
            return doc, True
        except (UnicodeDecodeError, ValueError) as err:
            warnings.warn(f"{path}: cached Overpass answer is corrupt ({err}); fetching it again", stacklevel=2)
            path.unlink()
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
    if endpoint is not None:
        check_url(endpoint, "endpoint")
    config = config or HttpConfig(read_timeout_s=timeout_s + 30.0)
    jobs = [(c, t) for c in classes for t in bbox_tiles(box, tile_deg)]
    rows: list = []
    n_sent = 0
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

    lon0, lat0, lon1, lat1 = transform_bounds(terrain.rio.crs, "EPSG:4326", *terrain.rio.bounds(), densify_pts=21)
    return float(lon0), float(lat0), float(lon1), float(lat1)


def osm_labels_for_terrain(terrain, classes, **kwargs) -> pd.DataFrame:
    """:func:`osm_labels` over a terrain's footprint, keeping the points inside its x/y window.

    ``region`` comes from ``terrain.attrs["region"]``; ``kwargs`` go to :func:`osm_labels` (``cache_dir``,
    ``endpoint``, ``spacing_m``, ``tile_deg``, ``delay_s``, ``timeout_s``, ``config``, ``progress``).
    """
    df = osm_labels(classes, terrain_bounds_lonlat(terrain), str(terrain.attrs.get("region", "window")), **kwargs)
    return clip_to_terrain(df, terrain)


def _crs_bounds(terrain) -> tuple[Any, tuple[float, float, float, float]]:
    """(crs, (xmin, ymin, xmax, ymax)) of a terrain DataArray or of a PatchSampler (``crs``, ``bounds_xy``)."""
    if hasattr(terrain, "bounds_xy") and hasattr(terrain, "crs"):
        return terrain.crs, tuple(terrain.bounds_xy)
    return terrain.rio.crs, tuple(terrain.rio.bounds())


def _inside_terrain(lon, lat, terrain) -> np.ndarray:
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    inside = np.zeros(lon.shape, dtype=bool)
    ok = np.isfinite(lon) & np.isfinite(lat) & (np.abs(lon) <= 180) & (np.abs(lat) <= 90)
    if not ok.any():
        return inside
    crs, (xmin, ymin, xmax, ymax) = _crs_bounds(terrain)
    x, y = lonlat_to_xy(crs, lon[ok], lat[ok])
    inside[ok] = np.isfinite(x) & np.isfinite(y) & (x >= xmin) & (x <= xmax) & (y >= ymin) & (y <= ymax)
    return inside


def check_not_swapped(df: pd.DataFrame, terrain, where: str = "label table") -> np.ndarray:
    """The rows inside the terrain window; ValueError if lon and lat look swapped. ``terrain``: a terrain
    DataArray or a :class:`~topo2vec_lib.sampler.PatchSampler`.

    Heuristic: with lon and lat exchanged, more places would fall inside the terrain than as given (and at
    least one would). A table that fits the terrain as given never trips it; near the lon = lat diagonal a
    genuinely swapped table may fit both ways and pass.
    """
    lon, lat = df["lon"].to_numpy(float), df["lat"].to_numpy(float)
    inside = _inside_terrain(lon, lat, terrain)
    can_swap = np.abs(lon) <= 90
    swapped = np.zeros_like(inside)
    swapped[can_swap] = _inside_terrain(lat[can_swap], lon[can_swap], terrain)
    if swapped.sum() > inside.sum():
        i = int(np.argmax(swapped))
        raise ValueError(f"{where}: lon and lat look swapped: {int(swapped.sum())} of {len(df)} places fall inside "
                         f"the terrain window only with lon and lat exchanged ({int(inside.sum())} as given; first: "
                         f"lon={lon[i]}, lat={lat[i]}). Columns must be lon (east) and lat (north) in degrees")
    return inside


def clip_to_terrain(df: pd.DataFrame, terrain) -> pd.DataFrame:
    """The rows of a label table whose lon/lat fall inside the terrain's x/y window.

    Checks the coordinates first (:func:`check_label_table` rules: finite, lon -180..180, lat -90..90, never
    wrapped) and that lon/lat are not swapped (:func:`check_not_swapped`); warns for each class none of whose
    places falls inside the window.
    """
    _check_lonlat(_numeric(df["lon"], "lon", "label table"), _numeric(df["lat"], "lat", "label table"),
                  "label table", rows=df.index)
    inside = check_not_swapped(df, terrain)
    if "class" in df.columns:
        for name, kept in pd.Series(inside, index=df.index).groupby(df["class"]).sum().items():
            if kept == 0:
                warnings.warn(f"class {name!r}: none of its {int((df['class'] == name).sum())} places falls inside "
                              f"the terrain window {terrain_bounds_lonlat(terrain)} (lon/lat); wrong file or region?",
                              stacklevel=2)
    return df[inside].reset_index(drop=True)


def _table(df: pd.DataFrame) -> pd.DataFrame:
    out = pd.DataFrame({"lon": df["lon"].astype(float).to_numpy(), "lat": df["lat"].astype(float).to_numpy(),
                        "class": df["class"].astype(str).to_numpy(), "source": df["source"].astype(str).to_numpy(),
                        "region": df["region"].astype(str).to_numpy(),
                        "osm_id": pd.array(df["osm_id"].to_numpy(), dtype="Int64")})
    return out[COLUMNS]


# ---------------------------------------------------------------- a user's own files
REQUIRED_LABEL_COLUMNS = ["lon", "lat", "class", "source", "region"]
"""Columns every label table has (docs/architecture.md); OSM tables add ``osm_id``."""


def _check_lonlat(lon: np.ndarray, lat: np.ndarray, where: str, rows=None) -> None:
    """ValueError naming ``where`` unless every lon/lat is finite, lon in -180..180 and lat in -90..90."""
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    rows = np.arange(len(lon)) if rows is None else np.asarray(rows)
    finite = np.isfinite(lon) & np.isfinite(lat)
    for bad, what in [(~finite, "not finite"),
                      (finite & (np.abs(lat) > 90), "lat outside -90..90"),
                      (finite & (np.abs(lon) > 180), "lon outside -180..180 (not wrapped)")]:
        if bad.any():
            i = int(np.argmax(bad))
            hint = ""
            if what.startswith("lat") and np.all(np.abs(lon[bad]) <= 90):
                hint = "; lon and lat look swapped (columns must be lon, then lat)"
            raise ValueError(f"{where}: {int(bad.sum())} of {len(lon)} places have coordinates {what} (first: row "
                             f"{rows[i]}, lon={float(lon[i])}, lat={float(lat[i])}){hint}; valid: lon -180..180, "
                             f"lat -90..90 degrees (EPSG:4326)")


def _numeric(col: pd.Series, name: str, where: str) -> np.ndarray:
    """A coordinate column as floats; ValueError naming the first value that is not a number."""
    num = pd.to_numeric(col, errors="coerce")
    bad = num.isna() & col.notna()
    if bad.any():
        i = int(bad.to_numpy().argmax())
        raise ValueError(f"{where}: column {name!r} holds {int(bad.sum())} values that are not numbers (first: row "
                         f"{col.index[i]}, {col.iloc[i]!r}); coordinates must be decimal degrees")
    return num.to_numpy(float)


def check_label_table(df: pd.DataFrame, path=None) -> pd.DataFrame:
    """Return ``df`` unchanged if it is a valid label table; ValueError naming ``path`` (or "label table") if not.

    Valid: the columns :data:`REQUIRED_LABEL_COLUMNS`; numeric, finite lon in -180..180 and lat in -90..90
    (never wrapped; |lat| > 90 with |lon| <= 90 is reported as swapped); ``class`` a non-empty string on every
    row. Swapped lon/lat within range need the terrain: see :func:`check_not_swapped`.
    """
    where = "label table" if path is None else str(path)
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"{where}: a label table must be a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in REQUIRED_LABEL_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{where}: label table lacks column(s) {missing}; has {list(df.columns)}, "
                         f"needs {REQUIRED_LABEL_COLUMNS}")
    lon, lat = _numeric(df["lon"], "lon", where), _numeric(df["lat"], "lat", where)
    _check_lonlat(lon, lat, where, rows=df.index)
    cls = df["class"]
    bad = cls.isna().to_numpy() | ~cls.map(lambda v: isinstance(v, str) and v.strip() not in ("", "nan")).to_numpy()
    if bad.any():
        i = int(np.argmax(bad))
        raise ValueError(f"{where}: {int(bad.sum())} rows have no class name (first: row {df.index[i]}, "
                         f"class={cls.iloc[i]!r}); every row needs a class such as 'peak'")
    return df


def read_label_files(paths_by_class: dict, region: str, spacing_m: float = 300.0) -> pd.DataFrame:
    """A user's labels as the same table: ``{class: path or [paths]}`` of GeoJSON, CSV or Parquet files.

    GeoJSON (``.geojson``/``.json``, EPSG:4326): Points and MultiPoints as they are, (Multi)LineStrings as
    points every ``spacing_m`` metres, (Multi)Polygons as the mean of their outer ring; a ``crs`` member other
    than lon/lat WGS84 is refused. CSV / Parquet: columns ``lon`` and ``lat`` (or ``longitude`` and
    ``latitude``) in decimal degrees. ``source`` is ``"file"``, ``osm_id`` is NA. Raises ValueError naming the
    file for an unknown format, a file that does not parse, missing columns, values that are not numbers,
    non-finite coordinates, lon outside -180..180 or lat outside -90..90 (with a hint when lon/lat look
    swapped); warns for a file with no places.
    """
    if not isinstance(paths_by_class, dict) or not paths_by_class:
        raise ValueError(f"paths_by_class must be a non-empty {{class: path}} mapping, got {paths_by_class!r}")
    frames = []
    for name, paths in paths_by_class.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"class names must be non-empty strings, got {name!r}")
        for path in [paths] if isinstance(paths, (str, os.PathLike)) else list(paths):
            lon, lat = _read_points(Path(path), spacing_m)
            _check_lonlat(lon, lat, str(path))
            if len(lon) == 0:
                warnings.warn(f"{path}: label file for class {name!r} holds no places", stacklevel=2)
            frames.append(pd.DataFrame({"lon": lon, "lat": lat, "class": name, "source": "file",
                                        "region": str(region), "osm_id": pd.NA}))
    return _table(pd.concat(frames, ignore_index=True))


def _read_points(path: Path, spacing_m: float) -> tuple[np.ndarray, np.ndarray]:
    if not path.exists():
        raise FileNotFoundError(f"label file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix in (".geojson", ".json"):
        return _read_geojson(path, spacing_m)
    try:
        if suffix == ".csv":
            df = pd.read_csv(path)
        elif suffix in (".parquet", ".pq"):
            df = pd.read_parquet(path)
        else:
            raise ValueError(f"{path}: unknown label file type {suffix!r}: use .geojson, .json, .csv or .parquet")
    except (ValueError, OSError, UnicodeDecodeError) as err:
        if str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: cannot read it as {suffix[1:]} ({type(err).__name__}: {err})") from None
    for lon_col, lat_col in (("lon", "lat"), ("longitude", "latitude")):
        if lon_col in df.columns and lat_col in df.columns:
            return _numeric(df[lon_col], lon_col, str(path)), _numeric(df[lat_col], lat_col, str(path))
    raise ValueError(f"{path}: needs columns 'lon' and 'lat' (or 'longitude' and 'latitude'), has {list(df.columns)}")


def _read_geojson(path: Path, spacing_m: float) -> tuple[np.ndarray, np.ndarray]:
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ValueError(f"{path}: not valid GeoJSON ({type(err).__name__}: {err})") from None
    crs = obj.get("crs") if isinstance(obj, dict) else None
    if crs is not None:
        crs_name = str((crs.get("properties") or {}).get("name", "")) if isinstance(crs, dict) else str(crs)
        if not any(ok in crs_name.upper() for ok in ("CRS84", "EPSG::4326", "EPSG:4326")):
            raise ValueError(f"{path}: GeoJSON declares crs {crs_name!r}; label files must be lon/lat degrees "
                             f"(WGS84, EPSG:4326 / OGC:CRS84)")
    try:
        arr = np.array(_geojson_points(obj, spacing_m, path), dtype=float).reshape(-1, 2)
    except (KeyError, TypeError, IndexError, ValueError, AttributeError) as err:
        if isinstance(err, ValueError) and str(err).startswith(str(path)):
            raise
        raise ValueError(f"{path}: malformed GeoJSON ({type(err).__name__}: {err}); expected Features with "
                         f"Point/LineString/Polygon geometries of [lon, lat] coordinates") from None
    return arr[:, 0], arr[:, 1]


def _geojson_points(obj, spacing_m: float, path) -> list[tuple[float, float]]:
    kind = obj.get("type") if isinstance(obj, dict) else None
    if kind == "FeatureCollection":
        return [p for f in obj.get("features", []) for p in _geojson_points(f, spacing_m, path)]
    if kind == "Feature":
        return _geojson_points(obj["geometry"], spacing_m, path) if obj.get("geometry") else []
    if kind == "GeometryCollection":
        return [p for g in obj.get("geometries", []) for p in _geojson_points(g, spacing_m, path)]
    coords: Any = obj.get("coordinates") if isinstance(obj, dict) else None
    if kind == "Point":
        return [(coords[0], coords[1])]
    if kind == "MultiPoint":
        return [(c[0], c[1]) for c in coords]
    if kind in ("LineString", "MultiLineString"):
        lines = [coords] if kind == "LineString" else coords
        out: list[tuple[float, float]] = []
        for line in lines:
            a = np.asarray(line, dtype=float)[:, :2]
            lon, lat = points_along(a[:, 0], a[:, 1], spacing_m)
            out.extend(zip(lon.tolist(), lat.tolist()))
        return out
    if kind in ("Polygon", "MultiPolygon"):
        polys = [coords] if kind == "Polygon" else coords
        return [tuple(np.asarray(poly[0], dtype=float)[:-1, :2].mean(axis=0)) for poly in polys]
    raise ValueError(f"{path}: unsupported GeoJSON object of type {kind!r}")
