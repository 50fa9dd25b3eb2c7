"""The ``topo2vec`` command line: embedding fields of any DEM, similarity search, maps and model cards.

    topo2vec embed DEM --model models/topo2vec-4.pt [--res-m 30] [--stride-m 60] --out field.tif|field.zarr
    topo2vec embed DEM --model models/topo2vec-4.pt --points places.csv|places.geojson --out places.parquet
    topo2vec search FIELD --place LON,LAT [--place LON,LAT ...] [--k 50] --out matches.geojson
    topo2vec map FIELD --out map.html [--search matches.geojson] [--dem DEM]
    topo2vec info MODEL

Each subcommand is one function calling the library (:mod:`topo2vec_lib.fields`, :mod:`topo2vec_lib.search`,
:mod:`topo2vec_lib.maps`, :mod:`topo2vec_lib.model_card`). Exit codes: 0 done; 2 bad usage or bad input (an
unknown option, a DEM without CRS, a file that is not a checkpoint, a place outside the field, a stride finer than
the DEM, ...: one line saying what and how to fix it); 1 any other failure (a bug, a full disk: the message and,
with ``--debug``, the traceback); 130 interrupted (Ctrl-C: ``embed`` keeps its finished tiles and resumes when
run again). ``python -m topo2vec_lib.cli`` is the same command.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import warnings
from pathlib import Path

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

_BAD_INPUT = (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, IsADirectoryError)


class CliError(Exception):
    """A bad input found by the command line itself (exit 2)."""


# ------------------------------------------------------------------------------------------------ helpers
def _lonlat(text: str) -> tuple[float, float]:
    """``LON,LAT`` (degrees, EPSG:4326, lon first) -> floats; argparse turns the ValueError into exit 2."""
    parts = text.replace(" ", "").split(",")
    try:
        lon, lat = (float(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not LON,LAT (two numbers, degrees, lon first, e.g. "
                                         "7.65,45.98)") from None
    if not (-180 <= lon <= 180 and -90 <= lat <= 90):
        raise argparse.ArgumentTypeError(f"{text!r}: lon must be in -180..180 and lat in -90..90 (lon first)")
    return lon, lat


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if v < 1:
        raise argparse.ArgumentTypeError(f"{text} must be >= 1")
    return v


def _metres(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of metres") from None
    if not v > 0 or v != v or v == float("inf"):
        raise argparse.ArgumentTypeError(f"{text} must be a positive number of metres")
    return v


def _metres0(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        v = -1.0
    if not 0 <= v < float("inf"):
        raise argparse.ArgumentTypeError(f"{text!r} must be a number of metres >= 0")
    return v


def _say(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _load_model(path: str, device: str):
    from topo2vec_lib import models
    from topo2vec_lib.models.checkpoints import CheckpointError

    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"model {path} does not exist (train one: dvc repro train@topo2vec-4)")
    try:
        return models.load_embedder(p, device=device)
    except CheckpointError as err:
        raise ValueError(f"--model {path}: {err}") from None


# ------------------------------------------------------------------------------------------------ embed
def cmd_embed(args: argparse.Namespace) -> int:
    """Embed a DEM into a field (or places into GeoParquet)."""
    from topo2vec_lib import fields

    dem = fields.open_dem(args.dem)
    model = _load_model(args.model, args.device)
    res_m = float(model.res_m) if args.res_m is None else args.res_m
    if args.points:
        out = Path(args.out)
        if out.suffix.lower() not in (".parquet", ".geoparquet"):
            raise CliError(f"--out {out}: with --points the output is GeoParquet (.parquet)")
        if out.exists() and not args.overwrite:
            raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
        table = fields.read_places(args.points)
        t0 = time.perf_counter()
        vectors, meta = fields.embed_points(dem, model, table["lon"].to_numpy(), table["lat"].to_numpy(),
                                            res_m=res_m, crs=args.crs)
        meta["model"]["checkpoint"] = str(Path(args.model).resolve())
        bad = ~(vectors == vectors).all(axis=1)
        if bad.any() and not args.skip_invalid:
            first = int(bad.argmax())
            raise ValueError(f"{int(bad.sum())} of {len(bad)} place(s) have no valid {17 * res_m:g} m patch on the "
                             f"DEM (outside it, too close to its edge, or touching nodata), e.g. #{first} (lon "
                             f"{table['lon'][first]:.5f}, lat {table['lat'][first]:.5f}); pass --skip-invalid to "
                             f"write them with NaN vectors and valid = false")
        fields.write_geoparquet(table, vectors, out, meta)
        _say(f"wrote {out}: {len(table)} places x {vectors.shape[1]} numbers ({int((~bad).sum())} valid) in "
             f"{time.perf_counter() - t0:.1f} s")
        return EXIT_OK
    t0 = time.perf_counter()
    timings: dict = {}
    out = fields.embed_field(dem, model, res_m=res_m, stride_m=args.stride_m, out=args.out, crs=args.crs,
                             dtype=args.dtype, tile=args.tile, workers=args.workers, batch=args.batch,
                             checkpoint=args.model, restart=args.restart, overwrite=args.overwrite,
                             optimise=not args.eager, precision=args.precision, progress=not args.no_progress,
                             timings=timings)
    wall = time.perf_counter() - t0
    ds = fields.open_field(out)
    n = ds.sizes["y"] * ds.sizes["x"]
    from pyproj import CRS

    crs = CRS.from_wkt(ds.attrs["crs_wkt"])
    _say(f"wrote {out}: {ds.sizes['y']} x {ds.sizes['x']} places ({n:,}; {ds.attrs['valid_places']:,} with a vector) "
         f"every {ds.attrs['stride_m']:g} m, {ds.sizes['feature']} numbers each ({ds.attrs['dtype']}), "
         f"{17 * ds.attrs['res_m']:g} m patches at {ds.attrs['res_m']:g} m/px, CRS {crs.to_string()[:40]}; "
         f"{wall:.1f} s ({n / wall:,.0f} places/s: prepare {timings['prepare']:.1f} s, tiles {timings['tiles']:.1f} s"
         f"{', resumed' if timings.get('tiles_done_before') else ''}, write {timings['write']:.1f} s)")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ search
def cmd_search(args: argparse.Namespace) -> int:
    """Cosine similarity of every cell to the mean query embedding; the top k places, apart from each other."""
    import numpy as np
    import rioxarray  # noqa: F401

    from topo2vec_lib import fields, search
    from topo2vec_lib.grid import lonlat_to_xy

    out = Path(args.out)
    if out.suffix.lower() not in (".geojson", ".json"):
        raise CliError(f"--out {out}: the matches are GeoJSON (.geojson)")
    sim_path = Path(args.similarity) if args.similarity else out.with_name(out.stem + ".similarity.tif")
    if sim_path.suffix.lower() not in (".tif", ".tiff"):
        raise CliError(f"--similarity {sim_path}: the similarity field is a GeoTIFF (.tif)")
    for p in (out, sim_path):
        if p.exists() and not args.overwrite:
            raise FileExistsError(f"{p} exists; pass --overwrite to replace it")
    field = fields.open_field(args.field)
    lon = np.array([p[0] for p in args.place])
    lat = np.array([p[1] for p in args.place])
    try:
        q = search.vectors_at(field, lon, lat)
    except ValueError as err:
        raise ValueError(f"--place: {err}") from None
    footprint = 17 * float(field.attrs["res_m"])
    sep = footprint if args.min_separation_m is None else args.min_separation_m
    excl = footprint if args.exclude_radius_m is None else args.exclude_radius_m
    t0 = time.perf_counter()
    sim = search.similarity_field(field, q, standardize=args.standardize)
    sim = sim.copy(data=np.asarray(sim.values, dtype=np.float32))
    crs = field.attrs["crs_wkt"]
    masked = sim.copy(data=sim.values.copy())
    if excl > 0:
        qx, qy = lonlat_to_xy(crs, lon, lat)
        xs, ys = sim["x"].values, sim["y"].values
        for x, y in zip(np.atleast_1d(qx), np.atleast_1d(qy)):
            near = (ys[:, None] - y) ** 2 + (xs[None, :] - x) ** 2 < excl ** 2
            masked.values[near] = np.nan
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        matches = search.top_k(masked, args.k, sep, crs=crs)
    for w in caught:
        _say(f"warning: {w.message}")
    from topo2vec_lib.storage import atomic_path

    out_sim = sim.rio.write_crs(crs).rio.write_nodata(np.nan, encoded=False)
    out_sim.attrs = {"TOPO2VEC_SIMILARITY": json.dumps({"field": str(Path(args.field).resolve()),
                                                        "queries": [[float(a), float(b)] for a, b in zip(lon, lat)],
                                                        "standardize": args.standardize})}
    with atomic_path(sim_path) as tmp:
        out_sim.rio.to_raster(tmp, driver="COG", compress="ZSTD", predictor=3)
    meta = {"field": str(Path(args.field).resolve()), "similarity": os.path.relpath(sim_path.resolve(),
                                                                                    out.resolve().parent),
            "queries": [[float(a), float(b)] for a, b in zip(lon, lat)], "k": args.k, "min_separation_m": sep,
            "exclude_radius_m": excl, "standardize": args.standardize, "model": field.attrs["embedder"]}
    search.write_geojson(matches, out, metadata=meta)
    _say(f"wrote {out} ({len(matches)} matches, at least {sep:g} m apart and {excl:g} m from the queries) and "
         f"{sim_path} (cosine similarity of {sim.size:,} cells) in {time.perf_counter() - t0:.1f} s")
    for rec in matches.head(5).to_dict("records"):
        _say(f"  #{rec['rank']}: {rec['lon']:.5f},{rec['lat']:.5f}  similarity {rec['similarity']:.3f}")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ map
def read_matches(path: str | os.PathLike):
    """A ``topo2vec search`` GeoJSON: (matches DataFrame, its ``topo2vec`` metadata, the similarity GeoTIFF path
    or None)."""
    import pandas as pd

    path = Path(path)
    try:
        doc = json.loads(path.read_text())
        rows = [{"lon": f["geometry"]["coordinates"][0], "lat": f["geometry"]["coordinates"][1],
                 **f.get("properties", {})} for f in doc["features"]]
    except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
        raise ValueError(f"--search {path} is not a GeoJSON of points written by topo2vec search ({err})") from None
    meta = doc.get("topo2vec") or {}
    sim = meta.get("similarity")
    sim_path = (path.resolve().parent / sim) if sim else None
    return pd.DataFrame(rows), meta, sim_path


def cmd_map(args: argparse.Namespace) -> int:
    """An offline folium map of a field: hillshade, PCA-to-RGB, and a search's similarity and matches."""
    import numpy as np
    import rioxarray
    import xarray as xr

    from topo2vec_lib import fields, maps

    out = Path(args.out)
    if out.suffix.lower() not in (".html", ".htm"):
        raise CliError(f"--out {out}: the map is an HTML file (.html)")
    if out.exists() and not args.overwrite:
        raise FileExistsError(f"{out} exists; pass --overwrite to replace it")
    field = fields.open_field(args.field)
    crs = field.attrs["crs_wkt"]
    dem_path = args.dem or field.attrs.get("dem", {}).get("path")
    hillshade = None
    if dem_path and Path(dem_path).exists():
        hillshade = maps.hillshade_raster(fields.dem_on_field(dem_path, field, max_px=max(args.max_px, 400)))
    elif args.dem:
        raise FileNotFoundError(f"--dem {args.dem} does not exist")
    else:
        _say(f"warning: the field's DEM ({dem_path}) is not there: no hillshade layer (give it with --dem)")
    pca = fields.pca_rgb(field, max_px=args.max_px)
    similarity = queries = matches = None
    if args.search:
        matches, meta, sim_path = read_matches(args.search)
        if meta.get("queries"):
            queries = tuple(np.asarray(meta["queries"], dtype=float).T)
        if sim_path is not None and sim_path.exists():
            da = rioxarray.open_rasterio(sim_path, masked=True)
            if not isinstance(da, xr.DataArray):
                raise ValueError(f"{sim_path} is not a one-band similarity GeoTIFF")
            da = da.squeeze("band", drop=True).drop_vars("spatial_ref", errors="ignore")
            step = max(1, int(np.ceil(max(da.shape) / args.max_px)))
            similarity = da.isel(y=slice(None, None, step), x=slice(None, None, step)).load()
        else:
            _say(f"warning: the search's similarity GeoTIFF ({sim_path}) is not there: no similarity layer")
    m = maps.field_map(hillshade, crs, pca=pca, similarity=similarity, queries=queries, matches=matches,
                       title=str(field.attrs["embedder"]))
    maps.save_map(m, out)
    _say(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB, works offline)")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ info
