"""Shared HTTP for the real-data sources: timeouts, retries with backoff, resumable cached downloads.

Plain standard library (``urllib.request``), no extra dependency. Every request gets

* a short *connect* time-out (``connect_timeout_s``) and a separate *read* time-out (``read_timeout_s``,
  seconds of silence allowed while waiting for or reading the answer), so an offline machine fails in
  seconds instead of hanging;
* retries with exponential backoff and jitter (seeded; ``sleep`` injectable so tests are instant) on
  HTTP 429, 5xx, time-outs and dropped connections; a ``Retry-After`` header is honoured, and one asking for
  more than ``max_backoff_s`` (hours, days) is a :class:`DownloadError` at once (never a shorter wait);
* errors (:class:`DownloadError`) that name the URL and what happened.

:func:`download` writes into a cache: bytes go to ``<file>.part`` (resumed with an HTTP ``Range`` request
after a dropped connection), the finished file must have the size the server announced (``Content-Length``,
or the total of a ``206`` answer's ``Content-Range``: a partial answer is resumed, never kept as the whole) and
pass a ``validate`` hook (for rasters :func:`validate_raster` opens it with rasterio and reads pixels), then it
is renamed into place atomically. A file that fails validation is deleted and fetched again, never used; a
cached file is re-validated before use.
"""
from __future__ import annotations

import dataclasses
import email.utils
import functools
import http.client
import os
import random
import socket
import ssl
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path

RETRY_STATUS = (429, 500, 502, 503, 504)
"""HTTP statuses that are retried (rate limit and server-side trouble)."""


class DownloadError(RuntimeError):
    """A request failed for good (after the retries); the message names the URL and the cause."""

    def __init__(self, message: str, url: str = "", status: int | None = None):
        super().__init__(message)
        self.url = url
        self.status = status


class NotFoundError(DownloadError):
    """The server answered 404: the resource does not exist (e.g. a Copernicus tile over the sea)."""


@dataclasses.dataclass(frozen=True)
class HttpConfig:
    """How patient the HTTP client is. Times in seconds.

    ``retries``: extra attempts after the first on 429/5xx/time-outs/dropped or corrupt downloads.
    ``connect_retries``: extra attempts when the host cannot be reached at all (refused, DNS, unreachable,
    connect time-out); kept small so a machine without network fails fast with a clear message.
    Backoff before attempt ``i`` (1-based): ``min(max_backoff_s, backoff_s * 2**(i-1)) * (1 + jitter * u)``,
    ``u ~ U(0, 1)`` from ``random.Random(seed)``; a ``Retry-After`` answer replaces it, and one longer than
    ``max_backoff_s`` ends the retries with a :class:`DownloadError` saying how long the server asked to wait.
    ``sleep`` is called for every wait (tests pass a recorder).
    """

    connect_timeout_s: float = 10.0
    read_timeout_s: float = 120.0
    retries: int = 5
    connect_retries: int = 1
    backoff_s: float = 2.0
    max_backoff_s: float = 120.0
    jitter: float = 0.25
    seed: int = 0
    sleep: Callable[[float], None] = time.sleep
    user_agent: str = "topo2vec/0.1 (research re-implementation of the Topo2vec paper)"
    chunk_bytes: int = 1 << 20

    def __post_init__(self):
        for name in ("connect_timeout_s", "read_timeout_s", "backoff_s", "max_backoff_s", "chunk_bytes"):
            if not getattr(self, name) > 0:
                raise ValueError(f"HttpConfig.{name} must be > 0, got {getattr(self, name)!r}")
        for name in ("retries", "connect_retries", "jitter"):
            if getattr(self, name) < 0:
                raise ValueError(f"HttpConfig.{name} must be >= 0, got {getattr(self, name)!r}")


# ---------------------------------------------------------------- connection with two time-outs
class _ReadTimeout:
    """Connects within ``timeout`` (the connect time-out), then waits up to ``read_timeout`` per read."""

    def __init__(self, *args, read_timeout: float, **kwargs):
        super().__init__(*args, **kwargs)
        self._read_timeout = read_timeout

    sock: socket.socket

    def connect(self):
        super().connect()  # type: ignore[misc]  # a mixin placed before http.client.HTTPConnection
        self.sock.settimeout(self._read_timeout)


