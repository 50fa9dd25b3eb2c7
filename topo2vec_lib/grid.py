"""Raster and geodesy building blocks shared by every module (the package's lowest layer).

Like xarray-spatial's ``utils``: small functions over numpy arrays and xarray DataArrays, importing nothing
else of topo2vec_lib. Conventions (docs/architecture.md): places are lon/lat degrees of EPSG:4326, always in
that order; rasters are ``(ny, nx)`` (row 0 = north) in a projected CRS in metres at ``res_m`` m/px, pixel
centres as coordinates; bounds are ``(xmin, ymin, xmax, ymax)`` metres of pixel edges.
"""
from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Mapping

import numpy as np
import xarray as xr
from pyproj import CRS, Transformer
from pyproj.exceptions import CRSError

PAPER_REGIONS: dict[str, tuple[float, float, float, float]] = {
    "train": (10.0, 45.0, 15.0, 50.0), "test": (5.0, 45.0, 10.0, 50.0)}
"""The paper's polygons as (lon_min, lat_min, lon_max, lat_max), EPSG:4326 degrees."""

LONLAT = "EPSG:4326"


# ---------------------------------------------------------------- coordinate reference systems
@functools.lru_cache(maxsize=64)
def transformer(src: str, dst: str) -> Transformer:
    """The cached pyproj ``Transformer`` from ``src`` to ``dst`` (any pyproj CRS string or WKT), x/y = lon/lat order."""
    return Transformer.from_crs(src, dst, always_xy=True)


def crs_string(crs) -> str:
    """A hashable text form of a CRS (pyproj/rasterio CRS objects become WKT, strings stay)."""
    if isinstance(crs, str):
        return crs
    return crs.to_wkt() if hasattr(crs, "to_wkt") else str(crs)


def check_crs(crs) -> str:
    """Return ``crs`` as a string if it is a projected CRS in metres, else raise ValueError."""
    try:
        parsed = CRS.from_user_input(crs)
    except CRSError as err:
        raise ValueError(f"crs {crs!r} is not a valid CRS (use e.g. 'EPSG:3035' or a UTM zone)") from err
    units = {a.unit_name for a in parsed.axis_info}
    if not parsed.is_projected or not units <= {"metre", "meter"}:
        label = repr(crs) if isinstance(crs, str) and len(crs) <= 80 else f"{parsed.name!r} ({parsed.to_string()[:60]})"
        raise ValueError(f"crs {label} must be a projected CRS in metres (e.g. 'EPSG:3035'), got "
                         f"{'a projected' if parsed.is_projected else 'a geographic'} CRS in {sorted(units)}")
    return crs_string(crs)


