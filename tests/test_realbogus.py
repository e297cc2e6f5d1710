"""Real-bogus model: feature matrix, JSON model round trip, prediction, metrics."""

import numpy as np
import pytest
from astropy.table import Table

from zsds.core import realbogus


def _table(n, rng, real):
    t = Table({k: rng.normal(1.0 if real else 0.0, 0.3, n) for k in realbogus.FEATURES
               if k not in ("nr_dmag", "sky_rel", "isdiffpos_num")})
    t["isdiffpos"] = np.where(rng.random(n) < 0.5, "t", "f")
    t["magpsf"], t["magnr"] = rng.normal(19, 1, n), np.full(n, np.nan)
    t["sky"], t["flux"] = rng.normal(0, 1, n), rng.uniform(100, 1000, n)
    return t


def test_train_save_load_predict(tmp_path):
    rng = np.random.default_rng(1)
    t = Table(np.concatenate([_table(200, rng, True).as_array(), _table(200, rng, False).as_array()]))
    X, y = realbogus.feature_matrix(t), np.r_[np.ones(200), np.zeros(200)].astype(int)
    assert X.shape == (400, len(realbogus.FEATURES)) and np.all(X[:, realbogus.FEATURES.index("nr_dmag")] == realbogus.MISSING)
    model = realbogus.train_model(X, y, seed=3, n_trees=10)
    path = realbogus.save_model(model, tmp_path / "m.json")
    loaded = realbogus.load_model(path)
    rb = realbogus.predict(loaded, t)
    assert rb.shape == (400,) and np.all((rb >= 0) & (rb <= 1))
    assert realbogus.roc_auc(rb, y.astype(bool)) > 0.98
    thr, fpr = realbogus.fpr_at_tpr(rb, y.astype(bool), 0.95)
    assert np.mean(rb[y == 1] >= thr) >= 0.95 and 0 <= fpr <= 1
    # deterministic: same seed, same trees
    again = realbogus.train_model(X, y, seed=3, n_trees=10)
    assert again["trees"] == model["trees"]


def test_packaged_model_loads():
    model = realbogus.load_model()
    assert model["version"] == realbogus.MODEL_VERSION
    assert model["heldout"]["auc"] > 0.95
    assert realbogus.predict(model, np.zeros((0, len(realbogus.FEATURES)))).shape == (0,)


def test_feature_mismatch_named(tmp_path):
    path = tmp_path / "bad.json"
    path.write_text('{"features": ["x"], "trees": []}')
    with pytest.raises(ValueError, match="bad.json"):
        realbogus.load_model(path)
