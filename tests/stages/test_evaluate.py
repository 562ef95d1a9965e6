"""evaluate: metrics/cv.json, per-fold files, validation curves, provenance and its refusals."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.common.config import (
    PostprocessConfig,
    SplitConfig,
    as_dict,
)
from pipeline.common.errors import InputError
from pipeline.stages import evaluate
from tests.helpers.tiny import MODEL, SPLIT, TRAIN


def _evaluate(trained: Path, out: Path, post: PostprocessConfig = PostprocessConfig(), split: SplitConfig = SPLIT, prepared: Path | None = None) -> dict:
    return evaluate.run(split, post, trained / "models", prepared or trained / "prepared", trained / "features",
                        out / "cv.json", out / "cv_folds", out / "val_curves")


def _moving_average(x: np.ndarray, windows: tuple[int, int]) -> np.ndarray:
    """Centred moving average, edges padded with the nearest value, clipped to [-1, 1] (what postprocess promises)."""
    out = np.empty_like(x, dtype=np.float64)
    for d, w in enumerate(windows):
        lo = (w - 1) // 2
        padded = np.pad(x[:, d].astype(np.float64), (w // 2, lo), mode="edge")  # scipy's origin-0 centring
        out[:, d] = np.convolve(padded, np.ones(w) / w, mode="valid")
    return np.clip(out, -1, 1)


def _ccc_by_hand(x: np.ndarray, y: np.ndarray) -> float:
    x, y = x.astype(np.float64), y.astype(np.float64)
    cov = np.mean((x - x.mean()) * (y - y.mean()))
    return 2 * cov / (x.var() + y.var() + (x.mean() - y.mean()) ** 2)


def test_evaluate_writes_cv(trained, tmp_path):
    post = PostprocessConfig(method="moving_average", window=(5, 9))
    doc = _evaluate(trained, tmp_path, post)
    assert json.loads((tmp_path / "cv.json").read_text()) == doc
    assert doc["random_init_backbones"] == ["iresnet", "mfcc", "vggish"]
    assert doc["backbones"] == "random-init: iresnet, mfcc, vggish"
    for block in ("raw", "smoothed"):
        assert set(doc[block]) == {f"{k}{s}" for k in ("valence", "arousal", "mean") for s in ("", "_std")}
    assert sorted(p.name for p in (tmp_path / "cv_folds").iterdir()) == ["fold0.json", "fold1.json"]
    folds = [json.loads((tmp_path / "cv_folds" / f"fold{k}.json").read_text()) for k in SPLIT.folds]
    for block in ("raw", "smoothed"):
        for d in ("valence", "arousal", "mean"):
            vals = [f[block][d] for f in folds]
            assert doc[block][d] == pytest.approx(np.mean(vals), abs=1e-6)
            assert doc[block][f"{d}_std"] == pytest.approx(np.std(vals), abs=1e-6)
    assert doc["smoothed"]["mean"] != doc["raw"]["mean"]  # the filter changed the scores
    # fold scores equal train's (challenge protocol: all validation frames concatenated)
    for k in SPLIT.folds:
        fold = json.loads((trained / "metrics" / f"fold{k}.json").read_text())
        assert folds[k]["raw"]["mean"] == pytest.approx(fold["ccc_mean"], abs=1e-6)
        assert folds[k]["best_epoch"] == fold["best_epoch"] and folds[k]["trials"] == 2
    # an independent recomputation of fold 0, smoothed: the moving average and CCC by hand
    from pipeline.io.prepared import load_folds, read_labels

    trials = sorted(load_folds(trained / "prepared" / "folds.json")[0])
    with np.load(trained / "models" / "fold0" / "val_predictions.npz") as z:
        preds = {t: z[t] for t in trials}
    labels = read_labels(trained / "prepared", trials)
    p = np.concatenate([_moving_average(preds[t], (5, 9)) for t in trials])
    y = np.concatenate([labels[t] for t in trials])
    for i, d in enumerate(("valence", "arousal")):
        assert folds[0]["smoothed"][d] == pytest.approx(_ccc_by_hand(p[:, i], y[:, i]), abs=1e-5)
    assert folds[0]["frames"] == len(y)


def test_evaluate_records_provenance(trained, tmp_path):
    from pipeline.common import provenance
    from pipeline.io.features import FeatureStore

    doc = _evaluate(trained, tmp_path)
    (prov,) = doc["provenance"]
    assert prov["code"] == provenance.record()
    for m in ("iresnet", "vggish", "mfcc"):
        attrs = FeatureStore.open(trained / "features" / f"{m}.zarr").attrs
        assert prov["features"][m]["weights"] == attrs["weights"] == "random-init"
        assert prov["features"][m]["extractor"] == m
    assert prov["params"]["model"] == as_dict(MODEL) and prov["params"]["train"] == as_dict(TRAIN)
    assert prov["params"]["postprocess"] == {"method": "none", "window": [1, 1]}
    assert prov["params"]["split"] == {"scheme": "random", "n_folds": 2, "seed": 0, "folds": [0, 1]}


def test_evaluate_refuses_folds_trained_differently(trained, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(trained / "models", models)
    ckpt = torch.load(models / "fold1" / "model.pt", weights_only=True)
    ckpt["train"]["lr"] = 0.5
    torch.save(ckpt, models / "fold1" / "model.pt")
    with pytest.raises(InputError, match=r"fold1/model.pt: trained with train.lr = 0.5, but fold0 with 0.003"):
        evaluate.run(SPLIT, PostprocessConfig(), models, trained / "prepared", trained / "features",
                     tmp_path / "cv.json", tmp_path / "f", tmp_path / "c")
    assert not (tmp_path / "cv.json").exists()


def test_evaluate_refuses_other_features_than_trained_on(trained, tmp_path):
    import shutil

    models = tmp_path / "models"
    shutil.copytree(trained / "models", models)
    meta = json.loads((models / "fold0" / "meta.json").read_text())
    meta["features"] = {"vggish": {"weights": "ab" * 32}}
    (models / "fold0" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(InputError, match="vggish.zarr: weights 'random-init', but fold0 was trained on features"):
        evaluate.run(SPLIT, PostprocessConfig(), models, trained / "prepared", trained / "features",
                     tmp_path / "cv.json", tmp_path / "f", tmp_path / "c")


def test_evaluate_draws_validation_curves(trained, tmp_path):
    _evaluate(trained, tmp_path, PostprocessConfig(method="median", window=(5, 5)))
    pngs = sorted((tmp_path / "val_curves").iterdir())
    assert [p.name for p in pngs] == ["fold0.png", "fold1.png"]
    from PIL import Image

    for p in pngs:
        with Image.open(p) as im:
            assert im.format == "PNG" and im.width > 400 and im.height > 200
            rgb = np.asarray(im.convert("RGB"), dtype=np.int32)
        # every curve is drawn: labels black, predictions blue, smoothed orange (matplotlib's tab: colours)
        for colour in ((0, 0, 0), (31, 119, 180), (255, 127, 14)):
            assert (np.abs(rgb - colour).sum(axis=-1) < 60).sum() > 200, (p.name, colour)
    # a second run with fewer folds replaces the folders whole: no stale fold1 files
    _evaluate(trained, tmp_path, split=SplitConfig(n_folds=2, folds=(0,)))
    assert [p.name for p in (tmp_path / "val_curves").iterdir()] == ["fold0.png"]
    assert [p.name for p in (tmp_path / "cv_folds").iterdir()] == ["fold0.json"]
    assert not list(tmp_path.glob("*.tmp")) and not list(tmp_path.glob("*.old"))


def test_pick_trials_spans_the_fold():
    ccc = {"a": 0.9, "b": 0.1, "c": None, "d": 0.5, "e": 0.7}
    assert evaluate.pick_trials(ccc, 3) == ["a", "d", "c"]  # best, median, worst (undefined counts as worst)
    assert evaluate.pick_trials({"x": 0.2, "y": 0.3}, 3) == ["y", "x"]
    assert evaluate.pick_trials(ccc, 1) == ["a"]


def test_evaluate_rejects_changed_folds(trained, tmp_path):
    import shutil

    prepared = tmp_path / "prepared"
    shutil.copytree(trained / "prepared", prepared)
    doc = json.loads((prepared / "folds.json").read_text())
    doc["folds"] = doc["folds"][::-1]
    (prepared / "folds.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="differ from fold 0"):
        _evaluate(trained, tmp_path, prepared=prepared)


def test_folds_table_sits_beside_the_papers_table3():
    fold_docs = {k: {"raw": {"valence": 0.5, "arousal": 0.7, "mean": 0.6}} for k in range(6)}
    text = evaluate.format_folds_table(fold_docs, ["iresnet"])
    rows = [l for l in text.splitlines() if l.startswith("| ")]
    assert rows[1] == "| 0 | 0.5000 | 0.7000 | 0.6000 | 0.5121 | 0.5507 | 0.5314 |"
    assert rows[-1].startswith("| mean ± std | 0.5000 ± 0.0000 |")
    assert "0.5716 ± 0.0321" in rows[-1]  # paper valence over its six folds (population std, by hand)
    assert "optimistic" in text and "random-init" in text and "arXiv 2403.12425" in text

