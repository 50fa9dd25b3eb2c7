"""Value checks shared by the params.yaml schema, the model configurations and library entry points.

A check is ``check(key, value) -> value``: it returns the value (converted where that is lossless: YAML ``30``
becomes ``30.0`` for a float) or raises ValueError ``"<key>=<value>: expected ..."`` naming what would be
valid. Nothing is clipped or truncated: ``1.5`` is not an integer, ``"30"`` is not a number, ``true`` is
neither. Factories build the checks (``integer(0)``, ``number(0, strict=False)``, ``choice("a", "b")``, ...).
This module imports nothing of the package (it is one of the low modules, like ``grid`` and ``params``).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

Check = Callable[[str, Any], Any]


def is_number(v) -> bool:
    """A finite int or float (booleans are not numbers here)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def integer(minimum: int = 1, maximum: int | None = None) -> Check:
    """Check: an integer >= ``minimum`` (and <= ``maximum``); booleans and ``1.5`` refused."""
    def check(key: str, v: Any) -> int:
        if isinstance(v, bool) or not isinstance(v, int) or v < minimum or (maximum is not None and v > maximum):
            upto = "" if maximum is None else f" and <= {maximum}"
            raise ValueError(f"{key}={v!r}: expected an integer >= {minimum}{upto}")
        return int(v)
    return check


def number(minimum: float = 0.0, strict: bool = True, below: float | None = None,
           maximum: float | None = None) -> Check:
    """Check: a finite number above ``minimum`` (``strict``) or at least it, below ``below`` and at most
    ``maximum``; returned as float."""
    def check(key: str, v: Any) -> float:
        ok = is_number(v) and (v > minimum if strict else v >= minimum) and (below is None or v < below) \
            and (maximum is None or v <= maximum)
        if not ok:
            rng = f"{'>' if strict else '>='} {minimum:g}" + ("" if below is None else f" and < {below:g}") \
                + ("" if maximum is None else f" and <= {maximum:g}")
            raise ValueError(f"{key}={v!r}: expected a finite number {rng}")
        return float(v)
    return check


def choice(*options: str) -> Check:
    """Check: one of ``options``."""
    def check(key: str, v: Any) -> str:
        if not isinstance(v, str) or v not in options:
            raise ValueError(f"{key}={v!r}: expected one of {list(options)}")
        return str(v)
    return check


def boolean(key: str, v: Any) -> bool:
    """Check: true or false (not 0/1 or strings)."""
    if not isinstance(v, bool):
        raise ValueError(f"{key}={v!r}: expected true or false")
    return v


def text(nonempty: bool = False) -> Check:
    """Check: a string (``nonempty``: with at least one non-blank character)."""
    def check(key: str, v: Any) -> str:
        if not isinstance(v, str) or (nonempty and not v.strip()):
            raise ValueError(f"{key}={v!r}: expected a {'non-empty ' if nonempty else ''}string")
        return v
    return check


def optional_text(key: str, v: Any) -> str | None:
    """Check: a string or None."""
    if v is not None and not isinstance(v, str):
        raise ValueError(f"{key}={v!r}: expected a string or null")
    return v


def optional(inner: Check) -> Check:
    """Check: None (null) or what ``inner`` accepts."""
    def check(key: str, v: Any) -> Any:
        if v is None:
            return None
        try:
            return inner(key, v)
        except ValueError as err:
            raise ValueError(f"{err} (or null)") from None
    return check


def _as_list(key: str, v: Any, what: str) -> list:
    if isinstance(v, (str, bytes, Mapping)) or not isinstance(v, (list, tuple)):
        raise ValueError(f"{key}={v!r}: expected a list of {what}, not a single {type(v).__name__}")
    return list(v)


