"""Evaluation: balanced probe datasets, SVM probes over seeds, paired tests, scale selection, KNN retrieval.

Everything here works on plain arrays and on the shared contracts (docs/architecture.md):
places are ``lon, lat`` arrays (EPSG:4326), labels a DataFrame ``lon, lat, class, source, region``,
samplers are :class:`topo2vec_lib.sampler.PatchSampler` (``random_places``, ``patches``) and
embedders follow :class:`topo2vec_lib.embedders.Embedder` (``embed(sampler, lon, lat, res_m) -> (N, D)``).

Differences from the reference code (reference_code_notes.md, section 4), on purpose:

- negatives are kept at least ``min_neg_distance_m`` from every positive of the class (the reference
  code drew them uniformly, so a few "negatives" were the class itself);
- features are standardised before an RBF SVM whose ``C`` is chosen by cross-validation on the
  training set only (the reference used unscaled features and the default ``C=1``);
- a new train *and* test set is drawn per seed (the reference fixed the test set), test places come
  from the test region only;
- scale selection uses 17 x 17 patches and 10 seeds as the paper says (the reference: 9 x 9, 1 seed).
"""
from __future__ import annotations

import zlib
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm import tqdm

from topo2vec_lib.grid import check_integer, check_seed

EARTH_RADIUS_M = 6_371_008.8  # mean Earth radius (IUGG), metres
PATCH_SIZE = 17               # pixels per side of every probe / scale-selection patch (paper 3.1)
DEFAULT_MIN_NEG_DISTANCE_M = 150.0  # 5 pixels at the 30 m/px probe scale
DEFAULT_C_GRID = (0.1, 1.0, 10.0)


class NotEnoughPlacesError(ValueError):
    """A class has fewer labelled places in a region than a balanced probe needs."""


# ---------------------------------------------------------------------------------------------- places

def _xyz_m(lon, lat) -> np.ndarray:
    """(N, 3) Cartesian coordinates in metres of lon/lat degrees on a sphere of EARTH_RADIUS_M."""
    lon = np.radians(np.asarray(lon, dtype=float))
    lat = np.radians(np.asarray(lat, dtype=float))
    return EARTH_RADIUS_M * np.stack([np.cos(lat) * np.cos(lon), np.cos(lat) * np.sin(lon), np.sin(lat)], axis=-1)


def nearest_distance_m(lon, lat, ref_lon, ref_lat) -> np.ndarray:
    """Great-circle distance in metres from each place ``(lon, lat)`` (N,) to its nearest reference place.

    Returns (N,) float; ``inf`` everywhere when there are no reference places.
    """
    from scipy.spatial import cKDTree

    lon = np.atleast_1d(np.asarray(lon, dtype=float))
    if len(np.atleast_1d(ref_lon)) == 0:
        return np.full(lon.shape, np.inf)
    tree = cKDTree(_xyz_m(ref_lon, ref_lat))
    chord, _ = tree.query(_xyz_m(lon, lat), k=1)
    return 2.0 * EARTH_RADIUS_M * np.arcsin(np.clip(chord / (2.0 * EARTH_RADIUS_M), 0.0, 1.0))


def _sampler_region(sampler) -> str | None:
    return getattr(sampler, "region", None)


def valid_places(sampler, lon, lat, res_m: float, size: int = PATCH_SIZE) -> np.ndarray:
    """(N,) bool: the ``size`` px patch at ``res_m`` m/px around each place lies on terrain without nodata
    (``sampler.valid_places``; scales finer than native are interpolated, see :func:`sample_patches`)."""
    return np.asarray(sampler.valid_places(lon, lat, res_m, size, allow_upsampling=True), bool)


def sample_patches(sampler, lon, lat, res_m: float, size: int = PATCH_SIZE) -> np.ndarray:
    """Raw patches ``(N, size, size)`` in metres at ``res_m`` m/px.

    Scales finer than the terrain's native pixel (the paper's 10 m/px on a 30 m DEM) are bilinear
    interpolation of the native pixels (``allow_upsampling=True``): no new information, as in the paper.
    """
    return sampler.patches(lon, lat, res_m, size, allow_upsampling=True)


