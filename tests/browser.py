"""Headless Chromium for tests: load a local HTML file with no network (DOM, screenshot, console errors), or drive a
page like a user through the DevTools protocol (:func:`chromium_page`: JupyterLab tests)."""
from __future__ import annotations

import contextlib
import re
import shutil
import subprocess
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
requires_chromium = pytest.mark.skipif(CHROMIUM is None, reason="headless chromium is not installed "
                                       "(apt-get install chromium; .ci/run does this)")

FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic",
         "--disable-extensions", "--allow-file-access-from-files",
         # no network: every host resolves nowhere, so a page that needs the internet shows it
         "--host-resolver-rules=MAP * ~NOTFOUND", "--proxy-server=127.0.0.1:9"]


@dataclass
class PageResult:
    dom: str
    console_errors: list[str]
    screenshot: Path | None


def load_page(html_path: Path, screenshot: Path | None = None, size=(1200, 900), budget_ms: int = 5000) -> PageResult:
    """Open ``html_path`` in headless Chromium; give scripts ``budget_ms`` of virtual time to run."""
    html_path = Path(html_path).resolve()
    # chromium's helper processes can still write to the profile while it is removed: ignore that race
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        base = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                f"--virtual-time-budget={budget_ms}", "--enable-logging=stderr", "--v=0"]
        dom = subprocess.run(base + ["--dump-dom", html_path.as_uri()], capture_output=True, text=True, timeout=120)
        if screenshot is not None:
            subprocess.run(base + [f"--screenshot={Path(screenshot).resolve()}", html_path.as_uri()],
                           capture_output=True, text=True, timeout=120)
    # headless chromium logs every console message (log, warn, error, uncaught exception) as ":CONSOLE:";
    # our pages should print nothing, so all of them count
    errors = [line for line in dom.stderr.splitlines() if re.search(r":CONSOLE[:(]\d+", line)]
    shot = Path(screenshot) if screenshot is not None and Path(screenshot).exists() else None
    return PageResult(dom=dom.stdout, console_errors=errors, screenshot=shot)


def external_resources(html_text: str) -> list[str]:
    """URLs a page would fetch from the network (scripts, styles, images); an offline page has none."""
    return re.findall(r"""<(?:script|link|img)[^>]+(?:src|href)=["'](https?://[^"']+)""", html_text)


def image_is_varied(png: Path, min_unique_colours: int = 20) -> bool:
    """True when a screenshot is not blank (enough distinct colours)."""
    import matplotlib.image as mpimg
    import numpy as np

    img = mpimg.imread(png)[..., :3]
    return len(np.unique((img.reshape(-1, 3) * 255).astype(np.uint8), axis=0)) >= min_unique_colours


# ------------------------------------------------------------------------------------------------ driving a page
class Cdp:
    """A minimal Chrome DevTools Protocol client over one page (websocket-client, a jupyter_server dependency):
    run JavaScript, wait for a condition, click and type like a user (real input events, not synthetic DOM ones)."""

    def __init__(self, ws_url: str):
        import websocket

        self.ws = websocket.create_connection(ws_url, timeout=120, suppress_origin=True)
        self._id = 0

    def call(self, method: str, **params):
        import json

        self._id += 1
        self.ws.send(json.dumps({"id": self._id, "method": method, "params": params}))
        while True:
            msg = json.loads(self.ws.recv())
            if msg.get("id") == self._id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})

    def eval(self, expression: str):
        res = self.call("Runtime.evaluate", expression=expression, returnByValue=True, awaitPromise=True)
        if "exceptionDetails" in res:
            raise RuntimeError(f"javascript error in {expression[:80]!r}: {res['exceptionDetails']}")
        return res.get("result", {}).get("value")

    def wait(self, expression: str, timeout: float = 60.0, what: str = ""):
        """The first truthy value of ``expression`` within ``timeout`` seconds; TimeoutError naming ``what``."""
        import time

        end = time.monotonic() + timeout
        while True:
            value = self.eval(expression)
            if value:
                return value
            if time.monotonic() > end:
                page = self.eval("document.title + ' | ' + (document.body ? document.body.innerText : '')") or ""
                raise TimeoutError(f"waited {timeout:g} s for {what or expression}; the page: {page[:1500]!r}")
            time.sleep(0.25)

    def click(self, selector_js: str, count: int = 1) -> None:
        """Press and release the mouse ``count`` times (2: a double-click) on the centre of the element that the
        JavaScript expression ``selector_js`` returns."""
        rect = self.eval(f"(() => {{ const e = {selector_js}; if (!e) return null;"
                         f" e.scrollIntoView({{block: 'center'}}); const r = e.getBoundingClientRect();"
                         f" return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        if rect is None:
            raise LookupError(f"no element for {selector_js}")
        x, y = rect
        self.call("Input.dispatchMouseEvent", type="mouseMoved", x=x, y=y)
        for n in range(1, count + 1):
            for kind in ("mousePressed", "mouseReleased"):
                self.call("Input.dispatchMouseEvent", type=kind, x=x, y=y, button="left", clickCount=n)

    def key(self, key: str, code: str, key_code: int, modifiers: int = 0) -> None:
        """A key press (``modifiers``: 1 Alt, 2 Ctrl, 4 Meta, 8 Shift)."""
        for kind in ("rawKeyDown", "keyUp"):
            self.call("Input.dispatchKeyEvent", type=kind, key=key, code=code, windowsVirtualKeyCode=key_code,
                      nativeVirtualKeyCode=key_code, modifiers=modifiers)

    def close(self) -> None:
        self.ws.close()


@contextlib.contextmanager
def chromium_page(size=(1400, 1000), offline: bool = True) -> Iterator[Cdp]:
    """Headless Chromium with one page under remote control (:class:`Cdp`); ``offline``: no network but the
    loopback (127.0.0.1, where a test's own server listens)."""
    import json
    import time
    import urllib.request

    flags = [f for f in FLAGS if not f.startswith(("--host-resolver-rules", "--proxy-server"))]
    if offline:                          # every host resolves nowhere and goes through a dead proxy, but loopback
        flags += ["--host-resolver-rules=MAP * ~NOTFOUND, EXCLUDE 127.0.0.1", "--proxy-server=127.0.0.1:9",
                  "--proxy-bypass-list=127.0.0.1"]
    # chromium's helper processes can still write to the profile while it is removed: ignore that race
    with tempfile.TemporaryDirectory(ignore_cleanup_errors=True) as profile:
        proc = subprocess.Popen([CHROMIUM, *flags, f"--user-data-dir={profile}", f"--window-size={size[0]},{size[1]}",
                                 "--remote-debugging-port=0", "--remote-allow-origins=*", "about:blank"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            port = None
            end = time.monotonic() + 60
            assert proc.stderr is not None
            while port is None and time.monotonic() < end:
                line = proc.stderr.readline()
                m = re.search(r"DevTools listening on ws://[^:]+:(\d+)/", line)
                if m:
                    port = int(m.group(1))
                elif not line and proc.poll() is not None:
                    raise RuntimeError(f"chromium exited with {proc.returncode}")
            if port is None:
                raise RuntimeError("chromium did not report its DevTools port")
            threading.Thread(target=lambda: [None for _ in proc.stderr], daemon=True).start()  # drain its log
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/list", timeout=30) as r:
                pages = [t for t in json.load(r) if t.get("type") == "page"]
            cdp = Cdp(pages[0]["webSocketDebuggerUrl"])
            cdp.call("Page.enable")
            cdp.call("Runtime.enable")
            try:
                yield cdp
            finally:
                cdp.close()
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
