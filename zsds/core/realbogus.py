"""Real-bogus score (``rb``) of difference-image candidates: features, model, prediction, training.

The classifier is a random forest (scikit-learn, used only for training) stored as plain
JSON arrays of its trees (``children_left``, ``children_right``, ``feature``, ``threshold``,
``p_real`` per node), so loading it executes no code (no pickle) and prediction is numpy
alone: each tree is walked level by level for all candidates at once, and ``rb`` is the
mean over the trees of the leaf's fraction of real training candidates.

Features (:data:`FEATURES`) are columns of the candidate table of
:func:`zsds.core.candidates.measure_candidates` plus ratios that make them independent of
the seeing and depth: the ``fwhm``-based ones are divided by the FWHM of P_D (``seeratio``
already is), ``magnr - magpsf`` and ``distnr`` (pixels) describe the nearest reference
source. Missing values (no reference source within 30") become :data:`MISSING`.

``zsds rb train`` builds the shipped model ``zsds/data/rb_model.json`` from simulated
candidates (:mod:`zsds.sim.rbtrain`) with a fixed seed; :data:`MODEL_VERSION` names it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from importlib import resources
from pathlib import Path

import numpy as np

__all__ = ["FEATURES", "MISSING", "MODEL_VERSION", "DEFAULT_MODEL", "feature_matrix",
           "train_model", "save_model", "load_model", "predict", "roc_auc", "fpr_at_tpr"]

#: Columns used by the classifier, in order.
FEATURES = ("scorr", "chipsf", "magdiff", "seeratio", "elong", "aimagerat", "bimagerat", "nneg",
            "nbad", "sumrat", "classtar", "dsnrms", "ssnrms", "dsdiff", "sigmapsf", "magfromlim",
            "distnr", "nr_dmag", "sky_rel", "isdiffpos_num")
#: Value of missing features.
MISSING = -999.0
#: Version string of the shipped model (``rbversion`` of the alerts).
MODEL_VERSION = "zsds_rf_v1"
#: File name of the shipped model in ``zsds/data``.
DEFAULT_MODEL = "rb_model.json"


def _col(t, name, n):
    return np.asarray(t[name], float) if name in t.colnames else np.full(n, np.nan)


def feature_matrix(cands) -> np.ndarray:
    """(n, len(FEATURES)) float64 matrix of a candidate table (astropy Table)."""
    n = len(cands)
    cols = {k: _col(cands, k, n) for k in FEATURES if k not in ("nr_dmag", "sky_rel", "isdiffpos_num")}
    cols["nr_dmag"] = _col(cands, "magnr", n) - _col(cands, "magpsf", n)
    with np.errstate(divide="ignore", invalid="ignore"):
        cols["sky_rel"] = _col(cands, "sky", n) / np.abs(_col(cands, "flux", n))
    isd = np.asarray(cands["isdiffpos"]).astype(str) if n else np.zeros(0, str)
    cols["isdiffpos_num"] = np.isin(isd, ("t", "1")).astype(float)
    X = np.column_stack([cols[k] for k in FEATURES]) if n else np.zeros((0, len(FEATURES)))
    return np.where(np.isfinite(X), X, MISSING)


def train_model(X, y, *, seed: int = 42, n_trees: int = 100, max_depth: int = 12,
                min_samples_leaf: int = 3) -> dict:
    """Fit a random forest and export it as arrays (a JSON-serialisable dict).

    Parameters
    ----------
    X : (n, k) array
        :func:`feature_matrix` rows.
    y : (n,) bool/int array
        1 real, 0 bogus.
    seed : int
        Random state (the model is a deterministic function of the inputs and the seed).
    """
    from sklearn.ensemble import RandomForestClassifier

    rf = RandomForestClassifier(n_estimators=n_trees, max_depth=max_depth,
                                min_samples_leaf=min_samples_leaf, class_weight="balanced",
                                random_state=seed, n_jobs=1)
    rf.fit(np.asarray(X, float), np.asarray(y, int))
    real = list(rf.classes_).index(1)
    trees = []
    for est in rf.estimators_:
        tr = est.tree_
        value = tr.value[:, 0, :]
        p = value[:, real] / value.sum(1)
        trees.append({"left": tr.children_left.tolist(), "right": tr.children_right.tolist(),
                      "feature": tr.feature.tolist(),
                      "threshold": np.round(tr.threshold, 6).tolist(),
                      "p_real": np.round(p, 5).tolist()})
    return {"version": MODEL_VERSION, "features": list(FEATURES), "missing": MISSING,
            "seed": seed, "n_train": int(len(y)), "n_real": int(np.sum(y)), "trees": trees}


def save_model(model: dict, path) -> Path:
    """Write a model dict as compact JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(model, separators=(",", ":")))
    return path


@lru_cache(maxsize=4)
def _load(path_str: str) -> dict:
    data = json.loads(Path(path_str).read_text())
    if tuple(data.get("features", ())) != FEATURES:
        raise ValueError(f"{path_str}: features {data.get('features')} differ from this version's "
                         f"{list(FEATURES)}; retrain with `zsds rb train`")
    data["arrays"] = _load_arrays(data)
    return data


def _load_arrays(model: dict) -> list:
    """Per tree (left, right, feature, threshold, p_real) numpy arrays of a model dict."""
    return [tuple(np.asarray(t[k]) for k in ("left", "right", "feature", "threshold", "p_real"))
            for t in model["trees"]]


def load_model(path=None) -> dict:
    """Load a model (default: the packaged ``zsds/data/rb_model.json``); cached per path."""
    if path is None:
        path = resources.files("zsds") / "data" / DEFAULT_MODEL
    path = Path(str(path))
    if not path.exists():
        raise FileNotFoundError(f"real-bogus model {path} not found; create it with `zsds rb train`")
    return _load(str(path.resolve()))


def _tree_predict(arrays, X) -> np.ndarray:
    left, right, feat, thr, p = arrays
    node = np.zeros(len(X), np.int64)
    rows = np.arange(len(X))
    while True:
        inner = left[node] >= 0
        if not inner.any():
            return p[node]
        f = np.where(inner, feat[node], 0)
        go_left = X[rows, f] <= thr[node]
        node = np.where(inner, np.where(go_left, left[node], right[node]), node)


def predict(model: dict, cands) -> np.ndarray:
    """``rb`` in [0, 1] for each row of a candidate table (or a feature matrix)."""
    X = cands if isinstance(cands, np.ndarray) else feature_matrix(cands)
    if len(X) == 0:
        return np.zeros(0)
    return np.mean([_tree_predict(a, X) for a in model["arrays"]], axis=0)


def roc_auc(score, label) -> float:
    """Area under the ROC curve (Mann-Whitney statistic, ties counted half)."""
    from scipy.stats import rankdata

    score, label = np.asarray(score, float), np.asarray(label, bool)
    n1, n0 = label.sum(), (~label).sum()
    ranks = rankdata(score)
    return float((ranks[label].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def fpr_at_tpr(score, label, tpr: float = 0.95) -> tuple[float, float]:
    """(threshold, false-positive rate) at the highest threshold keeping ``tpr`` of the reals."""
    score, label = np.asarray(score, float), np.asarray(label, bool)
    thr = float(np.quantile(score[label], 1 - tpr, method="lower"))
    return thr, float(np.mean(score[~label] >= thr))