def _normalize(patches: np.ndarray) -> np.ndarray:
    from topo2vec_lib.sampler import normalize

    return np.asarray(normalize(patches), dtype=np.float32)


def probe_dataset(labels: pd.DataFrame, cls: str, region: str, n: int, sampler, rng: np.random.Generator, *,
                  res_m: float = 30.0, size: int = PATCH_SIZE,
                  min_neg_distance_m: float = DEFAULT_MIN_NEG_DISTANCE_M, fit_res_m: float | None = None,
                  max_tries: int = 50) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A balanced probe set of ``n`` places in ``region``: ``n/2`` positives of ``cls``, ``n/2`` random negatives.

    Positives are drawn without replacement from the label rows with ``class == cls`` and
    ``region == region`` whose ``size`` x ``size`` patch at ``res_m`` m/px lies on the sampler's terrain.
    Negatives come from ``sampler.random_places`` and are kept only when at least
    ``min_neg_distance_m`` metres (great circle) from *every* labelled place of ``cls`` in the region
    (the reference code had no such exclusion). Returns ``lon, lat`` (n,) float and ``y`` (n,) int8
    (1 = class, 0 = random), shuffled with ``rng``. Raises :class:`NotEnoughPlacesError` when the
    region has fewer than ``n/2`` usable positives. ``fit_res_m``: every place's patch must also fit
    at this (coarser) scale, for embedders that look at several scales around a place.
    """
    if int(n) != n or n < 2 or n % 2:
        raise ValueError(f"n must be an even number of places >= 2 (half positives, half negatives), got {n!r}")
    n = int(n)
    if min_neg_distance_m < 0:
        raise ValueError(f"min_neg_distance_m must be >= 0 metres, got {min_neg_distance_m}")
    missing = {"lon", "lat", "class", "region"} - set(labels.columns)
    if missing:
        raise ValueError(f"labels lack column(s) {sorted(missing)}; expected lon, lat, class, source, region")
    sampler_region = _sampler_region(sampler)
    if sampler_region is not None and sampler_region != region:
        raise ValueError(f"region {region!r} asked for, but the sampler's terrain is region {sampler_region!r}; "
                         "probe places and terrain must come from the same region")
    if cls not in set(labels["class"]):
        raise NotEnoughPlacesError(f"class {cls!r} has no labels at all; classes present: "
                                   f"{sorted(set(labels['class']))}")
    table = labels[(labels["class"] == cls) & (labels["region"] == region)]
    if hasattr(sampler, "bounds_xy"):      # labels meet the terrain here: refuse a lon/lat-swapped table
        from topo2vec_lib.osm import check_not_swapped

        check_not_swapped(table, sampler, where=f"labels of class {cls!r} in region {region!r}")
    all_lon = table["lon"].to_numpy(float)
    all_lat = table["lat"].to_numpy(float)
    scales = sorted({float(res_m), float(res_m if fit_res_m is None else fit_res_m)})
    ok = np.ones(len(table), bool)
    for scale in scales:
        if len(table):
            ok &= valid_places(sampler, all_lon, all_lat, scale, size)
    pos_lon, pos_lat = all_lon[ok], all_lat[ok]
    n_pos = n // 2
    if len(pos_lon) < n_pos:
        raise NotEnoughPlacesError(
            f"class {cls!r} has {len(pos_lon)} usable places in region {region!r} ({len(table)} labelled, "
            f"{len(table) - len(pos_lon)} whose {size} px patch at {'/'.join(f'{v:g}' for v in scales)} m/px "
            "leaves the terrain or touches nodata); "
            f"need {n_pos} positives for a balanced set of n={n}")
    pick = rng.choice(len(pos_lon), size=n_pos, replace=False)

    n_neg = n - n_pos
    neg_lon: list[np.ndarray] = []
    neg_lat: list[np.ndarray] = []
    have = 0
    for _ in range(max_tries):
        # random places valid at the coarsest scale (at least native: the footprint only shrinks below it)
        lon, lat = sampler.random_places(2 * n_neg, rng, max(scales[-1], float(sampler.res_m)), size=size)
        far = nearest_distance_m(lon, lat, all_lon, all_lat) >= min_neg_distance_m
        for scale in scales[:-1]:  # nodata may hide at a finer scale
            far &= valid_places(sampler, lon, lat, scale, size)
        neg_lon.append(np.asarray(lon, float)[far])
        neg_lat.append(np.asarray(lat, float)[far])
        have += int(far.sum())
        if have >= n_neg:
            break
    else:
        raise ValueError(f"found only {have} of {n_neg} random places in region {region!r} at least "
                         f"{min_neg_distance_m} m from every {cls!r} place after {max_tries} draws; "
                         "lower min_neg_distance_m")
    neg_lon_a = np.concatenate(neg_lon)[:n_neg]
    neg_lat_a = np.concatenate(neg_lat)[:n_neg]

    lon = np.concatenate([pos_lon[pick], neg_lon_a])
    lat = np.concatenate([pos_lat[pick], neg_lat_a])
    y = np.concatenate([np.ones(n_pos, np.int8), np.zeros(n_neg, np.int8)])
    order = rng.permutation(n)
    return lon[order], lat[order], y[order]


# ---------------------------------------------------------------------------------------------- SVM probe

def _check_xy(X, y, what: str) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y).astype(int)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"{what}: X must be (N, D) and y (N,), got X {X.shape} and y {y.shape}")
    if not np.isfinite(X).all():
        raise ValueError(f"{what}: X has {int((~np.isfinite(X)).sum())} non-finite values")
    if set(np.unique(y)) != {0, 1}:
        raise ValueError(f"{what}: y must hold both labels 0 and 1, got {sorted(set(np.unique(y)))}")
    return X, y


def svm_probe(X_train, y_train, X_test, y_test, seed: int = 0, *,
              C_grid: Sequence[float] = DEFAULT_C_GRID, cv: int = 3) -> dict:
    """Fit StandardScaler + RBF SVC on ``(X_train (N, D), y_train (N,))``, score it on the test set.

    ``C`` is chosen from ``C_grid`` by ``cv``-fold stratified cross-validation (accuracy) on the
    training set only; ``gamma="scale"``. Returns ``accuracy``, ``f1`` (class 1) and ``auc`` (from the
    SVM decision function) on the test set, in [0, 1], and ``best_params`` (``{"C": ...}``).
    """
    from sklearn.metrics import accuracy_score, f1_score, roc_auc_score
    from sklearn.model_selection import GridSearchCV, StratifiedKFold
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    X_train, y_train = _check_xy(X_train, y_train, "train")
    X_test, y_test = _check_xy(X_test, y_test, "test")
    if X_train.shape[1] != X_test.shape[1]:
        raise ValueError(f"train has {X_train.shape[1]} features, test {X_test.shape[1]}")
    if not C_grid:
        raise ValueError("C_grid must hold at least one positive C")
    pipe = Pipeline([("scale", StandardScaler()), ("svc", SVC(kernel="rbf", gamma="scale"))])
    if len(C_grid) > 1:
        folds = StratifiedKFold(n_splits=cv, shuffle=True, random_state=int(seed))
        model = GridSearchCV(pipe, {"svc__C": [float(c) for c in C_grid]}, cv=folds, scoring="accuracy",
                             n_jobs=1, refit=True)
        model.fit(X_train, y_train)
        best_c = float(model.best_params_["svc__C"])
    else:
        model = pipe.set_params(svc__C=float(C_grid[0])).fit(X_train, y_train)
        best_c = float(C_grid[0])
    pred = model.predict(X_test)
    score = model.decision_function(X_test)
    return {"accuracy": float(accuracy_score(y_test, pred)), "f1": float(f1_score(y_test, pred)),
            "auc": float(roc_auc_score(y_test, score)), "best_params": {"C": best_c}}


def _rng(seed: int, rep: int, cls: str) -> np.random.Generator:
    """The Generator of one (study seed, repetition, class): independent of which other classes run."""
    return np.random.default_rng([check_seed(seed), check_seed(rep, "a seed of seeds"), zlib.crc32(str(cls).encode())])


def _class_names(classes) -> list[str]:
    """``classes`` as a list; a single string is an error (``'peak'`` is not the classes 'p', 'e', 'a', 'k')."""
    if isinstance(classes, (str, bytes)):
        raise ValueError(f"classes={classes!r} is one string, not a list of class names; write [{classes!r}]")
    return list(classes)


def _seed_list(seeds) -> list[int]:
    """A count of seeds (``range(seeds)``) or a list of integer seeds; 1.5 is an error, never truncated."""
    if isinstance(seeds, (list, tuple, np.ndarray)):
        values = [check_seed(s, f"seeds[{i}]") for i, s in enumerate(seeds)]
        if not values:
            raise ValueError("seeds is an empty list; give a count >= 1 or a list of ints")
        return values
    return list(range(check_integer("seeds (a count)", seeds, 1)))


def _res_for(res_m, cls: str) -> float:
    if isinstance(res_m, Mapping):
        if cls not in res_m:
            raise ValueError(f"res_m has no scale for class {cls!r}; it has {sorted(res_m)}")
        return float(res_m[cls])
    return float(res_m)


def coarsest_res_m(embedders, res_m: float) -> float:
    """The coarsest pixel size (m/px) any of ``embedders`` samples around a place when embedding at ``res_m``.

    Embedders that look at several scales expose ``scales_for(res_m) -> [m/px, ...]``; others use ``res_m``.
    """
    return max([float(res_m)] + [float(max(e.scales_for(res_m))) for e in embedders if hasattr(e, "scales_for")])


def run_probe_experiment(embedders: Mapping, samplers: Mapping, labels: pd.DataFrame, classes: Sequence[str],
                         n_train: int, n_test: int, seeds=10, res_m: float | Mapping[str, float] = 30.0, *,
                         seed: int = 0, min_neg_distance_m: float = DEFAULT_MIN_NEG_DISTANCE_M,
                         C_grid: Sequence[float] = DEFAULT_C_GRID, progress: bool = True) -> pd.DataFrame:
    """SVM probes of every embedder on every class over seeds (paper Exp. 1 and Exp. 2).

    ``embedders``: {model name: Embedder}; ``samplers``: {"train": PatchSampler, "test": PatchSampler},
    whose keys are also the label ``region`` names. ``res_m``: probe scale in m/px, one number or
    {class: m/px}. ``seeds``: a count or a list of ints. Per seed and class a new balanced train set
    (``n_train`` places, train region) and test set (``n_test``, test region) is drawn; every model
    sees the same places; each place set is embedded once per model. Places fit on the terrain at the
    probe scale and at every scale an embedder with a ``scales_for(res_m)`` method (multi-scale
    baselines such as geomorphometry) samples.

    Returns a DataFrame with one row per (model, class, seed): ``model, class, seed, res_m, n_train,
    n_test, accuracy, f1, auc, C``.
    """
    if not embedders:
        raise ValueError("embedders is empty; give {model name: Embedder}")
    for key in ("train", "test"):
        if key not in samplers:
            raise ValueError(f"samplers needs keys 'train' and 'test', got {sorted(samplers)}")
    seed_values = _seed_list(seeds)
    rows = []
    jobs = [(s, c) for s in seed_values for c in _class_names(classes)]
    for s, cls in tqdm(jobs, desc="probe seeds x classes", disable=not progress):
        scale = _res_for(res_m, cls)
        fit = coarsest_res_m(embedders.values(), scale)
        rng = _rng(seed, s, cls)
        tr = probe_dataset(labels, cls, "train", n_train, samplers["train"], rng, res_m=scale,
                           min_neg_distance_m=min_neg_distance_m, fit_res_m=fit)
        te = probe_dataset(labels, cls, "test", n_test, samplers["test"], rng, res_m=scale,
                           min_neg_distance_m=min_neg_distance_m, fit_res_m=fit)
        for name, embedder in embedders.items():
            X_tr = embedder.embed(samplers["train"], tr[0], tr[1], res_m=scale)
            X_te = embedder.embed(samplers["test"], te[0], te[1], res_m=scale)
            result = svm_probe(X_tr, tr[2], X_te, te[2], seed=int(s), C_grid=C_grid)
            rows.append({"model": name, "class": cls, "seed": int(s), "res_m": scale, "n_train": n_train,
                         "n_test": n_test, "accuracy": result["accuracy"], "f1": result["f1"],
                         "auc": result["auc"], "C": result["best_params"]["C"]})
    return pd.DataFrame(rows)


def summarise(df: pd.DataFrame, metric: str = "accuracy") -> pd.DataFrame:
    """Mean, sample std (ddof=1) and the per-seed values of ``metric`` per (model, class).

    Returns a DataFrame with columns ``model, class, mean, std, n, values`` (values: list by seed),
    in the models' and classes' order of first appearance.
    """
    if metric not in df.columns:
        raise ValueError(f"metric {metric!r} is not a column; columns: {list(df.columns)}")
    rows = []
    for model in pd.unique(df["model"]):
        for cls in pd.unique(df["class"]):
            part = df[(df["model"] == model) & (df["class"] == cls)].sort_values("seed")
            if part.empty:
                continue
            values = part[metric].to_numpy(float)
            rows.append({"model": model, "class": cls, "mean": float(values.mean()),
                         "std": float(values.std(ddof=1)) if len(values) > 1 else float("nan"),
                         "n": len(values), "values": values.tolist()})
    return pd.DataFrame(rows, columns=["model", "class", "mean", "std", "n", "values"])


def metrics_dict(summary: pd.DataFrame) -> dict:
    """``{model: {class: {mean, std, values}}}`` from :func:`summarise` (for ``dvc metrics show``)."""
    out: dict = {}
    for row in summary.to_dict("records"):
        std = None if np.isnan(row["std"]) else float(row["std"])
        out.setdefault(row["model"], {})[row["class"]] = {"mean": float(row["mean"]), "std": std,
                                                           "values": [float(v) for v in row["values"]]}
    return out


def paired_tests(df: pd.DataFrame, reference: str = "topo2vec-4", metric: str = "accuracy") -> pd.DataFrame:
    """Paired tests across seeds of ``reference`` against every other model, per class.

    Pairs rows by ``seed`` (same places for every model within a seed). Returns columns ``class,
    model, n, mean_diff`` (reference minus model; > 0 means the reference is better), ``t_stat, t_p``
    (scipy.stats.ttest_rel) and ``wilcoxon_stat, wilcoxon_p`` (scipy.stats.wilcoxon, two-sided).
    p is 1.0 when all differences are zero, NaN with fewer than 2 paired seeds.
    """
    from scipy import stats

    if reference not in set(df["model"]):
        raise ValueError(f"reference model {reference!r} is not in the results; models: {list(pd.unique(df['model']))}")
    rows = []
    for cls in pd.unique(df["class"]):
        part = df[df["class"] == cls].pivot_table(index="seed", columns="model", values=metric)
        if reference not in part.columns:
            continue
        for model in part.columns:
            if model == reference:
                continue
            pair = part[[reference, model]].dropna()
            diff = (pair[reference] - pair[model]).to_numpy(float)
            row = {"class": cls, "model": model, "n": len(diff),
                   "mean_diff": float(diff.mean()) if len(diff) else float("nan"),
                   "t_stat": float("nan"), "t_p": float("nan"),
                   "wilcoxon_stat": float("nan"), "wilcoxon_p": float("nan")}
            if len(diff) >= 2:
                if np.allclose(diff, 0.0):
                    row.update(t_stat=0.0, t_p=1.0, wilcoxon_stat=0.0, wilcoxon_p=1.0)
                else:
                    t = stats.ttest_rel(pair[reference], pair[model])
                    w = stats.wilcoxon(diff)
                    row.update(t_stat=float(t.statistic), t_p=float(t.pvalue),
                               wilcoxon_stat=float(w.statistic), wilcoxon_p=float(w.pvalue))
            rows.append(row)
    return pd.DataFrame(rows, columns=["class", "model", "n", "mean_diff", "t_stat", "t_p",
                                       "wilcoxon_stat", "wilcoxon_p"])


# ---------------------------------------------------------------------------------------------- scale selection

def scale_cnn(channels: tuple[int, int] = (8, 16), hidden: int = 32, size: int = PATCH_SIZE):
    """The small scale-selection CNN: 2 conv + 2 FC, like the paper's CNN baseline (section 3.1).

    Input (N, 1, size, size) normalised patches; output (N, 2) logits.
    conv3x3(c0)-ReLU-maxpool2 -> conv3x3(c1)-ReLU-maxpool2 -> FC(hidden)-ReLU -> FC(2).
    """
    from torch import nn

    side = (size // 2) // 2
    return nn.Sequential(
        nn.Conv2d(1, channels[0], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(channels[0], channels[1], 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(channels[1] * side * side, hidden), nn.ReLU(), nn.Linear(hidden, 2))


def train_val_cnn(x_train: np.ndarray, y_train: np.ndarray, x_val: np.ndarray, y_val: np.ndarray, *,
                  epochs: int = 10, lr: float = 1e-3, batch_size: int = 64, seed: int = 0) -> float:
    """Train :func:`scale_cnn` on normalised patches ``(N, 17, 17)`` (or ``(N, 1, 17, 17)``), labels (N,) 0/1.

    Adam, cross-entropy, ``epochs`` passes in shuffled mini-batches; deterministic for a ``seed``
    (the global torch RNG is left untouched). Returns the validation accuracy in [0, 1].
    """
    import torch

    def as_tensor(x):
        x = torch.as_tensor(np.asarray(x, dtype=np.float32))
        return x[:, None] if x.ndim == 3 else x

    xt, xv = as_tensor(x_train), as_tensor(x_val)
    yt, yv = torch.as_tensor(np.asarray(y_train, dtype=np.int64)), torch.as_tensor(np.asarray(y_val, dtype=np.int64))
    if epochs < 1 or lr <= 0 or batch_size < 1:
        raise ValueError(f"need epochs >= 1, lr > 0, batch_size >= 1; got {epochs}, {lr}, {batch_size}")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a net this small trains fastest on one thread (30x faster on a busy 2-core box)
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            net = scale_cnn(size=xt.shape[-1])
        gen = torch.Generator().manual_seed(int(seed))
        opt = torch.optim.Adam(net.parameters(), lr=lr)
        loss_fn = torch.nn.CrossEntropyLoss()
        net.train()
        for _ in range(epochs):
            order = torch.randperm(len(xt), generator=gen)
            for start in range(0, len(xt), batch_size):
                idx = order[start:start + batch_size]
                opt.zero_grad()
                loss_fn(net(xt[idx]), yt[idx]).backward()
                opt.step()
        net.eval()
        with torch.no_grad():
            pred = net(xv).argmax(dim=1)
    finally:
        torch.set_num_threads(threads)
    return float((pred == yv).float().mean())


def scale_selection(sampler_train, labels: pd.DataFrame, classes: Sequence[str], scales_m: Sequence[float], *,
                    n: int = 1000, seeds=10, epochs: int = 10, lr: float = 1e-3, batch_size: int = 64,
                    val_fraction: float = 0.2, region: str = "train", seed: int = 0,
                    min_neg_distance_m: float = DEFAULT_MIN_NEG_DISTANCE_M, progress: bool = True) -> pd.DataFrame:
    """Find each class's labelling scale (paper 3.2, Fig. 4): CNN validation accuracy per scale.

    Per class and seed one balanced set of ``n`` places (valid at the coarsest scale) is split
    ``1 - val_fraction`` / ``val_fraction`` (stratified); for every scale in ``scales_m`` (m/px) the
    same places are cut into 17 x 17 patches at that scale, normalised, and a fresh small CNN
    (:func:`scale_cnn`) is trained and scored on the validation part. Scales finer than the terrain's
    native resolution are upsampled by the sampler (no new information; the paper did the same).

    Returns a DataFrame ``class, scale_m, seed, val_accuracy`` (one row per class x scale x seed).
    """
    from sklearn.model_selection import train_test_split

    scales = sorted(float(s) for s in scales_m)
    if not scales or scales[0] <= 0:
        raise ValueError(f"scales_m must be a non-empty list of positive m/px values, got {list(scales_m)}")
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    seed_values = _seed_list(seeds)
    rows = []
    jobs = [(c, s) for c in _class_names(classes) for s in seed_values]
    for cls, s in tqdm(jobs, desc="scale selection classes x seeds", disable=not progress):
        rng = _rng(seed, s, cls)
        lon, lat, y = probe_dataset(labels, cls, region, n, sampler_train, rng, res_m=scales[-1],
                                    min_neg_distance_m=min_neg_distance_m)
        idx_tr, idx_va = train_test_split(np.arange(n), test_size=val_fraction, stratify=y,
                                          random_state=int(rng.integers(2**31)))
        for scale in scales:
            x = _normalize(sample_patches(sampler_train, lon, lat, scale))
            acc = train_val_cnn(x[idx_tr], y[idx_tr], x[idx_va], y[idx_va], epochs=epochs, lr=lr,
                                batch_size=batch_size, seed=int(s))
            rows.append({"class": cls, "scale_m": scale, "seed": int(s), "val_accuracy": acc})
    return pd.DataFrame(rows, columns=["class", "scale_m", "seed", "val_accuracy"])


def scale_curve(df: pd.DataFrame) -> pd.DataFrame:
    """Mean and sample std (ddof=1) of validation accuracy per (class, scale_m): ``class, scale_m, mean, std, n``."""
    g = df.groupby(["class", "scale_m"], sort=False)["val_accuracy"]
    out = g.agg(mean="mean", std=lambda v: float(np.std(v, ddof=1)) if len(v) > 1 else float("nan"), n="count")
    return out.reset_index().sort_values(["class", "scale_m"], kind="stable").reset_index(drop=True)


def best_scales(df: pd.DataFrame) -> dict[str, float]:
    """{class: scale_m with the highest mean validation accuracy} (ties: the finest such scale)."""
    curve = scale_curve(df)
    best = {}
    for cls in pd.unique(df["class"]):
        part = curve[curve["class"] == cls]
        best[cls] = float(part.loc[part["mean"].idxmax(), "scale_m"])
    return best


# ---------------------------------------------------------------------------------------------- retrieval

def nearest_to_mean(query_embeddings, candidate_embeddings, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices (k,) and Euclidean distances (k,) of the ``k`` candidates nearest the mean query embedding.

    ``query_embeddings`` (Q, D), ``candidate_embeddings`` (M, D); as the paper's Exp. 4 (mean of the
    query places' embeddings, then KNN with sklearn.neighbors.NearestNeighbors).
    """
    from sklearn.neighbors import NearestNeighbors

    q = np.asarray(query_embeddings, dtype=np.float64)
    c = np.asarray(candidate_embeddings, dtype=np.float64)
    if q.ndim != 2 or c.ndim != 2 or q.shape[1] != c.shape[1] or len(q) == 0:
        raise ValueError(f"need query (Q>0, D) and candidates (M, D) with the same D, got {q.shape} and {c.shape}")
    if not 1 <= k <= len(c):
        raise ValueError(f"k must be in 1..{len(c)} (the number of candidates), got {k}")
    nn_ = NearestNeighbors(n_neighbors=int(k)).fit(c)
    dist, idx = nn_.kneighbors(q.mean(axis=0, keepdims=True))
    return idx[0], dist[0]


