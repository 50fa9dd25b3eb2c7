"""The report is self-contained and renders every section in a browser without console errors."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from browser import image_is_varied, load_page, requires_chromium

from topo2vec_lib.report import Section, build_report, metrics_table


def _fake_outputs(root):
    (root / "plots").mkdir()
    (root / "metrics").mkdir()
    (root / "reports" / "tables").mkdir(parents=True)
    fig, ax = plt.subplots()
    ax.imshow([[0, 1], [1, 0]], cmap="terrain")
    fig.savefig(root / "plots" / "a.png")
    plt.close(fig)
    (root / "metrics" / "m.json").write_text(json.dumps({"peak": {"mean": 0.91, "values": [0.9, 0.92]}}))
    (root / "reports" / "tables" / "exp1.html").write_text(
        "<table id='exp1'><tr><td>peak</td><td>0.91</td></tr></table>")
    return [Section("Figures", figures=["plots/a.png"]), Section("Metrics", metrics=["metrics/m.json"]),
            Section("Table", tables=["reports/tables/exp1.html"]),
            Section("Later", figures=["plots/not_yet.png"], links=[("map", "reports/map.html")])]


def test_report_embeds_images_and_marks_missing(tmp_path):
    out = build_report(_fake_outputs(tmp_path), tmp_path, tmp_path / "reports" / "index.html")
    page = out.read_text()
    assert "data:image/png;base64," in page
    assert "id='exp1'" in page
    assert "not produced yet: plots/not_yet.png, reports/map.html" in page
    assert "peak.mean" in page and "0.91" in page


def test_metrics_table_flattens_nested_json():
    table = metrics_table({"a": {"b": 1.23456, "c": [1, 2, 3]}})
    assert "<td>a.b</td><td>1.235</td>" in table and "<td>a.c</td><td>1, 2, 3</td>" in table


@requires_chromium
def test_report_renders_in_headless_chromium(tmp_path):
    out = build_report(_fake_outputs(tmp_path), tmp_path, tmp_path / "reports" / "index.html")
    page = load_page(out, screenshot=tmp_path / "shot.png")
    assert page.console_errors == []
    for title in ("Figures", "Metrics", "Table", "Later"):
        assert f"<h2>{title}</h2>" in page.dom
    assert page.dom.count("<img") == 1
    assert page.screenshot is not None and image_is_varied(page.screenshot)
