"""Atomic writes and small file helpers.

Every file the study writes goes through :func:`atomic_path`: the content is written to a temporary
sibling and renamed into place only when complete, so an interrupted stage never leaves a half file
that a later stage (or a resumed run) would trust.

A killed writer (``kill -9``, a full disk) cannot clean up after itself, so its hidden temporaries
(``.<name>.<pid>.<random>.tmp`` folders and ``.<name>.<pid>.old`` during a directory swap) stay behind.
The next :func:`atomic_path` for the same ``path`` removes those left by processes that no longer run
(and those of the older, pid-less naming once they are an hour old), so they never pile up; temporaries of
a live writer (another process or thread) are left alone.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LEGACY_STALE_S = 3600.0
"""Temporaries without a pid in their name (written before pids were recorded) are stale after this long."""


def _pid_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True          # it exists but belongs to someone else
    return True


def stale_temporaries(path: str | os.PathLike) -> list[Path]:
    """Hidden temporaries of ``path`` left by killed :func:`atomic_path` writers (see the module docstring)."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    own = re.compile(rf"^\.{re.escape(path.name)}\.(?:(\d+)\.[^.]*\.tmp|(\d+)\.old|[^.]*\.tmp|old)$")
    stale = []
    now = time.time()
    for entry in path.parent.iterdir():
        m = own.match(entry.name)
        if m is None:
            continue
        pid = m.group(1) or m.group(2)
        if pid is not None:
            if not _pid_alive(int(pid)):
                stale.append(entry)
            continue
        try:
            age = now - entry.lstat().st_mtime
        except FileNotFoundError:
            continue
        if age > LEGACY_STALE_S:
            stale.append(entry)
    return sorted(stale)


def _remove(entry: Path) -> None:
    if entry.is_dir() and not entry.is_symlink():
        shutil.rmtree(entry, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            entry.unlink()


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, is_dir: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it onto ``path`` only if the block succeeds.

    Works for files and for directories (zarr stores): ``is_dir=True`` replaces a whole directory.
    On error the temporary is removed and any existing ``path`` is left untouched. Temporaries that killed
    writers of ``path`` left behind are removed first (:func:`stale_temporaries`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    for entry in stale_temporaries(path):
        _remove(entry)
    pid = os.getpid()
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.{pid}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if not target.exists():
            raise FileNotFoundError(f"nothing was written to {target} for {path}")
        if is_dir and path.exists():
            old = path.with_name(f".{path.name}.{pid}.old")
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
            os.replace(target, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """The JSON object stored at ``path``."""
    return json.loads(Path(path).read_text())


def _json_default(o: Any) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"cannot write {type(o).__name__} as JSON")
