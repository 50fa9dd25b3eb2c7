"""The paper's published numbers, transcribed so every table can show ours beside theirs.

Source: ``/work/shared/paper/topo2vec.txt`` (Topo2vec: Topography Embedding Using the Fractal Effect).
Values are SVM test accuracy in percent, ``(mean, std)`` over 10 seeds, exactly as printed.
Model names follow ``params.yaml`` (``models:`` section); class names follow ``topo2vec_lib.labels``.
"""
from __future__ import annotations

MODELS = ["id", "cnn", "saumoco", "topo2vec-1", "topo2vec-4", "topo2vec-adv"]

# Table 1: "Experiment 1 results. accuracy ± standard-deviation" (Exp. 1, section 3.2).
# SVM train set 1000, test set 200, both balanced; 10 random seeds.
TABLE1: dict[str, dict[str, tuple[float, float]]] = {
    #               peaks         rivers        cliffs        saddles
    "id":           {"peak": (92.4, 0.5), "river": (75.9, 1.8), "cliff": (74.4, 2.8), "saddle": (87.5, 1.2)},
    "cnn":          {"peak": (92.3, 0.5), "river": (76.4, 0.7), "cliff": (72.2, 1.8), "saddle": (84.1, 1.3)},
    "saumoco":      {"peak": (86.9, 2.3), "river": (81.7, 2.2), "cliff": (66.2, 2.5), "saddle": (67.3, 2.3)},
    "topo2vec-1":   {"peak": (93.5, 0.7), "river": (81.3, 2.2), "cliff": (71.4, 1.7), "saddle": (80.5, 2.3)},
    "topo2vec-4":   {"peak": (93.1, 0.9), "river": (80.9, 1.7), "cliff": (75.8, 2.1), "saddle": (89.0, 1.3)},
    "topo2vec-adv": {"peak": (92.8, 0.3), "river": (82.6, 1.2), "cliff": (78.1, 2.8), "saddle": (88.7, 2.2)},
}

# Table 2: "Experiment 2 results. accuracy ± standard-deviation" (Exp. 2, section 3.3).
# SVM train set 400, test set 100, both balanced; 10 random seeds.
TABLE2: dict[str, dict[str, tuple[float, float]]] = {
    #               aerialway stations                alpine huts                  waterfall                  sinkholes
    "id":           {"aerialway_station": (63.9, 5.5), "alpine_hut": (59.2, 3.6), "waterfall": (69.2, 2.6), "sinkhole": (62.5, 2.4)},
    "cnn":          {"aerialway_station": (75.5, 2.1), "alpine_hut": (73.3, 1.6), "waterfall": (69.7, 2.4), "sinkhole": (55.3, 2.9)},
    "saumoco":      {"aerialway_station": (69.7, 3.6), "alpine_hut": (73.3, 2.8), "waterfall": (55.3, 3.1), "sinkhole": (56.5, 4.3)},
    "topo2vec-1":   {"aerialway_station": (79.4, 1.5), "alpine_hut": (70.9, 2.7), "waterfall": (77.9, 2.2), "sinkhole": (60.1, 2.1)},
    "topo2vec-4":   {"aerialway_station": (82.1, 2.0), "alpine_hut": (75.7, 1.4), "waterfall": (73.3, 1.6), "sinkhole": (63.2, 2.5)},
    "topo2vec-adv": {"aerialway_station": (82.8, 1.8), "alpine_hut": (75.5, 1.3), "waterfall": (74.8, 1.6), "sinkhole": (62.9, 2.4)},
}

# The probe sizes the paper states for each experiment (train, test), both balanced.
SIZES = {"exp1": (1000, 200), "exp2": (400, 100)}

TABLES = {"exp1": TABLE1, "exp2": TABLE2}

# Fig. 4 (scale selection) is a plot without printed numbers; the text says "all classes peak around
# the resolution of 30 meters/pixel" (section 3.2).
FIG4_BEST_RES_M = 30.0


def paper_value(experiment: str, model: str, cls: str) -> tuple[float, float] | None:
    """``(mean, std)`` in percent from the paper's table for ``experiment`` ("exp1" | "exp2"), or None.

    None when the paper has no such cell (a model or class we added); an unknown experiment raises.
    """
    if experiment not in TABLES:
        raise ValueError(f"unknown experiment {experiment!r}; the paper has tables for {sorted(TABLES)}")
    return TABLES[experiment].get(model, {}).get(cls)