def lonlat_to_xy(crs, lon, lat) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat degrees (EPSG:4326) -> x, y metres in ``crs``; arrays of any shape (same as inputs).

    ValueError for values that are not real numbers, lon outside -180..180 or lat outside -90..90 (a lon of
    367.6 is never wrapped to 7.6; :func:`check_lonlat_arrays`)."""
    lon, lat = check_lonlat_arrays(lon, lat)
    x, y = transformer(LONLAT, crs_string(crs)).transform(lon, lat)
    return np.asarray(x), np.asarray(y)


def xy_to_lonlat(crs, x, y) -> tuple[np.ndarray, np.ndarray]:
    """x, y metres in ``crs`` -> lon, lat degrees (EPSG:4326); arrays of any shape."""
    x, y = as_numbers(x, "x"), as_numbers(y, "y")
    lon, lat = transformer(crs_string(crs), LONLAT).transform(x, y)
    return np.asarray(lon), np.asarray(lat)


def lonlat_box_to_xy(crs, box_lonlat, densify: int = 21) -> tuple[float, float, float, float]:
    """Bounding box ``(left, bottom, right, top)`` in metres of ``crs`` of a lon/lat box
    ``[lon_min, lat_min, lon_max, lat_max]`` (degrees; its edges are densified, so curved edges are covered)."""
    lon0, lat0, lon1, lat1 = check_bounds_lonlat(box_lonlat, "box_lonlat")
    t = np.linspace(0.0, 1.0, densify)
    up_lon, up_lat = lon0 + (lon1 - lon0) * t, lat0 + (lat1 - lat0) * t
    lon = np.concatenate([up_lon, np.full_like(t, lon1), up_lon[::-1], np.full_like(t, lon0)])
    lat = np.concatenate([np.full_like(t, lat0), up_lat, np.full_like(t, lat1), up_lat[::-1]])
    x, y = lonlat_to_xy(crs, lon, lat)
    return float(np.min(x)), float(np.min(y)), float(np.max(x)), float(np.max(y))


# ---------------------------------------------------------------- checked scalars and coordinates
def as_numbers(values, name: str) -> np.ndarray:
    """``values`` (a number, list or array of real numbers) as a float64 array; ValueError naming ``name`` for
    text, mappings, booleans, complex numbers, None or other objects (never numpy's own conversion error, and
    never a complex value with its imaginary part silently dropped)."""
    if isinstance(values, (str, bytes, Mapping)):
        raise ValueError(f"{name} must be real numbers (a number, list or array), got {type(values).__name__} "
                         f"{values!r:.80}")
    try:
        a = np.asarray(values)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be real numbers, got {values!r:.80} ({err})") from None
    if a.dtype.kind == "O":
        bad = [v for v in a.ravel() if isinstance(v, bool) or not isinstance(v, numbers.Real)]
        if bad:
            raise ValueError(f"{name} must be real numbers, got {type(bad[0]).__name__} {bad[0]!r:.60}")
        a = a.astype(np.float64)
    if a.dtype.kind not in "iuf":
        kind = {"c": "complex", "U": "text", "S": "bytes", "b": "boolean"}.get(a.dtype.kind, str(a.dtype))
        first = a.ravel()[0].item() if a.size else ""
        raise ValueError(f"{name} must be real numbers, got {kind} values (first: {first!r:.60})")
    return a.astype(np.float64, copy=False)


def check_lonlat_arrays(lon, lat, names: tuple[str, str] = ("lon", "lat")) -> tuple[np.ndarray, np.ndarray]:
    """``lon``, ``lat`` as float64 arrays; ValueError naming the first value that is not a real number, not
    finite, a lon outside -180..180 (never wrapped: 367.6 is not 7.6) or a lat outside -90..90."""
    lon, lat = as_numbers(lon, names[0]), as_numbers(lat, names[1])
    for name, v, limit in ((names[0], lon, 180.0), (names[1], lat, 90.0)):
        flat = v.ravel()
        bad = np.flatnonzero(~np.isfinite(flat))
        if bad.size:
            raise ValueError(f"{name}[{bad[0]}] = {flat[bad[0]]} is not a finite number ({bad.size} non-finite "
                             f"value(s) in {name})")
        bad = np.flatnonzero(np.abs(flat) > limit)
        if bad.size:
            x = float(flat[bad[0]])
            hint = (f"degrees east; never wrapped (to {(x + 180) % 360 - 180:g})" if name == names[0]
                    else "lon/lat order?")
            raise ValueError(f"{name}[{bad[0]}] = {x} is outside [-{limit:g}, {limit:g}] degrees ({hint}); "
                             f"{bad.size} such value(s) in {name}")
    return lon, lat


def check_integer(name: str, value, minimum: int | None = None) -> int:
    """``value`` as an int if it is an integer (``1.0`` and numpy integers included, ``1.5``, ``True`` and
    ``"1"`` not), at least ``minimum``; else ValueError naming ``name`` (nothing is truncated)."""
    ok = not isinstance(value, (bool, np.bool_)) and (
        isinstance(value, (int, np.integer)) or (isinstance(value, (float, np.floating)) and math.isfinite(value)
                                                 and float(value).is_integer()))
    if not ok or (minimum is not None and value < minimum):
        at_least = "" if minimum is None else f" >= {minimum}"
        raise ValueError(f"{name} must be an integer{at_least}, got {value!r}")
    return int(value)


def check_seed(seed, name: str = "seed") -> int:
    """A random seed: an integer >= 0 (``1.5`` is an error, never truncated to 1)."""
    return check_integer(name, seed, 0)


def check_positive(name: str, value) -> float:
    """``value`` as a finite float > 0, else ValueError naming ``name``."""
    try:
        v = float(value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a positive number, got {value!r}") from err
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name} must be a positive number, got {value!r}")
    return v


def check_lonlat(center_lonlat, what: str = "center_lonlat") -> tuple[float, float]:
    """``[lon, lat]`` degrees as two floats; ValueError for another shape, type or range."""
    if isinstance(center_lonlat, (str, bytes)) or np.size(center_lonlat) != 2:
        raise ValueError(f"{what} must be [lon, lat] in degrees, got {center_lonlat!r}")
    try:
        lon, lat = (float(v) for v in center_lonlat)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{what} must be [lon, lat] in degrees, got {center_lonlat!r}") from err
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise ValueError(f"{what} must be [lon, lat] with lon in [-180, 180], lat in [-90, 90], "
                         f"got {center_lonlat!r}")
    return lon, lat


def check_bounds_lonlat(bounds, what: str = "bounds_lonlat") -> tuple[float, float, float, float]:
    """(lon_min, lat_min, lon_max, lat_max) as floats, degrees in lon/lat order; ValueError naming ``what``."""
    try:
        if isinstance(bounds, (str, bytes, dict)) or len(bounds) != 4:
            raise ValueError
        lon0, lat0, lon1, lat1 = (float(v) for v in as_numbers(list(bounds), what))
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be 4 numbers (lon_min, lat_min, lon_max, lat_max), got {bounds!r}") from None
    if not (-180 <= lon0 < lon1 <= 180 and -90 <= lat0 < lat1 <= 90):
        raise ValueError(f"{what} must satisfy -180 <= lon_min < lon_max <= 180 and "
                         f"-90 <= lat_min < lat_max <= 90 (lon/lat order), got {bounds!r}")
    return lon0, lat0, lon1, lat1


def check_region_box(box, what: str = "box") -> tuple[float, float, float, float]:
    """A region's ``[lon_min, lat_min, lon_max, lat_max]`` (degrees, lon/lat order) as floats; ValueError naming
    the value for anything else, with the reason: lon_min >= lon_max (a box crossing the antimeridian, whose
    lon_min is east of its lon_max, is named as such), lat_min >= lat_max, or a box reaching a pole (no
    metric window around a pole fits one lon/lat box; keep boxes within -89.9..89.9 degrees)."""
    try:
        if isinstance(box, (str, bytes, Mapping)) or len(box) != 4:
            raise ValueError
        lon0, lat0, lon1, lat1 = (float(v) for v in as_numbers(list(box), what))
    except (TypeError, ValueError):
        raise ValueError(f"{what}={box!r}: expected 4 numbers [lon_min, lat_min, lon_max, lat_max] in "
                         f"degrees") from None
    if not all(math.isfinite(v) for v in (lon0, lat0, lon1, lat1)) or max(abs(lon0), abs(lon1)) > 180 \
            or max(abs(lat0), abs(lat1)) > 90:
        raise ValueError(f"{what}={box!r}: lon must lie in -180..180 and lat in -90..90 (lon/lat order; never "
                         f"wrapped)")
    if lon0 > lon1:
        raise ValueError(f"{what}={box!r}: lon_min {lon0:g} > lon_max {lon1:g}: a box crossing the antimeridian "
                         f"(180 degrees) is not supported; split the region at 180 or give a box on one side")
    if lon0 == lon1:
        raise ValueError(f"{what}={box!r}: lon_min {lon0:g} >= lon_max {lon1:g} (an empty box)")
    if lat0 >= lat1:
        raise ValueError(f"{what}={box!r}: lat_min {lat0:g} >= lat_max {lat1:g} (lon/lat order: "
                         f"[lon_min, lat_min, lon_max, lat_max])")
    if lat1 > 89.9 or lat0 < -89.9:
        pole, lat = ("north", lat1) if lat1 > 89.9 else ("south", lat0)
        raise ValueError(f"{what}={box!r}: the box reaches the {pole} pole (lat {lat:g}); boxes must stay within "
                         f"-89.9..89.9 degrees (windows across a pole are not supported)")
    return lon0, lat0, lon1, lat1


def check_size_km(size_km, what: str = "size_km") -> tuple[float, float]:
    """A window size: a number (a square, km) or ``[width_km, height_km]``; returns ``(width, height)``."""
    if isinstance(size_km, (list, tuple, np.ndarray)):
        if len(size_km) != 2:
            raise ValueError(f"{what}={size_km!r}: expected a number (a square window, km) or [width_km, height_km]")
        return (check_positive(f"{what}[0] (width_km)", size_km[0]),
                check_positive(f"{what}[1] (height_km)", size_km[1]))
    if isinstance(size_km, (bool, np.bool_)):
        raise ValueError(f"{what}={size_km!r}: expected a number of km or [width_km, height_km]")
    s = check_positive(what, size_km)
    return s, s


# ---------------------------------------------------------------- windows and grids
def window_bounds(center_lonlat, size_km, res_m: float, crs: str = "EPSG:3035"
                  ) -> tuple[float, float, float, float]:
    """(xmin, ymin, xmax, ymax) metres of a window of about ``size_km`` (a number: a square; ``[width_km,
    height_km]``: a rectangle) centred on a lon/lat.

    Edges are snapped to multiples of ``res_m`` (same rule as ``tests/conftest.make_terrain``), and the
    window holds ``n = round(size_km * 1000 / res_m)`` pixels a side (at least 3).
    """
    lon, lat = check_lonlat(center_lonlat)
    w_km, h_km = check_size_km(size_km)
    res_m = check_positive("res_m", res_m)
    check_crs(crs)
    nx = max(3, int(round(w_km * 1000.0 / res_m)))
    ny = max(3, int(round(h_km * 1000.0 / res_m)))
    cx, cy = (float(v) for v in lonlat_to_xy(crs, lon, lat))
    if not (math.isfinite(cx) and math.isfinite(cy)):
        raise ValueError(f"center {[lon, lat]} cannot be projected to {crs_string(crs)[:80]}")
    xmin = math.floor(cx / res_m) * res_m - (nx // 2) * res_m
    ymax = math.floor(cy / res_m) * res_m + (ny // 2) * res_m
    return (xmin, ymax - ny * res_m, xmin + nx * res_m, ymax)


def region_lonlat_of(region: str, region_lonlat=None) -> tuple[float, float, float, float]:
    """The (lon_min, lat_min, lon_max, lat_max) polygon of ``region`` (a paper region or given explicitly)."""
    if region_lonlat is not None:
        check_bounds_lonlat(region_lonlat, "region_lonlat")
        return check_region_box(region_lonlat, "region_lonlat")
    if region not in PAPER_REGIONS:
        raise ValueError(f"unknown region {region!r}: use one of {sorted(PAPER_REGIONS)} or pass region_lonlat")
    return PAPER_REGIONS[region]


def points_in_polygon(lon, lat, ring) -> np.ndarray:
    """``(N,)`` bool: lon/lat points inside the polygon ``ring`` (``(M, 2)`` lon/lat vertices; even-odd rule)."""
    lon, lat = np.asarray(lon, np.float64), np.asarray(lat, np.float64)
    ring = np.asarray(ring, np.float64)
    x0, y0 = ring[:, 0], ring[:, 1]
    x1, y1 = np.roll(x0, -1), np.roll(y0, -1)
    inside = np.zeros(lon.shape, bool)
    for a, b, c, d in zip(x0, y0, x1, y1):
        if b == d:
            continue
        crosses = (b > lat) != (d > lat)
        xi = a + (lat - b) * (c - a) / (d - b)
        inside ^= crosses & (lon < xi)
    return inside


def window_outline_lonlat(bounds, crs: str, n: int = 9) -> tuple[np.ndarray, np.ndarray]:
    """Lon/lat of points along the outline of a window ``(xmin, ymin, xmax, ymax)`` of ``crs``."""
    xmin, ymin, xmax, ymax = bounds
    t = np.linspace(0.0, 1.0, n)
    xs = np.concatenate([xmin + t * (xmax - xmin), np.full(n, xmax), xmax - t * (xmax - xmin), np.full(n, xmin)])
    ys = np.concatenate([np.full(n, ymin), ymin + t * (ymax - ymin), np.full(n, ymax), ymax - t * (ymax - ymin)])
    return xy_to_lonlat(crs, xs, ys)


def region_window(region: str, center_lonlat, size_km, res_m: float, crs: str = "EPSG:3035",
                  region_lonlat=None, polygon=None) -> tuple[float, float, float, float]:
    """:func:`window_bounds`, checked to lie inside the region (ValueError naming the window otherwise).

    The window's outline (corners and points along its edges) is transformed to lon/lat and must fall inside
    ``region_lonlat_of(region, region_lonlat)`` and, when given, inside ``polygon`` (``(M, 2)`` lon/lat ring),
    with no polygon vertex inside the window. A window crossing the antimeridian is refused.
    """
    box = region_lonlat_of(region, region_lonlat)
    bounds = window_bounds(center_lonlat, size_km, res_m, crs)
    lon, lat = window_outline_lonlat(bounds, crs)
    size = size_km if isinstance(size_km, (int, float)) else list(size_km)
    if not (np.isfinite(lon).all() and np.isfinite(lat).all()):
        raise ValueError(f"the {size} km window centred on {list(center_lonlat)} does not project back to lon/lat "
                         f"in {crs_string(crs)[:80]} (too large for that CRS?)")
    if lon.max() - lon.min() > 180.0:
        raise ValueError(f"the {size} km window centred on {list(center_lonlat)} crosses the antimeridian "
                         f"(180 degrees); windows must stay on one side of it")
    inside = (lon >= box[0]) & (lon <= box[2]) & (lat >= box[1]) & (lat <= box[3])
    what = f"region {region!r} {list(box)}"
    if inside.all() and polygon is not None:
        ring = np.asarray(polygon, np.float64)
        inside = points_in_polygon(lon, lat, ring)
        vx, vy = lonlat_to_xy(crs, ring[:, 0], ring[:, 1])
        if ((vx > bounds[0]) & (vx < bounds[2]) & (vy > bounds[1]) & (vy < bounds[3])).any():
            inside[:] = False
        what = f"the polygon of region {region!r} (box {list(box)})"
    if not inside.all():
        raise ValueError(
            f"the {size} km window centred on {list(center_lonlat)} spans lon {lon.min():.3f}..{lon.max():.3f}, "
            f"lat {lat.min():.3f}..{lat.max():.3f}, which is not inside {what}; move the centre or shrink size_km")
    return bounds


def grid_coords(bounds, res_m: float) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre ``x`` (west->east) and ``y`` (north->south) of a window (xmin, ymin, xmax, ymax)."""
    xmin, ymin, xmax, ymax = bounds
    nx, ny = int(round((xmax - xmin) / res_m)), int(round((ymax - ymin) / res_m))
    return xmin + (np.arange(nx) + 0.5) * res_m, ymax - (np.arange(ny) + 0.5) * res_m