def cmd_info(args: argparse.Namespace) -> int:
    """Print a model's card."""
    from topo2vec_lib.model_card import card_text
    from topo2vec_lib.models.checkpoints import CheckpointError

    if not Path(args.model).exists():
        raise FileNotFoundError(f"model {args.model} does not exist")
    try:
        text, origin = card_text(args.model)
    except CheckpointError as err:
        raise ValueError(str(err)) from None
    print(text)
    _say(f"(card: {origin})")
    return EXIT_OK


# ------------------------------------------------------------------------------------------------ parser
def build_parser() -> argparse.ArgumentParser:
    """The ``topo2vec`` argument parser (one subparser per command)."""
    from topo2vec_lib import __version__
    from topo2vec_lib.fields import DEFAULT_BATCH, DEFAULT_TILE, DTYPES
    from topo2vec_lib.inference import PRECISIONS

    ap = argparse.ArgumentParser(prog="topo2vec", description="Topography embeddings of any DEM: embedding fields, "
                                 "similarity search, maps, model cards.",
                                 epilog="Exit codes: 0 done, 2 bad usage or input, 1 other failure, 130 interrupted.")
    ap.add_argument("--version", action="version", version=f"topo2vec {__version__}")
    ap.add_argument("--debug", action="store_true", help="print the traceback of unexpected errors")
    sub = ap.add_subparsers(dest="command", metavar="COMMAND")

    e = sub.add_parser("embed", help="embed every place of a DEM into a field (COG or zarr), or places into GeoParquet",
                       description="Embed every place of a regular grid over DEM (any GeoTIFF/VRT, any CRS) into a "
                       "Cloud-Optimized GeoTIFF (one band per dimension) or a zarr store; resumable: run the same "
                       "command again after an interruption. With --points, embed the places of a CSV/GeoJSON file "
                       "into GeoParquet. See topo2vec_lib/fields.py for the grid, the formats and their metadata.")
    e.add_argument("dem", metavar="DEM", help="elevation GeoTIFF or VRT (metres, any CRS)")
    e.add_argument("--model", required=True, help="checkpoint, e.g. models/topo2vec-4.pt")
    e.add_argument("--res-m", type=_metres, default=None, help="patch pixel size in m/px (default: the model's, 30)")
    e.add_argument("--stride-m", type=_metres, default=None, help="spacing of the places in metres (default 2 x res)")
    e.add_argument("--out", required=True, help="field.tif (COG), field.zarr, or places.parquet with --points")
    e.add_argument("--crs", default=None, help="metric CRS of the field (default: the DEM's if metric, else its "
                   "local UTM zone, or LAEA for DEMs wider than 6 degrees)")
    e.add_argument("--dtype", choices=DTYPES, default="float16", help="band type of the field (default float16; "
                   "int8: per-band scale and offset, GeoTIFF only)")
    e.add_argument("--points", default=None, help="places.csv (lon, lat columns) or places.geojson: embed these "
                   "places instead of a grid")
    e.add_argument("--skip-invalid", action="store_true", help="with --points: write places without a valid patch "
                   "as NaN (valid = false) instead of failing")
    e.add_argument("--tile", type=_positive_int, default=DEFAULT_TILE, help=f"places per tile side ({DEFAULT_TILE})")
    e.add_argument("--workers", type=_positive_int, default=2, help="tiles computed at once (2)")
    e.add_argument("--batch", type=_positive_int, default=DEFAULT_BATCH, help=f"places encoded at once "
                   f"({DEFAULT_BATCH})")
    e.add_argument("--device", default="cpu", help="cpu (default), cuda[:i] or auto")
    e.add_argument("--eager", action="store_true", help="encode with the eager PyTorch model (no TorchScript copy)")
    e.add_argument("--precision", choices=PRECISIONS, default="float32",
                   help="encoder arithmetic: float32 (default, equal to the eager model) or bf16 (faster "
                        "on CPUs with AVX-512 BF16 or AMX; vectors ~1%% from float32, cosine > 0.999)")
    e.add_argument("--restart", action="store_true", help="discard the finished tiles of an interrupted run")
    e.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    e.add_argument("--no-progress", action="store_true", help="no progress bar")
    e.set_defaults(func=cmd_embed)

    s = sub.add_parser("search", help="terrain like given places: similarity field and top-k matches",
                       description="The mean embedding of the --place cells, the cosine similarity of every cell to "
                       "it (written as a GeoTIFF), and the k most similar places at least --min-separation-m apart "
                       "(non-maximum suppression) as GeoJSON.")
    s.add_argument("field", metavar="FIELD", help="a field written by topo2vec embed (.tif or .zarr)")
    s.add_argument("--place", type=_lonlat, action="append", required=True, metavar="LON,LAT",
                   help="a query place (degrees, lon first); repeat for several (their mean is the query)")
    s.add_argument("--k", type=_positive_int, default=50, help="matches (50)")
    s.add_argument("--out", required=True, help="matches.geojson")
    s.add_argument("--similarity", default=None, help="similarity GeoTIFF (default: <out>.similarity.tif)")
    s.add_argument("--min-separation-m", type=_metres0, default=None,
                   help="matches at least this far apart (default: one patch footprint, 17 x res_m)")
    s.add_argument("--exclude-radius-m", type=_metres0, default=None,
                   help="no match this close to a query place (default: one patch footprint; 0 keeps them)")
    s.add_argument("--standardize", choices=("center", "zscore", "none"), default="center",
                   help="vectors centred on the field's mean before the cosine (default; see topo2vec_lib.search)")
    s.add_argument("--overwrite", action="store_true", help="replace the outputs if they exist")
    s.set_defaults(func=cmd_search)

    m = sub.add_parser("map", help="offline web map of a field (hillshade, PCA colours, a search's results)",
                       description="A folium map that works offline: the DEM's hillshade, the field's first three "
                       "principal components as colours and, with --search, the similarity layer, the queries and "
                       "the matches.")
    m.add_argument("field", metavar="FIELD", help="a field written by topo2vec embed")
    m.add_argument("--out", required=True, help="map.html")
    m.add_argument("--search", default=None, help="matches.geojson written by topo2vec search")
    m.add_argument("--dem", default=None, help="DEM for the hillshade (default: the one the field was made from)")
    m.add_argument("--max-px", type=_positive_int, default=800, help="largest side of the map's images (800)")
    m.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    m.set_defaults(func=cmd_map)

    i = sub.add_parser("info", help="print a model's card", description="Print the model card of a checkpoint: "
                       "the card the study wrote (with the probe results when the model_cards stage ran), or one "
                       "built from the checkpoint.")
    i.add_argument("model", metavar="MODEL", help="checkpoint, e.g. models/topo2vec-4.pt")
    i.set_defaults(func=cmd_info)
    return ap