class _HTTPConnection(_ReadTimeout, http.client.HTTPConnection):
    pass


class _HTTPSConnection(_ReadTimeout, http.client.HTTPSConnection):
    pass


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, read_timeout: float):
        super().__init__()
        self._read_timeout = read_timeout

    def http_open(self, req):
        return self.do_open(functools.partial(_HTTPConnection, read_timeout=self._read_timeout), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, read_timeout: float):
        super().__init__()
        self._read_timeout = read_timeout

    def https_open(self, req):
        return self.do_open(functools.partial(_HTTPSConnection, read_timeout=self._read_timeout), req,
                            context=self._context)  # type: ignore[attr-defined]


def _open(url: str, config: HttpConfig, *, data: bytes | None = None, headers: dict | None = None):
    """One HTTP request (no retry); returns the open response. Raises urllib/socket errors as they come."""
    handlers: list[urllib.request.BaseHandler] = [_HTTPHandler(config.read_timeout_s),
                                                  _HTTPSHandler(config.read_timeout_s)]
    if urllib.parse.urlsplit(url).hostname in ("127.0.0.1", "localhost", "::1"):
        handlers.append(urllib.request.ProxyHandler({}))  # a proxy cannot reach our own loopback (test fakes)
    opener = urllib.request.build_opener(*handlers)
    req = urllib.request.Request(url, data=data, headers={"User-Agent": config.user_agent, **(headers or {})})
    return opener.open(req, timeout=config.connect_timeout_s)


# ---------------------------------------------------------------- retry loop
class TransientError(Exception):
    """An attempt that failed in a way worth retrying (raise it from a ``check`` hook); ``wait_s`` overrides
    the backoff if set; ``connect`` marks "could not reach the host"."""

    def __init__(self, what: str, wait_s: float | None = None, connect: bool = False, status: int | None = None):
        super().__init__(what)
        self.what = what
        self.wait_s = wait_s
        self.connect = connect
        self.status = status


def _retry_after_s(headers) -> float | None:
    """Seconds asked for by a ``Retry-After`` header (delta-seconds or HTTP date), or None."""
    value = headers.get("Retry-After") if headers is not None else None
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def _classify(url: str, err: BaseException) -> Exception:
    """Turn a urllib/socket error into a :class:`TransientError` (try again) or a final :class:`DownloadError`."""
    if isinstance(err, urllib.error.HTTPError):
        status = err.code
        if status in RETRY_STATUS:
            return TransientError(f"HTTP {status} {err.reason}", wait_s=_retry_after_s(err.headers), status=status)
        body = ""
        try:
            body = err.read(500).decode("utf-8", "replace").strip()
        except Exception:  # noqa: BLE001  (the body is only decoration for the message)
            pass
        cls = NotFoundError if status == 404 else DownloadError
        return cls(f"{url}: HTTP {status} {err.reason}" + (f": {body}" if body else ""), url=url, status=status)
    if isinstance(err, urllib.error.URLError):
        reason = err.reason
        if isinstance(reason, (TimeoutError, socket.timeout)):
            return TransientError(f"no connection within the connect time-out ({reason})", connect=True)
        if isinstance(reason, ConnectionResetError):
            return TransientError(f"connection dropped ({reason})")
        if isinstance(reason, ssl.SSLCertVerificationError):
            return DownloadError(f"{url}: TLS certificate check failed ({reason}); check the system's CA "
                                 f"certificates or HTTPS proxy", url=url)
        return TransientError(f"{reason}", connect=True)
    if isinstance(err, (TimeoutError, socket.timeout)):
        return TransientError("no answer within the read time-out")
    if isinstance(err, (http.client.IncompleteRead, http.client.RemoteDisconnected, ConnectionError)):
        return TransientError(f"connection dropped ({type(err).__name__}: {err})")
    if isinstance(err, (http.client.HTTPException, ssl.SSLError, socket.gaierror)):
        return TransientError(f"{type(err).__name__}: {err}")
    return err if isinstance(err, Exception) else RuntimeError(str(err))  # not the network's fault: as it is


