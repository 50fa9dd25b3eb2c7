"""The study report: one self-contained HTML page (images embedded) built from the pipeline's outputs.

Every section is optional: a stage that has not run yet shows as "not produced yet" instead of failing, so
the report can be built at any point of the pipeline. Nothing here computes results; it only lays out
metrics JSON, plot PNGs and table fragments that the stages wrote.
"""
from __future__ import annotations

import base64
import html
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from .storage import atomic_path


@dataclass
class Section:
    """One report section: a title, prose, figures (PNG paths), HTML table fragments, metrics JSON and links."""

    title: str
    text: str = ""
    figures: list[str] = field(default_factory=list)
    tables: list[str] = field(default_factory=list)
    metrics: list[str] = field(default_factory=list)
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, path relative to the repo root)


def image_tag(path: Path, alt: str) -> str:
    """An <img> with the PNG embedded as base64, so the page opens from disk anywhere."""
    data = base64.b64encode(Path(path).read_bytes()).decode("ascii")
    return (f'<figure><img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'
            f'<figcaption>{html.escape(alt)}</figcaption></figure>')


def metrics_table(obj, max_rows: int = 60) -> str:
    """Flatten a (nested) metrics JSON into a two-column key/value HTML table."""
    rows: list[tuple[str, str]] = []

    def walk(prefix, value):
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        elif isinstance(value, list) and value and not isinstance(value[0], (dict, list)):
            shown = ", ".join(f"{v:.4g}" if isinstance(v, float) else str(v) for v in value[:12])
            rows.append((prefix, shown + (" ..." if len(value) > 12 else "")))
        elif not isinstance(value, list):
            rows.append((prefix, f"{value:.4g}" if isinstance(value, float) else str(value)))

    walk("", obj)
    body = "".join(f"<tr><td>{html.escape(k)}</td><td>{html.escape(v)}</td></tr>" for k, v in rows[:max_rows])
    more = f"<tr><td colspan=2>... {len(rows) - max_rows} more</td></tr>" if len(rows) > max_rows else ""
    return f'<table class="metrics"><tbody>{body}{more}</tbody></table>'


def render_section(section: Section, root: Path, out_dir: Path) -> str:
    """One report section as HTML: title, text, figures (inlined PNG), tables, metrics and links."""
    parts = [f'<section><h2>{html.escape(section.title)}</h2>']
    if section.text:
        parts.append(f"<p>{section.text}</p>")
    missing = []
    for rel in section.figures:
        p = root / rel
        parts.append(image_tag(p, rel)) if p.exists() else missing.append(rel)
    for rel in section.tables:
        p = root / rel
        parts.append(f'<div class="table">{p.read_text()}</div>') if p.exists() else missing.append(rel)
    for rel in section.metrics:
        p = root / rel
        if p.exists():
            parts.append(f"<h3>{html.escape(rel)}</h3>" + metrics_table(json.loads(p.read_text())))
        else:
            missing.append(rel)
    for label, rel in section.links:
        p = root / rel
        if p.exists():
            href = os.path.relpath(p, out_dir)
            parts.append(f'<p><a href="{html.escape(href)}">{html.escape(label)}</a></p>')
        else:
            missing.append(rel)
    if missing:
        parts.append('<p class="missing">not produced yet: ' + ", ".join(html.escape(m) for m in missing) + "</p>")
    parts.append("</section>")
    return "\n".join(parts)


STYLE = """body{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;color:#222}
img{max-width:100%}figure{margin:1em 0}figcaption{font-size:.8em;color:#666}
table{border-collapse:collapse;font-size:.85em;margin:.5em 0}
td,th{border:1px solid #ccc;padding:2px 6px;text-align:right}
td:first-child,th:first-child{text-align:left}.missing{color:#a33}.best{font-weight:bold}"""


def build_report(sections: list[Section], root: str | os.PathLike, out_path: str | os.PathLike,
                 title: str = "topo2vec: reproduction report", intro: str = "") -> Path:
    """Write the report HTML atomically to ``out_path``; paths in sections are relative to ``root``."""
    root, out_path = Path(root), Path(out_path)
    body = "\n".join(render_section(s, root, out_path.parent) for s in sections)
    page = (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body><h1>{html.escape(title)}</h1>{intro}{body}</body></html>")
    with atomic_path(out_path) as tmp:
        tmp.write_text(page)
    return out_path