def _join_negative_places(argv: list[str]) -> list[str]:
    """``--place -118.15,34.32`` -> ``--place=-118.15,34.32``: argparse would read a value starting with ``-`` as an
    option (western longitudes are negative)."""
    out: list[str] = []
    i = 0
    while i < len(argv):
        if argv[i] == "--place" and i + 1 < len(argv) and argv[i + 1].startswith("-") and "," in argv[i + 1]:
            out.append(f"--place={argv[i + 1]}")
            i += 2
            continue
        out.append(argv[i])
        i += 1
    return out


def main(argv: list[str] | None = None) -> int:
    """Run the command line with ``argv`` (default ``sys.argv[1:]``); returns the exit code."""
    parser = build_parser()
    argv = _join_negative_places(list(sys.argv[1:] if argv is None else argv))
    try:
        args = parser.parse_args(argv)
    except SystemExit as stop:          # --help, --version (0) and usage errors (2)
        return int(stop.code or 0)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    name = f"topo2vec {args.command}"
    with warnings.catch_warnings():
        warnings.simplefilter("default")
        warnings.simplefilter("ignore", (DeprecationWarning, PendingDeprecationWarning, FutureWarning))
        old_show = warnings.showwarning
        warnings.showwarning = lambda message, category, *a, **k: _say(f"{name}: warning: {message}")
        try:
            return int(args.func(args))
        except KeyboardInterrupt:
            extra = (" (finished tiles are kept: run the same command again to resume)"
                     if args.command == "embed" and not args.points else "")
            _say(f"{name}: interrupted{extra}")
            return EXIT_INTERRUPTED
        except (CliError, *_BAD_INPUT) as err:
            _say(f"{name}: error: {err}")
            if args.debug:
                traceback.print_exc()
            return EXIT_USAGE
        except Exception as err:  # noqa: BLE001 (anything else: a clear line, exit 1)
            _say(f"{name}: error: {type(err).__name__}: {err}")
            if args.debug:
                traceback.print_exc()
            else:
                _say("(run with --debug for the traceback)")
            return EXIT_ERROR
        finally:
            warnings.showwarning = old_show


if __name__ == "__main__":
    sys.exit(main())