def with_retries(url: str, attempt: Callable[[], object], config: HttpConfig | None = None):
    """Call ``attempt()`` until it returns, retrying the failures :func:`_classify` calls transient.

    ``attempt`` may raise urllib/socket errors (classified here), :class:`TransientError` directly (e.g. a
    download that failed validation) or :class:`DownloadError` (final). After the retries the last cause
    is raised as a :class:`DownloadError` naming ``url``; an unreachable host reads
    ``cannot reach <url>: no network? ...``.
    """
    config = config or HttpConfig()
    rng = random.Random(config.seed)
    n_failed = n_connect_failed = 0
    while True:
        try:
            return attempt()
        except DownloadError:
            raise
        except Exception as err:  # noqa: BLE001  (classified just below)
            last = err
            verdict = err if isinstance(err, TransientError) else _classify(url, err)
            if not isinstance(verdict, TransientError):
                if verdict is err:
                    raise
                raise verdict from err
        if verdict.wait_s is not None and verdict.wait_s > config.max_backoff_s:
            raise DownloadError(
                f"{url}: {verdict.what}; the server asks to retry after {_duration(verdict.wait_s)} (Retry-After), "
                f"longer than HttpConfig.max_backoff_s={config.max_backoff_s:g} s: try again later (or raise "
                f"max_backoff_s)", url=url, status=verdict.status) from last
        n_failed += 1
        n_connect_failed += verdict.connect
        if verdict.connect and n_connect_failed > config.connect_retries:
            raise DownloadError(
                f"cannot reach {url}: no network? ({verdict.what}; tried {n_connect_failed} times). "
                f"Real data (data.source=copernicus, labels.source=osm) needs internet access, or files "
                f"already in the cache; offline, use the synthetic or a local geotiff source.", url=url) from last
        if n_failed > config.retries:
            raise DownloadError(f"{url}: gave up after {n_failed} attempts; last: {verdict.what}", url=url) from last
        wait_s = min(config.max_backoff_s, config.backoff_s * 2 ** (n_failed - 1)) * (1 + config.jitter * rng.random())
        if verdict.wait_s is not None:
            wait_s = verdict.wait_s
        config.sleep(wait_s)


def _duration(seconds: float) -> str:
    """``90 s``, ``2.5 h``, ``3.0 days``."""
    if seconds < 3600:
        return f"{seconds:.0f} s"
    if seconds < 2 * 86400:
        return f"{seconds / 3600:.1f} h"
    return f"{seconds / 86400:.1f} days"


# ---------------------------------------------------------------- public helpers
def check_url(url, what: str = "url") -> str:
    """``url`` if it is an absolute http(s) URL with a host and no whitespace; ValueError naming ``what`` if not."""
    parts = urllib.parse.urlsplit(url) if isinstance(url, str) else None
    if parts is None or parts.scheme not in ("http", "https") or not parts.netloc or any(c.isspace() for c in url):
        raise ValueError(f"{what} must be an http(s) URL like 'https://host/path', got {url!r}")
    return url


def fetch_bytes(url: str, *, data: bytes | None = None, headers: dict | None = None,
                config: HttpConfig | None = None, check: Callable[[bytes], object] | None = None) -> bytes:
    """The whole body of ``url`` (GET, or POST when ``data`` is given), with retries.

    ``check(body)`` may raise :class:`TransientError` (retry, e.g. a server-side time-out reported in a 200
    answer) or :class:`DownloadError` (give up, e.g. malformed JSON).
    """
    config = config or HttpConfig()

    def attempt() -> bytes:
        with _open(url, config, data=data, headers=headers) as resp:
            body = resp.read()
        if check is not None:
            check(body)
        return body

    return with_retries(url, attempt, config)