def make_dataarray(elevation: np.ndarray, bounds, res_m: float, crs: str, *, region: str, region_lonlat,
                   source: str) -> xr.DataArray:
    """Wrap a ``(ny, nx)`` array (row 0 = north) covering ``bounds`` into a terrain DataArray."""
    import rioxarray  # noqa: F401  (registers .rio)

    x, y = grid_coords(bounds, res_m)
    elevation = np.asarray(elevation, dtype=np.float32)
    if elevation.shape != (y.size, x.size):
        raise ValueError(f"elevation shape {elevation.shape} does not match the window's {(y.size, x.size)}")
    da = xr.DataArray(elevation, dims=("y", "x"), coords={"y": y, "x": x}, name="elevation",
                      attrs={"res_m": float(res_m), "region": str(region),
                             "region_lonlat": [float(v) for v in region_lonlat], "source": str(source),
                             "units": "m"})
    return da.rio.write_crs(crs).rio.write_transform()


# ---------------------------------------------------------------- derived rasters
def values_res(da, res_m: float | None = None) -> tuple[np.ndarray, float]:
    """``(float64 values, res_m)`` of a terrain DataArray (``res_m`` from its attrs) or of a plain array."""
    if isinstance(da, xr.DataArray):
        if res_m is None:
            res_m = da.attrs.get("res_m")
        z = np.asarray(da.values, dtype=np.float64)
    else:
        z = np.asarray(da, dtype=np.float64)
    if res_m is None:
        raise ValueError("res_m is needed for a plain array (metres per pixel)")
    return z, check_positive("res_m", res_m)