def precision_at_k(query_embeddings, candidate_embeddings, candidate_labels, query_label, k: int) -> float:
    """Fraction of the ``k`` candidates nearest the mean query embedding whose label equals ``query_label``."""
    labels = np.asarray(candidate_labels)
    if len(labels) != len(candidate_embeddings):
        raise ValueError(f"{len(labels)} candidate labels for {len(candidate_embeddings)} candidate embeddings")
    idx, _ = nearest_to_mean(query_embeddings, candidate_embeddings, k)
    return float(np.mean(labels[idx] == query_label))


# ---------------------------------------------------------------------------------------------- tables

def paper_comparison(summary: pd.DataFrame, experiment: str) -> pd.DataFrame:
    """Our accuracy beside the paper's, per (model, class), in percent.

    ``summary`` from :func:`summarise` (accuracy in [0, 1]). Returns columns ``model, class, ours_mean,
    ours_std, paper_mean, paper_std, diff`` (ours minus paper; NaN where the paper has no cell),
    ``best`` (True for the model with our highest mean in its class) and ``paper_best`` (the same
    over the paper's numbers, among the models the paper reports).
    """
    from topo2vec_lib.paper import paper_value

    rows = []
    for r in summary.to_dict("records"):
        p = paper_value(experiment, r["model"], r["class"])
        rows.append({"model": r["model"], "class": r["class"], "ours_mean": 100 * r["mean"],
                     "ours_std": 100 * r["std"], "paper_mean": np.nan if p is None else p[0],
                     "paper_std": np.nan if p is None else p[1]})
    out = pd.DataFrame(rows, columns=["model", "class", "ours_mean", "ours_std", "paper_mean", "paper_std"])
    out["diff"] = out["ours_mean"] - out["paper_mean"]
    out["best"] = out["ours_mean"] == out.groupby("class")["ours_mean"].transform("max")
    paper_max = out.groupby("class")["paper_mean"].transform("max")
    out["paper_best"] = out["paper_mean"].notna() & (out["paper_mean"] == paper_max)
    return out


