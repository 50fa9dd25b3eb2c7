"""Headless Chromium for tests: load a local HTML file with no network, return DOM, screenshot and console errors."""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
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
    with tempfile.TemporaryDirectory() as profile:
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
