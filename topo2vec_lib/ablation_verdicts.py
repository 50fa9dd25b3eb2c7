"""The answers of the ablation families (issue 15): per family a verdict decided by the signs and the paired tests
in ``metrics/ablations.json`` (written by ``notebooks/ablations.py``, see :mod:`topo2vec_lib.ablations`), never by
hand, and the report's HTML for them. Reads only the metrics dictionary: the report imports it without the models.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping

import numpy as np
import pandas as pd

QUESTIONS = {
    "length": "Training length: are the probe curves still rising where the default (100k images) stops?",
    "scale": "Scale protocol: does the 30 m/px probe of a coarse-trained model lose to its own scale, and does "
             "multi-scale training help?",
    "k": "k at equal compute: does a larger fractal factor k give better embeddings?",
    "window": "Amount of terrain: does a larger training window help?",
    "label_noise": "Label noise like OSM's: does the ranking change when labels are moved and dropped?",
}
"""The question each family answers (the report's "Does the fractal effect help?" section)."""
ALPHA = 0.05


@dataclasses.dataclass(frozen=True)
class Effect:
    """A paired comparison ``a`` minus ``b`` over the Exp 1 classes: the mean difference in accuracy points (pp,
    averaged over classes), the per-class differences (pp) and paired t-test p-values, and how many classes are
    significantly up or down at ``ALPHA``."""

    a: str
    b: str
    mean_pp: float
    class_pp: dict
    class_p: dict
    n_seeds: int

    @property
    def up(self) -> int:
        return sum(1 for c, d in self.class_pp.items() if d > 0 and self.class_p[c] < ALPHA)

    @property
    def down(self) -> int:
        return sum(1 for c, d in self.class_pp.items() if d < 0 and self.class_p[c] < ALPHA)

    def text(self) -> str:
        """``a - b = +1.2 pp (peak +2.0, p 0.01; ...); higher in 1/4 classes, lower in 0/4 (paired t, n seeds)``."""
        cls = "; ".join(f"{c} {d:+.1f}, p {self.class_p[c]:.2g}" for c, d in self.class_pp.items())
        return (f"{self.a} − {self.b} = {self.mean_pp:+.1f} pp ({cls}); significantly higher in {self.up}/"
                f"{len(self.class_pp)} classes, lower in {self.down}/{len(self.class_pp)} (paired t, "
                f"{self.n_seeds} seeds)")


def effect(family: Mapping, kind: str, *, point: str | None = None, model: str | None = None,
           other: str, flip: bool = False) -> Effect | None:
    """The paired tests of one family (``metrics["families"][f]``) as an :class:`Effect`.

    ``kind="model"``: within ``point``, the family's reference model minus ``other`` (a model). ``kind="point"``:
    for ``model``, the family's first point minus ``other`` (a point). ``flip`` reverses the sign (``other`` minus
    the reference/first point). None when the tests have no such rows."""
    rows = [r for r in family.get("paired", []) if r["kind"] == kind and
            (r["point"] == point if kind == "model" else r["model"] == model) and
            (r["model"] == other if kind == "model" else r["point"] == other)]
    if not rows:
        return None
    sign = -1.0 if flip else 1.0
    ref = rows[0]["reference"]
    a, b = (other, ref) if flip else (ref, other)
    if kind == "point":
        a, b = f"{model} @ {a}", f"@ {b}"
    class_pp = {r["class"]: sign * 100 * float(r["mean_diff"]) for r in rows}
    class_p = {r["class"]: float(r["t_p"]) if r["t_p"] is not None else float("nan") for r in rows}
    return Effect(a, b, float(np.mean(list(class_pp.values()))), class_pp, class_p, int(min(r["n"] for r in rows)))


def _points(family: Mapping) -> list[str]:
    """The family's points in axis order."""
    cells = sorted(family["summary"], key=lambda r: r["x"])
    return list(dict.fromkeys(r["point"] for r in cells))


def _models(family: Mapping) -> list[str]:
    return list(dict.fromkeys(r["model"] for r in family["summary"]))


def _mean_acc(family: Mapping, point: str, model: str) -> float:
    v = [r["mean"] for r in family["summary"] if r["point"] == point and r["model"] == model]
    return 100 * float(np.mean(v)) if v else float("nan")


def _ranking(family: Mapping, point: str) -> list[str]:
    return sorted(_models(family), key=lambda m: -_mean_acc(family, point, m))


def _moved(e: Effect | None) -> str:
    if e is None:
        return "not measured"
    if e.up and not e.down:
        return "up"
    if e.down and not e.up:
        return "down"
    return "mixed" if e.up and e.down else "no significant change"


def verdicts(metrics: Mapping) -> list[dict]:
    """One verdict per family in ``metrics`` (``metrics/ablations.json``): ``family``, ``question``, ``answer``
    (a sentence decided by the signs and paired tests, never by hand) and ``evidence`` (the effects behind it)."""
    ref = metrics["settings"]["reference"]
    fams = metrics["families"]
    out = []
    for name, fam in fams.items():
        pts, models = _points(fam), _models(fam)
        evidence: list[str] = []
        if name == "length" or name == "window":
            first, last = pts[0], pts[-1]
            moves = {}
            for m in models:
                e = effect(fam, "point", model=m, other=last, flip=True)
                if e is not None:
                    evidence.append(e.text())
                    moves[m] = _moved(e)
            what = "longer training" if name == "length" else "a larger window"
            rising = [m for m, v in moves.items() if v == "up"]
            answer = (f"From {first} to {last}: {', '.join(f'{m} {v}' for m, v in moves.items())}. "
                      + (f"{what.capitalize()} helps {', '.join(rising)}" if rising else f"{what.capitalize()} "
                         "gives no significant gain to any model")
                      + f"; ranking at {last}: {' > '.join(_ranking(fam, last))}.")
            if name == "length":
                l1: dict[str, dict[int, float]] = {}
                for t in metrics.get("trainings", []):
                    if t["model"] in models and t["terrain"] == "default":
                        l1.setdefault(t["model"], {})[int(t["images"])] = t["test_l1"]
                for m, v in l1.items():
                    evidence.append(f"{m} held-out L1: " + ", ".join(f"{n:,} -> {x:.4f}" for n, x in sorted(v.items())))
        elif name == "scale":
            multi = [m for m in models if m.endswith("multiscale")]
            for m in models:
                evidence += [e.text() for p in pts[1:] if (e := effect(fam, "point", model=m, other=p, flip=True))]
            for m in multi:
                e = effect(fam, "model", point=pts[0], other=m, flip=True)
                if e is not None:
                    evidence.append(e.text())
            e_ref = {p: effect(fam, "point", model=ref, other=p, flip=True) for p in pts[1:]}
            coarse = pts[-1]
            e_coarse = e_ref.get(coarse)
            answer = (f"{ref} probed at {coarse} m/px rather than {pts[0]} m/px: {_moved(e_coarse)} "
                      f"({e_coarse.mean_pp:+.1f} pp)" if e_coarse is not None else f"{ref}: one scale only")
            for m in multi:
                e = effect(fam, "model", point=pts[0], other=m, flip=True)
                if e is not None:
                    answer += f"; {m} against {ref} at {pts[0]} m/px: {_moved(e)} ({e.mean_pp:+.1f} pp)"
            answer += f". Ranking at {pts[0]} m/px: {' > '.join(_ranking(fam, pts[0]))}."
        elif name == "k":
            model = models[0]
            accs = {p: _mean_acc(fam, p, model) for p in pts}
            for p in pts[1:]:
                if (e := effect(fam, "point", model=model, other=p, flip=True)) is not None:
                    evidence.append(e.text())
            best = max(accs, key=lambda p: accs[p])
            vs_first = "" if best == pts[0] else \
                f" ({_moved(effect(fam, 'point', model=model, other=best, flip=True))} against {pts[0]})"
            answer = ("Mean Exp 1 accuracy by k at equal training FLOPs: "
                      + ", ".join(f"{p} {a:.1f} %" for p, a in accs.items()) + f"; the best is {best}{vs_first}.")
        elif name == "label_noise":
            ranks = {p: _ranking(fam, p) for p in pts}
            gaps = []
            for p in pts:
                for m in models:
                    if m != ref and (e := effect(fam, "model", point=p, other=m)) is not None:
                        evidence.append(f"[{p}] " + e.text())
                        gaps.append((p, m, e))
            changed = ranks[pts[0]] != ranks[pts[-1]]
            answer = (f"Ranking without noise: {' > '.join(ranks[pts[0]])}; at {pts[-1]}: {' > '.join(ranks[pts[-1]])}"
                      f" ({'changed' if changed else 'unchanged'}). " + "; ".join(
                          f"{ref} − {m}: {e0.mean_pp:+.1f} pp -> {e1.mean_pp:+.1f} pp" for (p0, m, e0) in gaps
                          if p0 == pts[0] for (p1, m1, e1) in gaps if p1 == pts[-1] and m1 == m) + ".")
        else:
            continue
        out.append({"family": name, "question": QUESTIONS.get(name, name), "answer": answer, "evidence": evidence})
    return out


def verdict_html(metrics: Mapping) -> str:
    """The report's "Does the fractal effect help?" text: how the ablation was run (size, seeds, images scale,
    wall time, commit), then per family the question, the verdict and its evidence (paired effects)."""
    import html

    s = metrics["settings"]
    wall = metrics.get("wall_s", {}).get("total")
    head = (f"Ablation run <code>{html.escape(str(metrics.get('commit') or '?'))[:10]}</code>: size "
            f"{html.escape(str(s['size']))}, {s['seeds']} probe seeds x {s['train_seeds']} training seed(s), "
            f"training lengths x {s['images_scale']:g}, probes at {s['res_m']:g} m/px unless the family varies it"
            + (f", {wall / 60:.0f} min on {metrics.get('device', '?')}" if wall else "")
            + f". Reference model: {html.escape(str(s['reference']))}. Effects are accuracy points (pp) averaged "
            "over the Exp 1 classes; p: paired t-test over seeds per class (Wilcoxon in the tables); "
            f"significant: p &lt; {ALPHA}.")
    items = []
    for v in verdicts(metrics):
        ev = "".join(f"<li>{html.escape(e)}</li>" for e in v["evidence"])
        items.append(f"<li><b>{html.escape(v['question'])}</b> {html.escape(v['answer'])}"
                     f"<details><summary>evidence</summary><ul>{ev}</ul></details></li>")
    return f"{head}</p><ol>{''.join(items)}</ol>{summary_html(metrics)}<p>"


def summary_html(metrics: Mapping) -> str:
    """Every family's cells as one HTML table: rows (family, point, model), columns the classes, cells the mean
    accuracy ± the 95 % CI half width over seeds (%), the paper's Table 1 value in brackets where it has one."""
    cells = pd.DataFrame([r for f in metrics["families"].values() for r in f["summary"]])
    if cells.empty:
        return ""

    def cell(r) -> str:
        ci = f" ± {100 * r['ci95']:.1f}" if r["ci95"] is not None and np.isfinite(r["ci95"]) else ""
        paper_ = f" ({100 * r['paper']:.1f})" if r["paper"] is not None and np.isfinite(r["paper"]) else ""
        return f"{100 * r['mean']:.1f}{ci}{paper_}"

    table = cells.assign(cell=cells.apply(cell, axis=1)).pivot_table(
        index=["family", "point", "model"], columns="class", values="cell", aggfunc="first", sort=False)
    return table.to_html(escape=True)
