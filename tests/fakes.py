"""In-process HTTP fakes for the downloader tests: a threaded ``http.server`` on 127.0.0.1.

:class:`FakeServer` serves static files (with HTTP ``Range``), dynamic handlers (e.g. a fake Overpass API)
and scripted faults (429, 5xx, a slow answer, a connection cut mid-body) that are consumed in order before
the normal answer. It logs every request so tests can count them. Nothing here touches the network.
"""
from __future__ import annotations

import collections
import dataclasses
import re
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@dataclasses.dataclass
class Reply:
    """One answer. ``cut_after``: announce the full Content-Length, send only that many bytes, then close.
    ``delay_s``: wait before answering (to trip the client's read time-out)."""

    status: int = 200
    body: bytes = b""
    headers: dict = dataclasses.field(default_factory=dict)
    delay_s: float = 0.0
    cut_after: int | None = None


@dataclasses.dataclass
class Request:
    method: str
    path: str
    headers: dict
    body: bytes

    @property
    def form(self) -> dict:
        """The urlencoded POST body as ``{key: value}``."""
        return {k: v[0] for k, v in urllib.parse.parse_qs(self.body.decode()).items()}


class FakeServer:
    """``with FakeServer() as srv:`` -> ``srv.url`` is ``http://127.0.0.1:<port>``."""

    def __init__(self):
        self.files: dict[str, bytes] = {}
        self.handlers: dict[str, Callable[[Request], Reply]] = {}
        self.scripts: dict[str, collections.deque] = collections.defaultdict(collections.deque)
        self.log: list[Request] = []
        self._lock = threading.Lock()
        self._httpd = None

    # -- configuration
    def add_file(self, path: str, data: bytes) -> None:
        self.files[path] = data

    def add_handler(self, path: str, handler: Callable[[Request], Reply]) -> None:
        self.handlers[path] = handler

    def script(self, path: str, *replies: Reply) -> None:
        """Answer the next requests to ``path`` with ``replies`` (in order), then normally."""
        self.scripts[path].extend(replies)

    def count(self, path: str | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.log if path is None or r.path == path)

    # -- lifecycle
    def __enter__(self) -> FakeServer:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):  # keep test output clean
                pass

            def do_GET(self):
                self._serve()

            def do_POST(self):
                self._serve()

            def _serve(self):
                length = int(self.headers.get("Content-Length") or 0)
                path = urllib.parse.urlsplit(self.path).path
                req = Request(self.command, path, dict(self.headers), self.rfile.read(length))
                with server._lock:
                    server.log.append(req)
                    scripted = server.scripts[path].popleft() if server.scripts[path] else None
                reply = scripted or server._answer(req)
                try:
                    self._send(reply)
                except (TimeoutError, BrokenPipeError, ConnectionResetError):
                    pass  # the client gave up (read time-out): nothing to do

            def _send(self, reply: Reply):
                if reply.delay_s:
                    time.sleep(reply.delay_s)
                self.send_response(reply.status)
                for k, v in reply.headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", str(len(reply.body)))
                self.send_header("Connection", "close")
                self.end_headers()
                body = reply.body if reply.cut_after is None else reply.body[:reply.cut_after]
                self.wfile.write(body)
                self.wfile.flush()
                if reply.cut_after is not None:
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._httpd.daemon_threads = True
        threading.Thread(target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
        return self

    def __exit__(self, *exc):
        self._httpd.shutdown()
        self._httpd.server_close()

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    # -- normal answers
    def _answer(self, req: Request) -> Reply:
        if req.path in self.handlers:
            return self.handlers[req.path](req)
        if req.path in self.files:
            return range_reply(self.files[req.path], req.headers.get("Range"))
        return Reply(404, b"<Error><Code>NoSuchKey</Code></Error>")


def range_reply(data: bytes, range_header: str | None) -> Reply:
    """200 with the whole file, or 206 with ``bytes=N-`` / ``bytes=N-M`` as S3 answers it (416 if past the end)."""
    m = re.fullmatch(r"bytes=(\d+)-(\d*)", range_header or "")
    if not m:
        return Reply(200, data)
    first = int(m.group(1))
    last = int(m.group(2)) if m.group(2) else len(data) - 1
    if first >= len(data):
        return Reply(416, b"", {"Content-Range": f"bytes */{len(data)}"})
    return Reply(206, data[first:last + 1], {"Content-Range": f"bytes {first}-{last}/{len(data)}"})


def tile_list_body(names) -> bytes:
    """A Copernicus ``tileList.txt``: one tile name per line, as the bucket publishes it."""
    return "".join(f"{n}\n" for n in names).encode()


def closed_port_url() -> str:
    """``http://127.0.0.1:<port>`` of a port nobody listens on (connections are refused at once)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


class SleepRecorder:
    """Stands in for ``time.sleep`` in :class:`topo2vec_lib.download.HttpConfig`: records, never waits."""

    def __init__(self):
        self.calls: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.calls.append(float(seconds))
