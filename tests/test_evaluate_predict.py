"""evaluate (metrics/cv.json), predict (ABAW submission file) and the ablation report's parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.commands import ablation
from pipeline.common.config import (
    ModelConfig,
    PostprocessConfig,
    SplitConfig,
    TrainConfig,
    as_dict,
)
from pipeline.common.errors import InputError
from pipeline.io.prepared import load_index
from pipeline.stages import evaluate, predict, train
from pipeline.training.synthetic import make_synthetic

SHAPES = {"iresnet": (16, 3, 3), "vggish": (12,), "mfcc": (8,)}
MODEL = ModelConfig(tcn_channels=8, tcn_levels=2, tcn_kernel=3, d_model=16, heads=2, layers=1, ff_dim=32, head_hidden=8)
TRAIN = TrainConfig(window=40, hop=20, batch=4, epochs=2, lr=3e-3, warmup_epochs=1)
SPLIT = SplitConfig(n_folds=2, folds=(0, 1))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("evalpred")
    prepared, features = make_synthetic(root, n_trials=4, n_test=2, frames=70, n_folds=2, row_shapes=SHAPES)
    for k in SPLIT.folds:
        train.run(k, MODEL, TRAIN, prepared, features, root / "models" / f"fold{k}", root / "metrics" / f"fold{k}.json", root / "metrics" / f"fold{k}")
    return root


def _evaluate(trained: Path, out: Path, post: PostprocessConfig = PostprocessConfig(), split: SplitConfig = SPLIT, prepared: Path | None = None) -> dict:
    return evaluate.run(split, post, trained / "models", prepared or trained / "prepared", trained / "features",
                        out / "cv.json", out / "cv_folds", out / "val_curves")


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


def test_curves_break_at_unannotated_gaps():
    from pipeline.scoring.curves import with_gaps

    t = np.array([0.0, 0.04, 0.08, 1.0, 1.04])  # 22 frames missing after 0.08 s
    y = np.arange(5.0)
    t2, y2 = with_gaps(t, y)
    assert np.isnan(t2[3]) and np.isnan(y2[3]) and len(t2) == 6
    np.testing.assert_array_equal(t2[[0, 1, 2, 4, 5]], t)


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


def test_predict_writes_submission(trained, tmp_path):
    out = tmp_path / "predictions" / "test.txt"
    final = predict.run(SPLIT.folds, PostprocessConfig(method="median", window=(3, 3)), trained / "models", trained / "prepared", trained / "features", out)
    lines = out.read_text().splitlines()
    assert lines[0] == "image_location,valence,arousal"
    index = load_index(trained / "prepared")
    tests = index.by_split("test")
    assert len(lines) - 1 == sum(index.videos[t.video].n_frames for t in tests)
    first = tests[0]
    rows = [l for l in lines[1:] if l.startswith(first.name + "/")]
    assert [r.split(",")[0] for r in rows] == [f"{first.name}/{f:05d}.jpg" for f in first.frames]
    vals = np.array([[float(x) for x in l.split(",")[1:]] for l in lines[1:]])
    assert np.abs(vals).max() <= 1
    assert np.allclose(vals[: len(rows)], final[first.name], atol=1e-6)


def test_predict_averages_folds(trained, tmp_path):
    single = predict.run((0,), PostprocessConfig(), trained / "models", trained / "prepared", trained / "features", tmp_path / "a.txt")
    other = predict.run([1], PostprocessConfig(), trained / "models", trained / "prepared", trained / "features", tmp_path / "b.txt")
    both = predict.run(SPLIT.folds, PostprocessConfig(), trained / "models", trained / "prepared", trained / "features", tmp_path / "c.txt")
    t = next(iter(both))
    assert np.allclose(both[t], (single[t] + other[t]) / 2, atol=1e-5)


def test_predict_refuses_features_from_other_weights(trained, tmp_path):
    import shutil

    import zarr

    features = tmp_path / "features"
    shutil.copytree(trained / "features", features)
    g = zarr.open_group(str(features / "vggish.zarr"), mode="r+")
    g.attrs["weights"] = "ef" * 32  # as if re-extracted with a trained VGGish after the models were trained
    with pytest.raises(InputError, match="vggish: trained on features from weights random-init, features/vggish.zarr has efef"):
        predict.run(SPLIT.folds, PostprocessConfig(), trained / "models", trained / "prepared", features, tmp_path / "t.txt")
    assert not (tmp_path / "t.txt").exists()


def test_check_submission_counts(tmp_path):
    f = tmp_path / "s.txt"
    f.write_text("image_location,valence,arousal\nt1/00001.jpg,0.1,0.2\nt1/00002.jpg,0.1,0.2\n")
    predict.check_submission(f, {"t1": 2})
    with pytest.raises(InputError, match="'t1' has 2 rows, its video has 3"):
        predict.check_submission(f, {"t1": 3})
    with pytest.raises(InputError, match="'t2' has 0 rows"):
        predict.check_submission(f, {"t1": 2, "t2": 5})


def test_ablation_table_from_exp_show():
    def rec(name, lase, tcn, tf, mean, stamp):
        # what `dvc exp show --json` passes on of cv.json: scalars only (its lists are dropped)
        cv = {"raw": {"mean": mean, "valence": mean - 0.1, "arousal": mean + 0.1}, "smoothed": {"mean": mean},
              "backbones": "random-init: iresnet, vggish"}
        return {
            "rev": "abc1234def",
            "name": name,
            "data": {
                "timestamp": stamp,
                "params": {"params.yaml": {"data": {"model": {"lase": lase, "tcn": tcn, "transformer": tf}}}},
                "metrics": {"metrics/cv.json": {"data": cv}},
            },
        }

    doc = [
        {**rec(None, True, True, True, 0.61, "2024-01-01T00:00:00"), "rev": "workspace", "experiments": [
            {"revs": [rec("abl-lase0-tcn0-transformer0", False, False, False, 0.4, "2024-01-02T00:00:00")]},
            {"revs": [rec("abl-lase1-tcn1-transformer1", True, True, True, 0.66, "2024-01-03T00:00:00")]},
        ]}
    ]
    rows = ablation.table(doc)
    assert len(rows) == 8 and rows[0]["name"] == "abl-lase0-tcn0-transformer0" and rows[0]["ccc_mean"] == 0.4
    assert rows[0]["ccc_valence"] == pytest.approx(0.3) and rows[0]["random_init"]
    assert rows[-1]["ccc_mean"] == 0.66  # the newest record wins
    assert rows[3]["name"] is None
    text = ablation.format_table(rows)
    lines = [l for l in text.splitlines() if l.startswith("| ")]
    assert len(lines) == 9  # header, the eight rows in the paper's order, its value beside ours
    assert lines[1] == "| baseline | – | – | – | 0.4000 | 0.3108 | 0.3000 | 0.5000 | 0.4000 | abl-lase0-tcn0-transformer0 |"
    assert lines[2].startswith("| +LA-SE | ✓ | – | – | n/a | 0.3396 |")
    assert lines[4].startswith("| +Transformer | – | – | ✓ | n/a | 0.3877 |")
    assert lines[8].startswith("| +LA-SE + TCN + Transformer | ✓ | ✓ | ✓ | 0.6600 | 0.6356 |")
    assert "not Aff-Wild2 numbers" in text and "arXiv 2403.12425" in text and "63.71" in text
    assert ablation.exp_name((True, False, True)) == "abl-lase1-tcn0-transformer1"
    unlabelled = ablation.table([rec("x", True, True, True, 0.5, "2024")])
    unlabelled[-1]["random_init"] = False
    assert "not Aff-Wild2" not in ablation.format_table(unlabelled)


def test_paper_tables_ship_with_the_package():
    from pipeline.scoring import paper

    t2 = paper.table2()
    assert len(t2) == 8 and t2[(True, True, True)] == 0.6356 and t2[(False, False, False)] == 0.3108
    assert paper.table3()[5] == {"valence": 0.6123, "arousal": 0.6589, "mean": 0.6356}
    assert "2403.12425" in paper.citation()