def download(url: str, path: str | os.PathLike, *, validate: Callable[[Path], None] | None = None,
             config: HttpConfig | None = None) -> Path:
    """Fetch ``url`` into the cache file ``path`` (idempotent) and return ``path``.

    A valid cached ``path`` is returned without a request. Otherwise bytes stream into ``path + ".part"``;
    a dropped connection resumes from the bytes already there (HTTP ``Range``); a server that ignores the
    range restarts the file. The complete file must match the announced length and pass ``validate(part)``
    (which raises on a bad file); then it is renamed onto ``path``. A file failing validation is deleted and
    fetched again (a retry). Raises :class:`NotFoundError` on 404, :class:`DownloadError` otherwise; no
    ``.part`` is left behind after a final failure (an interrupted run keeps it, and the next run resumes).
    """
    config = config or HttpConfig()
    path = Path(path)
    part = path.with_name(path.name + ".part")
    if path.exists():
        if validate is None:
            return path
        try:
            validate(path)
            return path
        except Exception:  # noqa: BLE001  (a corrupt cache entry is simply fetched again)
            path.unlink()
    path.parent.mkdir(parents=True, exist_ok=True)

    def attempt() -> Path:
        start = part.stat().st_size if part.exists() else 0
        headers = {"Range": f"bytes={start}-"} if start else {}
        try:
            resp = _open(url, config, headers=headers)
        except urllib.error.HTTPError as err:
            if err.code == 416:  # our .part is not a prefix of the object any more: start over
                part.unlink(missing_ok=True)
                raise TransientError("HTTP 416 on resume; restarting the download") from err
            raise
        with resp:
            total = None
            if resp.status == 206:  # a part of the object: where it starts must be where our .part ends
                first, total = _content_range(resp.headers.get("Content-Range"))
                if first != start:
                    part.unlink(missing_ok=True)
                    raise TransientError(f"server sent bytes from {first}, not {start}; restarting")
                mode = "ab" if start else "wb"
            else:
                start, mode = 0, "wb"
            expected = total if total is not None else _expected_size(resp, start)
            with open(part, mode) as f:
                while chunk := resp.read(config.chunk_bytes):
                    f.write(chunk)
        size = part.stat().st_size
        if expected is not None and size != expected:
            raise TransientError(f"got {size} of {expected} bytes")  # keep .part: the next attempt resumes
        if validate is not None:
            try:
                validate(part)
            except Exception as err:  # noqa: BLE001
                part.unlink(missing_ok=True)
                raise TransientError(f"downloaded file failed validation ({type(err).__name__}: {err})") from err
        os.replace(part, path)
        return path

    try:
        return with_retries(url, attempt, config)
    except Exception:  # a final failure leaves nothing; an interrupt (Ctrl-C) keeps .part to resume later
        part.unlink(missing_ok=True)
        raise


def _content_range(value: str | None) -> tuple[int | None, int | None]:
    """(first byte, total size) of ``Content-Range: bytes 100-199/200``; None where absent, ``*`` or unparsable."""
    if value is None:
        return None, None
    try:
        span, total = value.split()[1].split("/")
        first = int(span.split("-")[0])
    except (AttributeError, IndexError, ValueError):
        return None, None
    return first, (int(total) if total.isdigit() else None)


def _expected_size(resp, start: int) -> int | None:
    """Total bytes the finished file must have, from Content-Length (+ resume offset), if announced."""
    length = resp.headers.get("Content-Length")
    return start + int(length) if length and length.isdigit() else None


def validate_raster(path: str | os.PathLike) -> None:
    """Raise unless ``path`` opens with rasterio and its first and last pixels (first and last blocks) read.

    Reading the bottom-right pixel touches the end of a tiled GeoTIFF, so a truncated file fails here.
    """
    import rasterio
    from rasterio.windows import Window

    with rasterio.Env(GDAL_DISABLE_READDIR_ON_OPEN="EMPTY_DIR"):
        with rasterio.open(path) as ds:
            if ds.count < 1 or ds.width < 1 or ds.height < 1:
                raise ValueError(f"{path} holds no raster data ({ds.count} bands, {ds.width}x{ds.height})")
            for row, col in ((0, 0), (ds.height - 1, ds.width - 1)):
                ds.read(1, window=Window(col, row, 1, 1))
