"""Tiles over a big raster: a tile grid with halos, windowed reads and writes, and a Dask runner for tile work.

A raster ``(ny, nx)`` (row 0 = north) is cut into ``tile_px x tile_px`` tiles (the last row and column of
tiles smaller). Tile work reads its tile plus a *halo* of ``h`` cells on every side with :func:`read_window`:
cells beyond the raster read as NaN (nodata), so a cell on the raster edge sees nodata beyond it, exactly as
the one-piece rules see the window edge. Cells are addressed by their global flat index ``row * nx + col``.

Sources (:func:`as_source`) are read window by window and never loaded whole: a numpy array, an
``xarray.DataArray`` (Dask/zarr-backed ones stay lazy), a zarr array or an ``.npy`` file (memory-mapped).
:class:`NpyArray` is also the scratch store that tiles write their part of a raster into (disjoint windows
of one memory-mapped ``.npy``; safe from several processes). :class:`TileRunner` maps a function over tiles
in this process or on a ``dask.distributed`` cluster (a LocalCluster with processes by default).
"""
from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

# (dy, dx) of the 8 neighbours; the first four are the "forward" half that lists each adjacent pair once
OFFSETS8 = [(0, 1), (1, -1), (1, 0), (1, 1), (0, -1), (-1, 1), (-1, 0), (-1, -1)]
FORWARD4 = OFFSETS8[:4]


# --------------------------------------------------------------------------------------------------
# the tile grid
# --------------------------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Tile:
    """One tile: rows ``r0:r1``, cols ``c0:c1`` of the raster; ``index`` is its position in the grid's list."""

    index: int
    ti: int
    tj: int
    r0: int
    r1: int
    c0: int
    c1: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.r1 - self.r0, self.c1 - self.c0

    def window(self, halo: int) -> tuple[int, int, int, int]:
        """``(r0, r1, c0, c1)`` of the tile grown by ``halo`` cells on every side (may leave the raster)."""
        return self.r0 - halo, self.r1 + halo, self.c0 - halo, self.c1 + halo


def check_tile_px(tile_px, name: str = "tile_px") -> int:
    """``tile_px`` as an int >= 3, else ValueError naming the value."""
    if isinstance(tile_px, bool) or not isinstance(tile_px, (int, np.integer)) or tile_px < 3:
        raise ValueError(f"{name} = {tile_px!r} must be an integer number of cells >= 3 (tiles are square)")
    return int(tile_px)


def check_reach(tile_px: int, reach_px: dict[str, tuple[int, str]]) -> None:
    """ValueError when a rule reaches further than one tile: ``reach_px = {rule: (cells, why)}``.

    A tile reads at most its eight neighbours' cells, so every halo must fit in one tile.
    """
    for rule, (px, why) in reach_px.items():
        if px > tile_px:
            raise ValueError(f"tile_px = {tile_px} is smaller than the {rule} reach of {px} cells ({why}); "
                             f"use tile_px >= {px} or shorten that rule's reach")


