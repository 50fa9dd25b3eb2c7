"""Fixed (non-learned) geomorphometric descriptors of raw-metre patches, vectorised over a batch.

Every function takes ``z``: float elevation patches in **metres**, shape ``(N, S, S)`` with S odd (17 in this
study), row 0 = north, column 0 = west, pixel size ``res_m`` (metres per pixel). The centre pixel is
``z[:, S // 2, S // 2]``. NaN anywhere in a patch makes that patch's descriptors NaN (nothing is clipped).

Measures (per patch, one scale; :func:`descriptors` stacks them in :data:`FEATURES` order):

- ``slope_mean_deg``, ``slope_max_deg``: slope ``atan(|grad z|)`` in degrees from central differences
  (``numpy.gradient``; one-sided at the patch edge), averaged and maximised over the patch.
- ``profile_curv``, ``plan_curv``, ``general_curv`` (1/m): from the least-squares quadratic
  ``z = a x^2 + b y^2 + c xy + d x + e y + f`` over the whole patch (x east, y north, metres from the centre),
  the multi-scale method of Wood (1996, LandSerf; Evans 1979 for the 3x3 case):
  profile = ``-2 (a d^2 + b e^2 + c d e) / ((d^2 + e^2) (1 + d^2 + e^2)^1.5)``,
  plan = ``-2 (b d^2 + a e^2 - c d e) / (d^2 + e^2)^1.5``, general = ``-2 (a + b)``
  (Zevenbergen & Thorne 1987). One sign convention for all three: positive = convex (a hilltop has
  general > 0, a valley across the slope has plan < 0, a slope steepening downhill has profile > 0).
  Profile and plan curvature are undefined where the fitted centre gradient vanishes and explode near it
  (plan ~ 1 / |grad|); they are set to 0 where the fitted centre slope is below ``flat_deg`` (1 degree).
- ``tpi_m``: topographic position index, centre elevation minus the patch mean (Weiss 2001, with the
  whole patch as the neighbourhood); > 0 on a summit, < 0 in a valley.
- ``relief_m``: max - min; ``roughness_m``: standard deviation of the elevations.
- ``n_higher``, ``n_lower``: geomorphon-like pattern counts (Jasiewicz & Stepinski 2013): along each of the
  8 compass directions, out to the patch edge (lookup distance ``L = (S // 2) * res_m``, x sqrt(2) on the
  diagonals), the steepest upward and downward elevation angles seen from the centre, ``beta_max`` and
  ``beta_min``, give the zenith ``phi = 90 - beta_max`` and nadir ``psi = 90 + beta_min`` angles; the
  direction is *higher* (+) if ``psi - phi > flat_deg``, *lower* (-) if ``phi - psi > flat_deg``, else flat.
  ``flat_deg`` defaults to 1 degree, the default of Jasiewicz & Stepinski and of GRASS ``r.geomorphon``.
  A summit has 8 lower.
"""
from __future__ import annotations

import numpy as np

from topo2vec_lib.grid import slope_deg

FEATURES = ("slope_mean_deg", "slope_max_deg", "profile_curv", "plan_curv", "general_curv",
            "tpi_m", "relief_m", "roughness_m", "n_higher", "n_lower")
FLAT_DEG = 1.0
_DIRECTIONS = ((-1, 0), (-1, 1), (0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1))  # N NE E SE S SW W NW
_EPS_GRAD = 1e-6


def _check_patches(z, res_m: float) -> np.ndarray:
    z = np.asarray(z, dtype=np.float64)
    if z.ndim != 3 or z.shape[1] != z.shape[2] or z.shape[1] % 2 == 0 or z.shape[1] < 3:
        raise ValueError(f"patches must have shape (N, S, S) with S odd and >= 3 (e.g. (N, 17, 17)), "
                         f"got {z.shape}")
    if not np.isfinite(res_m) or res_m <= 0:
        raise ValueError(f"res_m={res_m!r} is not valid; expected a positive pixel size in metres")
    return z