def comparison_html(comparison: pd.DataFrame, caption: str = "") -> str:
    """An HTML ``<table>`` fragment: one row per model, one column per class, each cell
    ``ours ± std`` with the paper's ``(paper ± std)`` beneath; our best per class in bold
    (class ``best``), the paper's best marked with ``*``."""
    import html

    classes = list(pd.unique(comparison["class"]))
    models = list(pd.unique(comparison["model"]))
    cell = {(r["model"], r["class"]): r for r in comparison.to_dict("records")}
    head = "".join(f"<th>{html.escape(str(c))}</th>" for c in classes)
    body = []
    for m in models:
        tds = []
        for c in classes:
            r = cell.get((m, c))
            if r is None:
                tds.append("<td></td>")
                continue
            ours = f"{r['ours_mean']:.1f} &plusmn; {r['ours_std']:.1f}"
            paper = ("paper: n/a" if np.isnan(r["paper_mean"]) else
                     f"paper: {r['paper_mean']:.1f} &plusmn; {r['paper_std']:.1f}{'*' if r['paper_best'] else ''}")
            cls_attr = ' class="best"' if r["best"] else ""
            tds.append(f"<td{cls_attr}>{ours}<br><small>{paper}</small></td>")
        body.append(f"<tr><td>{html.escape(str(m))}</td>{''.join(tds)}</tr>")
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    return (f'<table class="comparison">{cap}<thead><tr><th>model</th>{head}</tr></thead>'
            f"<tbody>{''.join(body)}</tbody></table>")