class TileGrid:
    """Square tiles of ``tile_px`` cells over a raster of ``shape = (ny, nx)``; ``tiles`` in row-major order."""

    def __init__(self, shape, tile_px: int):
        ny, nx = (int(v) for v in shape)
        if ny < 1 or nx < 1:
            raise ValueError(f"raster shape {tuple(shape)} must be (ny, nx) with ny, nx >= 1")
        self.shape = (ny, nx)
        self.tile_px = check_tile_px(tile_px)
        self.n_ti = math.ceil(ny / self.tile_px)
        self.n_tj = math.ceil(nx / self.tile_px)
        t = self.tile_px
        self.tiles = [Tile(i * self.n_tj + j, i, j, i * t, min(ny, (i + 1) * t), j * t, min(nx, (j + 1) * t))
                      for i in range(self.n_ti) for j in range(self.n_tj)]

    def __len__(self) -> int:
        return len(self.tiles)

    def __repr__(self) -> str:
        return f"TileGrid(shape={self.shape}, tile_px={self.tile_px}, tiles={self.n_ti}x{self.n_tj})"

    def tile_of(self, flat: np.ndarray) -> np.ndarray:
        """Tile index ``(N,)`` of each global flat cell index."""
        r, c = np.divmod(np.asarray(flat, np.int64), self.shape[1])
        return (r // self.tile_px) * self.n_tj + c // self.tile_px

    def split(self, flat: np.ndarray, *values: np.ndarray) -> list[tuple[np.ndarray, ...]]:
        """``flat`` (and parallel ``values``) split by tile: one tuple of arrays per tile, in tile order."""
        flat = np.asarray(flat, np.int64)
        tid = self.tile_of(flat)
        order = np.argsort(tid, kind="stable")
        bounds = np.searchsorted(tid[order], np.arange(len(self.tiles) + 1))
        arrays = [flat[order]] + [np.asarray(v)[order] for v in values]
        return [tuple(a[bounds[k]:bounds[k + 1]] for a in arrays) for k in range(len(self.tiles))]


def window_index(shape, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
    """``(r1 - r0, c1 - c0)`` int64 global flat index of each window cell, -1 outside the raster."""
    ny, nx = shape
    r = np.arange(r0, r1, dtype=np.int64)[:, None]
    c = np.arange(c0, c1, dtype=np.int64)[None, :]
    inside = (r >= 0) & (r < ny) & (c >= 0) & (c < nx)
    return np.where(inside, r * nx + c, -1)


def perimeter_mask(shape) -> np.ndarray:
    """``shape`` bool: the outermost ring of cells."""
    m = np.zeros(shape, bool)
    m[0, :] = m[-1, :] = m[:, 0] = m[:, -1] = True
    return m


def neighbour_views(a: np.ndarray):
    """The 8 views ``(dy, dx, b)`` of a halo'd window with ``b[i, j] = a[1 + i + dy, 1 + j + dx]``: the
    neighbours of the inner ``(ny - 2, nx - 2)`` cells, no copies."""
    ny, nx = a.shape
    return [(dy, dx, a[1 + dy:ny - 1 + dy, 1 + dx:nx - 1 + dx]) for dy, dx in OFFSETS8]


def border_cells(valid_w: np.ndarray) -> np.ndarray:
    """``(th, tw)`` bool for a tile read with a 1-cell halo ``valid_w (th + 2, tw + 2)``: valid tile cells with a
    valid 8-neighbour outside the tile (the only cells through which anything crosses the tile's border)."""
    th, tw = valid_w.shape[0] - 2, valid_w.shape[1] - 2
    ring = ~np.pad(np.ones((th, tw), bool), 1)
    out = np.zeros((th, tw), bool)
    for _, _, nb in neighbour_views(valid_w & ring):
        out |= nb
    return out & valid_w[1:-1, 1:-1]


# --------------------------------------------------------------------------------------------------
# sources and scratch stores
# --------------------------------------------------------------------------------------------------
class ArraySource:
    """A 2-D array-like read by windows: numpy, memmap, zarr or Dask arrays (``[r0:r1, c0:c1]`` slicing)."""

    def __init__(self, array):
        if getattr(array, "ndim", None) != 2:
            raise ValueError(f"a raster source must be 2-D (ny, nx), got shape {getattr(array, 'shape', None)}")
        self.array = array
        self.shape = tuple(int(v) for v in array.shape)

    def read(self, r0: int, r1: int, c0: int, c1: int) -> np.ndarray:
        """Cells ``[r0:r1, c0:c1]`` (inside the raster) as a float64 array."""
        return np.asarray(self.array[r0:r1, c0:c1], dtype=np.float64)


class DataArraySource(ArraySource):
    """A ``(y, x)`` xarray.DataArray read by windows (a Dask/zarr-backed one is computed window by window)."""

    def __init__(self, da):
        if getattr(da, "ndim", None) != 2:
            raise ValueError(f"a terrain DataArray must be 2-D (y, x), got dims {getattr(da, 'dims', None)}")
        self.array = da.variable
        self.shape = tuple(int(v) for v in da.shape)

    def read(self, r0, r1, c0, c1):
        return np.asarray(self.array[r0:r1, c0:c1].values, dtype=np.float64)


class NpyArray:
    """A 2-D ``.npy`` file read and written by windows: a raster source, and a scratch store tiles write into.

    Windows go through ``pread``/``pwrite`` of row segments, not a persistent memory map, so a process holds
    only the windows it asked for (its resident memory stays bounded by the tile). Tiles write disjoint
    windows, which is safe from several processes. Picklable by path: Dask workers on the same machine (or
    a shared file system) open the same file.
    """

    def __init__(self, path, shape=None, dtype=None, fill=None):
        self.path = str(path)
        if shape is not None:
            mm = np.lib.format.open_memmap(self.path, mode="w+", dtype=dtype, shape=tuple(shape))
            if fill is not None:
                mm[...] = fill
            mm.flush()
            del mm
        with open(self.path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape_, fortran, dtype_ = read_header(fh)
            self.offset = fh.tell()
        if fortran or len(shape_) != 2:
            raise ValueError(f"{self.path} must hold a C-order 2-D array, got shape {shape_}")
        self.shape, self.dtype = tuple(int(v) for v in shape_), np.dtype(dtype_)

    def _rows(self, r0, r1, c0, c1):
        nx, size = self.shape[1], self.dtype.itemsize
        for r in range(r0, r1):
            yield r - r0, self.offset + (r * nx + c0) * size, (c1 - c0) * size

    def read(self, r0, r1, c0, c1, dtype=np.float64) -> np.ndarray:
        out = np.empty((r1 - r0, c1 - c0), self.dtype)
        fd = os.open(self.path, os.O_RDONLY)
        try:
            for i, off, nbytes in self._rows(r0, r1, c0, c1):
                out[i] = np.frombuffer(os.pread(fd, nbytes, off), self.dtype)
        finally:
            os.close(fd)
        return out.astype(dtype, copy=False)

    def write(self, r0: int, c0: int, values: np.ndarray) -> None:
        values = np.ascontiguousarray(values, self.dtype)
        fd = os.open(self.path, os.O_WRONLY)
        try:
            for i, off, _ in self._rows(r0, r0 + values.shape[0], c0, c0 + values.shape[1]):
                os.pwrite(fd, values[i].tobytes(), off)
        finally:
            os.close(fd)

    def load(self) -> np.ndarray:
        """The whole array in memory (small rasters and tests only)."""
        return np.load(self.path)


def as_source(obj):
    """A windowed reader for ``obj``: numpy/zarr/Dask array, xarray DataArray, ``.npy`` path, or a source."""
    if isinstance(obj, (ArraySource, NpyArray)):
        return obj
    if isinstance(obj, (str, os.PathLike)):
        path = Path(obj)
        if path.suffix == ".npy":
            return NpyArray(path)
        raise ValueError(f"raster path {str(path)!r} must be a .npy file; open a terrain store with "
                         f"topo2vec_lib.terrain.open_terrain(path, chunks={{}}) and pass the DataArray")
    if hasattr(obj, "dims") and hasattr(obj, "variable"):
        return DataArraySource(obj)
    if hasattr(obj, "shape") and hasattr(obj, "__getitem__"):
        return ArraySource(obj)
    raise ValueError(f"cannot read a raster from {type(obj).__name__}: give a 2-D array, DataArray or .npy path")


def read_window(src, r0: int, r1: int, c0: int, c1: int, fill=np.nan, dtype=np.float64) -> np.ndarray:
    """Window ``[r0:r1, c0:c1]`` of a source, ``fill`` where it leaves the raster; reads only what it needs."""
    ny, nx = src.shape
    out = np.full((r1 - r0, c1 - c0), fill, dtype=dtype)
    a0, a1, b0, b1 = max(r0, 0), min(r1, ny), max(c0, 0), min(c1, nx)
    if a1 > a0 and b1 > b0:
        out[a0 - r0:a1 - r0, b0 - c0:b1 - c0] = src.read(a0, a1, b0, b1)
    return out


def read_clipped(src, r0: int, r1: int, c0: int, c1: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Window ``[r0:r1, c0:c1]`` clipped to the raster, and the ``(row, col)`` of its first cell."""
    ny, nx = src.shape
    a0, a1, b0, b1 = max(r0, 0), min(r1, ny), max(c0, 0), min(c1, nx)
    return src.read(a0, a1, b0, b1), (a0, b0)


# --------------------------------------------------------------------------------------------------
# components that cross tile borders
# --------------------------------------------------------------------------------------------------
def link_fragments(shape, cells: np.ndarray, fragment: np.ndarray, n_fragments: int) -> np.ndarray:
    """Global component id ``(n_fragments,)`` of fragments (8-connected pieces of a mask cut by tiles).

    ``cells`` are the global flat indices of the mask's cells on tile perimeters, ``fragment`` the fragment id
    of each (0..n_fragments-1). Fragments holding 8-adjacent cells are joined; ids are 0..K-1 in no set order.
    """
    cells = np.asarray(cells, np.int64)
    fragment = np.asarray(fragment, np.int64)
    ny, nx = shape
    if cells.size == 0:
        return np.arange(n_fragments, dtype=np.int64)
    order = np.argsort(cells)
    cs, fs = cells[order], fragment[order]
    r, c = np.divmod(cs, nx)
    a_list, b_list = [], []
    for dy, dx in FORWARD4:
        rr, cc = r + dy, c + dx
        nb = rr * nx + cc
        pos = np.minimum(np.searchsorted(cs, nb), cs.size - 1)
        hit = (rr >= 0) & (rr < ny) & (cc >= 0) & (cc < nx) & (cs[pos] == nb)
        a_list.append(fs[hit])
        b_list.append(fs[pos[hit]])
    a, b = np.concatenate(a_list), np.concatenate(b_list)
    g = coo_matrix((np.ones(a.size, np.int8), (a, b)), shape=(n_fragments, n_fragments))
    return connected_components(g, directed=False)[1].astype(np.int64)


def label8(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """8-connected labels of ``mask`` (1..n, 0 = background) and n, as :func:`scipy.ndimage.label`."""
    return ndimage.label(mask, structure=np.ones((3, 3), bool))


# --------------------------------------------------------------------------------------------------
# running tile work
# --------------------------------------------------------------------------------------------------
_CLIENT_MAP_KEYWORDS = {"key", "workers", "retries", "resources", "priority", "allow_other_workers",
                        "fifo_timeout", "actor", "actors", "pure", "batch_size"}


def check_scheduler(address: str, timeout_s: float = 5.0) -> None:
    """ValueError naming ``address`` when no dask.distributed scheduler answers there within ``timeout_s``."""
    from dask.distributed import Client

    try:
        client = Client(address, timeout=f"{timeout_s}s")
    except (OSError, TimeoutError, ValueError) as err:
        raise ValueError(f"dask scheduler {address!r} does not answer within {timeout_s:g} s ({type(err).__name__}: "
                         f"{err}); start it, fix dask.scheduler, or set it to null (a local cluster)") from None
    client.close()


class TileRunner:
    """Maps a function over tiles here (``scheduler="sync"``) or on ``dask.distributed``.

    ``scheduler``: ``None`` (default) or ``"processes"`` starts a LocalCluster with ``n_workers`` processes
    of one thread each (default: the CPU count) for the runner's lifetime; ``"sync"`` runs tile after tile in
    this process; a ``"tcp://host:port"`` address or a ``dask.distributed.Client`` uses an existing cluster
    (scratch files then must be on a file system every worker sees). Use as a context manager.
    """

    def __init__(self, scheduler=None, n_workers: int | None = None, memory_limit="auto"):
        self.client: Any = None
        self._own: list[Any] = []
        self._scattered: dict[int, tuple] = {}
        if scheduler == "sync":
            return
        from dask.distributed import Client, LocalCluster

        if scheduler is None or scheduler == "processes":
            n = n_workers or os.cpu_count() or 1
            if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
                raise ValueError(f"n_workers = {n_workers!r} must be a positive integer")
            cluster = LocalCluster(n_workers=int(n), threads_per_worker=1, processes=True,
                                   dashboard_address=None, memory_limit=memory_limit)
            self.client = Client(cluster)
            self._own = [self.client, cluster]
        elif isinstance(scheduler, str):
            try:
                self.client = Client(scheduler, timeout="10s")
            except (OSError, TimeoutError, ValueError) as err:
                raise ValueError(f"dask scheduler {scheduler!r} does not answer ({type(err).__name__}: {err}); start "
                                 f"it, fix dask.scheduler, or set it to null (a local cluster)") from None
            self._own = [self.client]
        elif hasattr(scheduler, "submit") and hasattr(scheduler, "gather"):
            self.client = scheduler
        else:
            raise ValueError(f"scheduler {scheduler!r} must be None, 'processes', 'sync', a scheduler address "
                             "or a dask.distributed.Client")

    def map(self, fn: Callable, items: Iterable, **shared) -> list:
        """``[fn(item, **shared) for item in items]``, in order; ``shared`` values go to each worker once."""
        items = list(items)
        reserved = sorted(set(shared) & _CLIENT_MAP_KEYWORDS)
        if reserved:
            raise ValueError(f"shared argument name(s) {reserved} clash with dask.distributed Client.map keywords")
        if self.client is None:
            return [fn(item, **shared) for item in items]
        if not items:
            return []
        scattered = {k: self._scatter(v) for k, v in shared.items()}
        futures = self.client.map(fn, items, pure=False, **scattered)
        try:
            return self.client.gather(futures)
        finally:
            del futures

    def _scatter(self, value):
        """A future of ``value`` on every worker, sent once per object for the runner's lifetime."""
        hit = self._scattered.get(id(value))
        if hit is None or hit[0] is not value:
            hit = (value, self.client.scatter(value, broadcast=True, hash=False))
            self._scattered[id(value)] = hit
        return hit[1]

    def close(self) -> None:
        self._scattered = {}
        for obj in self._own:
            obj.close()
        self._own = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
