"""Noise defined on absolute coordinates: the same value at the same place, whatever window asks for it.

The synthetic world (:mod:`topo2vec_lib.synthetic`) is a function of absolute position and a seed, so that any
window, or any tile of it, gives the same heights where they overlap. Its random ingredients come from here:

* :func:`hash_uniform`: a deterministic hash (splitmix64) of integer lattice coordinates and a key, as uniform
  floats in [0, 1);
* :func:`gradient_noise`: 2-D gradient ("Perlin") noise: a unit gradient per lattice node, picked from a fixed
  table of 32 directions by the node's hash, quintic blending; zero mean, std about 0.19;
* :func:`fbm`: a sum of rotated, offset octaves of gradient noise with a power-law amplitude per octave
  (``wavelength ** hurst``: roughness grows as ``lag ** hurst``, like fractional Brownian motion) times a
  roll-off ``exp(-(rolloff_m / wavelength) ** 2 / 2)`` that damps the finest wavelengths
  (``reports/realism.md``, fix 1).

Only integer hashing, table look-ups, ``floor`` and the four arithmetic operations touch each point, so a point's
value does not depend on the shape of the array it is computed in (bit for bit: tested). Work is done in row
strips so temporaries stay small.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_PX = np.uint64(0x8CB92BA72F3D8DD7)
_PY = np.uint64(0xD6E8FEB86659FD93)
_N_DIR = 32
_ANGLES = (np.arange(_N_DIR) + 0.5) * (2.0 * math.pi / _N_DIR)
GRAD_X = np.array([math.cos(a) for a in _ANGLES])
GRAD_Y = np.array([math.sin(a) for a in _ANGLES])
"""The 32 unit gradient directions (python's own cos/sin of constants, fixed at import)."""

_STRIP_CELLS = 1 << 18   # points per strip of work (temporaries of a few MB)


def mix64(x: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser of uint64 values (wrapping arithmetic)."""
    with np.errstate(over="ignore"):
        x = (x ^ (x >> np.uint64(30))) * _M1
        x = (x ^ (x >> np.uint64(27))) * _M2
        return x ^ (x >> np.uint64(31))


def key_of(*parts: int) -> int:
    """A 64-bit key from integers (seed, feature id, octave ...): nested splitmix64, order matters."""
    k = np.asarray(0x243F6A8885A308D3, np.uint64)
    with np.errstate(over="ignore"):
        for p in parts:
            k = mix64(np.asarray(k ^ (np.uint64(int(p) & 0xFFFFFFFFFFFFFFFF) + _GOLDEN), np.uint64))
    return int(k)


def hash_lattice(ix: np.ndarray, iy: np.ndarray, key: int) -> np.ndarray:
    """uint64 hash of integer lattice coordinates (int64 arrays, broadcast) under ``key``."""
    ux = np.asarray(ix, np.int64).view(np.uint64)
    uy = np.asarray(iy, np.int64).view(np.uint64)
    with np.errstate(over="ignore"):
        return mix64(mix64(ux * _PX + np.uint64(key)) ^ (uy * _PY))


def hash_uniform(ix, iy, key: int) -> np.ndarray:
    """Uniform floats in [0, 1) (53 bits) from integer lattice coordinates and ``key``."""
    return (hash_lattice(ix, iy, key) >> np.uint64(11)).astype(np.float64) * (1.0 / 9007199254740992.0)


def _fade(t: np.ndarray) -> np.ndarray:
    return t * t * t * (t * (t * 6.0 - 15.0) + 10.0)


def gradient_noise(u: np.ndarray, v: np.ndarray, key: int) -> np.ndarray:
    """Gradient noise at lattice coordinates ``u`` (east), ``v`` (any axis), float64 arrays of one shape.

    The gradients of the lattice nodes the points need are hashed once on the nodes' bounding box, then
    gathered. Zero at every node; std about 0.19 over the plane.
    """
    u = np.asarray(u, np.float64)
    v = np.asarray(v, np.float64)
    fu, fv = np.floor(u), np.floor(v)
    tu, tv = u - fu, v - fv
    iu, iv = fu.astype(np.int64), fv.astype(np.int64)
    u0, v0 = int(iu.min()), int(iv.min())
    w = int(iu.max()) - u0 + 2
    h = int(iv.max()) - v0 + 2
    nodes = hash_lattice(np.arange(u0, u0 + w, dtype=np.int64)[None, :],
                         np.arange(v0, v0 + h, dtype=np.int64)[:, None], key)
    d = (nodes >> np.uint64(59)).astype(np.intp).ravel()          # top 5 bits: one of 32 directions
    gx, gy = GRAD_X[d], GRAD_Y[d]
    base = (iv - v0) * w + (iu - u0)
    n00 = gx[base] * tu + gy[base] * tv
    n10 = gx[base + 1] * (tu - 1.0) + gy[base + 1] * tv
    n01 = gx[base + w] * tu + gy[base + w] * (tv - 1.0)
    n11 = gx[base + w + 1] * (tu - 1.0) + gy[base + w + 1] * (tv - 1.0)
    a, b = _fade(tu), _fade(tv)
    lo = n00 + a * (n10 - n00)
    hi = n01 + a * (n11 - n01)
    return lo + b * (hi - lo)


def octave_frame(key: int, octave: int) -> tuple[float, float, float, float]:
    """Rotation (cos, sin) and lattice offset (du, dv) of one octave: decorrelates the octaves' lattices."""
    r = hash_uniform(np.int64(octave), np.int64(-1), key)
    a = float(r) * 2.0 * math.pi
    du = float(hash_uniform(np.int64(octave), np.int64(-2), key)) * 1024.0
    dv = float(hash_uniform(np.int64(octave), np.int64(-3), key)) * 1024.0
    c, s = math.cos(a), math.sin(a)
    return c, s, du, dv


def octaves(max_wavelength_m: float, min_wavelength_m: float, hurst: float, rolloff_m: float = 0.0,
            lacunarity: float = 2.0) -> list[tuple[float, float, int]]:
    """``[(wavelength_m, amplitude, index), ...]`` from ``max_wavelength_m`` down to at least
    ``min_wavelength_m``: amplitude ``wavelength ** hurst * exp(-(rolloff_m / wavelength) ** 2 / 2)`` (fBm with a
    damped fine end); ``index`` numbers the octaves, so a sub-list of them draws the same octaves."""
    out: list[tuple[float, float, int]] = []
    w = float(max_wavelength_m)
    while w >= min_wavelength_m * (1 - 1e-9):
        out.append((w, w ** hurst * math.exp(-0.5 * (rolloff_m / w) ** 2), len(out)))
        w /= lacunarity
    return out


def fbm(x: np.ndarray, y: np.ndarray, key: int, bands: Sequence[tuple]) -> np.ndarray:
    """Sum over ``bands`` ``[(wavelength_m, amplitude[, index]), ...]`` of rotated gradient-noise octaves at
    ``x, y`` (metres of any CRS; arrays that broadcast to the output shape). A row ``x`` of shape ``(1, nx)``
    with a column ``y`` of shape ``(ny, 1)`` is a grid, computed in row strips. Octave ``index`` (default: its
    position in ``bands``) uses the frame :func:`octave_frame` ``(key, index)`` and the gradients of
    ``key_of(key, index)``."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    shape = np.broadcast_shapes(x.shape, y.shape)
    out = np.zeros(shape, np.float64)
    index = [int(b[2]) if len(b) > 2 else i for i, b in enumerate(bands)]
    frames = [octave_frame(key, i) for i in index]
    keys = [key_of(key, i) for i in index]
    bands = [(float(b[0]), float(b[1])) for b in bands]
    if x.ndim == 2 and y.ndim == 2 and x.shape[0] == 1 and y.shape[1] == 1:
        rows = max(1, _STRIP_CELLS // max(x.shape[1], 1))
        for r0 in range(0, y.shape[0], rows):
            yy = y[r0:r0 + rows]
            acc = out[r0:r0 + rows]
            for (w, amp), (c, s, du, dv), k in zip(bands, frames, keys):
                acc += amp * gradient_noise((c * x - s * yy) / w + du, (s * x + c * yy) / w + dv, k)
        return out
    xb, yb = np.broadcast_arrays(x, y)
    flat_x, flat_y, flat_o = xb.ravel(), yb.ravel(), out.reshape(-1)
    for p0 in range(0, flat_o.size, _STRIP_CELLS):
        sx, sy = flat_x[p0:p0 + _STRIP_CELLS], flat_y[p0:p0 + _STRIP_CELLS]
        acc = flat_o[p0:p0 + _STRIP_CELLS]
        for (w, amp), (c, s, du, dv), k in zip(bands, frames, keys):
            acc += amp * gradient_noise((c * sx - s * sy) / w + du, (s * sx + c * sy) / w + dv, k)
    return out