def quadratic_fit(z, res_m: float) -> np.ndarray:
    """Least-squares ``(a, b, c, d, e, f)`` of ``z = a x^2 + b y^2 + c xy + d x + e y + f`` per patch, ``(N, 6)``.

    x is metres east of the centre, y metres north of it.
    """
    z = _check_patches(z, res_m)
    n, s, _ = z.shape
    half = s // 2
    offsets = (np.arange(s) - half) * res_m
    x = np.broadcast_to(offsets[None, :], (s, s)).ravel()            # column -> east
    y = np.broadcast_to(-offsets[:, None], (s, s)).ravel()           # row 0 is north
    design = np.stack([x * x, y * y, x * y, x, y, np.ones_like(x)], axis=1)   # (S*S, 6)
    return z.reshape(n, s * s) @ np.linalg.pinv(design).T


def curvatures(coef: np.ndarray, flat_deg: float = FLAT_DEG) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Profile, plan and general curvature (1/m, positive = convex) from :func:`quadratic_fit` coefficients.

    Profile and plan curvature are set to 0 where the fitted centre slope is below ``flat_deg`` degrees: their
    formulas divide by powers of the gradient and explode on flats (plan curvature ~ 1 / |grad|).
    """
    a, b, c, d, e = (coef[:, i] for i in range(5))
    g2 = d * d + e * e
    min_g = max(np.tan(np.radians(flat_deg)), _EPS_GRAD)
    undefined = g2 <= min_g ** 2                      # False for NaN, so NaN patches stay NaN
    safe = np.where(undefined, 1.0, g2)
    profile = np.where(undefined, 0.0, -2 * (a * d * d + b * e * e + c * d * e) / (safe * (1 + safe) ** 1.5))
    plan = np.where(undefined, 0.0, -2 * (b * d * d + a * e * e - c * d * e) / safe ** 1.5)
    general = -2 * (a + b)
    return profile, plan, general


def geomorphon_counts(z, res_m: float, flat_deg: float = FLAT_DEG) -> tuple[np.ndarray, np.ndarray]:
    """Numbers of higher and lower directions (each ``(N,)``, 0..8) of the geomorphon pattern at the centre."""
    z = _check_patches(z, res_m)
    if not np.isfinite(flat_deg) or flat_deg < 0:
        raise ValueError(f"flat_deg={flat_deg!r} is not valid; expected a non-negative angle in degrees")
    half = z.shape[1] // 2
    steps = np.arange(1, half + 1)
    di = np.array([d[0] for d in _DIRECTIONS])[:, None] * steps        # (8, L) row offsets
    dj = np.array([d[1] for d in _DIRECTIONS])[:, None] * steps
    dist_m = np.hypot(di, dj) * res_m                                   # (8, L)
    centre = z[:, half, half][:, None, None]
    angles = np.degrees(np.arctan((z[:, half + di, half + dj] - centre) / dist_m))   # (N, 8, L)
    zenith = 90.0 - angles.max(axis=2)
    nadir = 90.0 + angles.min(axis=2)
    n_higher = (nadir - zenith > flat_deg).sum(axis=1).astype(np.float64)
    n_lower = (zenith - nadir > flat_deg).sum(axis=1).astype(np.float64)
    nan = np.isnan(angles).any(axis=(1, 2))
    return np.where(nan, np.nan, n_higher), np.where(nan, np.nan, n_lower)


def descriptors(z, res_m: float, flat_deg: float = FLAT_DEG) -> np.ndarray:
    """All :data:`FEATURES` of raw-metre patches ``(N, S, S)`` at pixel size ``res_m``: ``(N, 10)`` float64."""
    z = _check_patches(z, res_m)
    half = z.shape[1] // 2
    slope = slope_deg(z, res_m)
    profile, plan, general = curvatures(quadratic_fit(z, res_m), flat_deg)
    n_higher, n_lower = geomorphon_counts(z, res_m, flat_deg)
    flat = z.reshape(len(z), -1)
    out = np.stack([
        slope.reshape(len(z), -1).mean(axis=1), slope.reshape(len(z), -1).max(axis=1),
        profile, plan, general,
        z[:, half, half] - flat.mean(axis=1),
        flat.max(axis=1) - flat.min(axis=1),
        flat.std(axis=1),
        n_higher, n_lower,
    ], axis=1)
    out[np.isnan(z).any(axis=(1, 2))] = np.nan
    return out