def list_of(inner: Check, what: str, *, min_len: int = 1, max_len: int | None = None,
            distinct: bool = False) -> Check:
    """Check: a list (a YAML sequence) of ``min_len``..``max_len`` items each accepted by ``inner``; a single
    string is refused (``classes: peak`` is not the list ``[p, e, a, k]``)."""
    def check(key: str, v: Any) -> list:
        items = _as_list(key, v, what)
        if len(items) < min_len or (max_len is not None and len(items) > max_len):
            n = f"{min_len}" if max_len == min_len else f"{min_len}..{max_len if max_len is not None else ''}"
            raise ValueError(f"{key}={v!r}: expected a list of {n} {what}, got {len(items)}")
        out = [inner(f"{key}[{i}]", item) for i, item in enumerate(items)]
        if distinct and len({repr(o) for o in out}) != len(out):
            raise ValueError(f"{key}={v!r}: expected distinct {what} (an item repeats)")
        return out
    return check


def pixel_sizes(single: bool = False) -> Check:
    """A pixel size in m/px or a list of them (``single``: exactly one), as a list of floats."""
    def check(key: str, v: Any) -> list[float]:
        values = [v] if is_number(v) else v
        if isinstance(values, (str, bytes, Mapping)) or not hasattr(values, "__iter__"):
            values = [values]
        values = list(values)
        if not values or not all(is_number(r) and r > 0 for r in values) or (single and len(values) != 1):
            what = "one positive pixel size in metres (a number or a one-element list)" if single else \
                "a positive pixel size in metres or a non-empty list of them (m/px)"
            raise ValueError(f"{key}={v!r}: expected {what}")
        return [float(r) for r in values]
    return check


def lonlat(key: str, v: Any) -> list[float]:
    """Check: ``[lon, lat]`` degrees, lon in -180..180 (never wrapped), lat in -90..90."""
    items = _as_list(key, v, "two numbers [lon, lat]")
    if len(items) != 2 or not all(is_number(x) for x in items) or not (-180 <= items[0] <= 180) \
            or not (-90 <= items[1] <= 90):
        raise ValueError(f"{key}={v!r}: expected [lon, lat] in degrees with lon in -180..180 and lat in -90..90")
    return [float(x) for x in items]


def lonlat_box(key: str, v: Any) -> list[float]:
    """Check: ``[lon_min, lat_min, lon_max, lat_max]`` degrees (lon/lat order, min < max)."""
    items = _as_list(key, v, "four numbers [lon_min, lat_min, lon_max, lat_max]")
    ok = len(items) == 4 and all(is_number(x) for x in items)
    if not ok or not (-180 <= items[0] < items[2] <= 180 and -90 <= items[1] < items[3] <= 90):
        raise ValueError(f"{key}={v!r}: expected [lon_min, lat_min, lon_max, lat_max] in degrees with "
                         f"-180 <= lon_min < lon_max <= 180 and -90 <= lat_min < lat_max <= 90")
    return [float(x) for x in items]


def mapping(values: Check | None = None, keys: Mapping[str, Check] | None = None, *,
            required: bool = False) -> Check:
    """Check: a mapping. ``keys``: the known keys and their checks (others are errors; ``required``: all must be
    given); ``values``: a check for every value of a free-form mapping."""
    def check(key: str, v: Any) -> dict:
        if not isinstance(v, Mapping):
            raise ValueError(f"{key}={v!r}: expected a mapping of keys to values")
        out = dict(v)
        if keys is not None:
            unknown = sorted(map(str, set(out) - set(keys)))
            if unknown:
                raise ValueError(f"{key}: unknown key(s) {unknown}; valid: {sorted(keys)}")
            missing = sorted(set(keys) - set(out))
            if required and missing:
                raise ValueError(f"{key}: lacks key(s) {missing}")
            out = {k: keys[k](f"{key}.{k}", x) for k, x in out.items()}
        if values is not None:
            out = {k: values(f"{key}.{k}", x) for k, x in out.items()}
        return out
    return check


def check_all(checks: Mapping[str, Check], values: Mapping[str, Any], where: str = "") -> dict:
    """Run ``checks`` on the keys of ``values`` they name; the checked values (others unchanged). ValueError
    prefixed with ``where``."""
    out = dict(values)
    for key, check in checks.items():
        if key in out:
            try:
                out[key] = check(key, out[key])
            except ValueError as err:
                raise ValueError(f"{where}{err}") from None
    return out