def slope_deg(z, res_m: float | None = None) -> np.ndarray:
    """Slope in degrees over the last two axes of ``z``: a terrain DataArray or an array ``(ny, nx)`` /
    ``(N, ny, nx)`` of metres at ``res_m`` m/px; central differences (one-sided at the edges), NaN next to NaN."""
    z, res_m = values_res(z, res_m)
    dz_dy, dz_dx = np.gradient(z, res_m, axis=(-2, -1))
    return np.degrees(np.arctan(np.hypot(dz_dx, dz_dy)))


def hillshade(da, azimuth: float = 315.0, altitude: float = 45.0, res_m: float | None = None,
              exaggeration: float = 1.0) -> np.ndarray:
    """Hillshade ``(ny, nx)`` in [0, 1] (NaN for nodata), light from ``azimuth`` degrees clockwise from north."""
    z, res_m = values_res(da, res_m)
    gy, gx = np.gradient(z * exaggeration, res_m)
    dz_east, dz_north = gx, -gy  # row 0 is north: rows increase southwards
    az, alt = np.radians(azimuth), np.radians(altitude)
    light = np.array([np.cos(alt) * np.sin(az), np.cos(alt) * np.cos(az), np.sin(alt)])
    norm = np.sqrt(dz_east ** 2 + dz_north ** 2 + 1.0)
    shade = (-dz_east * light[0] - dz_north * light[1] + light[2]) / norm
    return np.clip(shade, 0.0, 1.0)
