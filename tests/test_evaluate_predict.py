"""evaluate (metrics/cv.json), predict (ABAW submission file) and the ablation report's parsing."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.bench.train import make_synthetic
from pipeline.config import ModelConfig, PostprocessConfig, SplitConfig, TrainConfig
from pipeline.errors import InputError
from pipeline.io.prepared import load_index
from pipeline.stages import ablation, evaluate, predict, train

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


def test_evaluate_writes_cv(trained):
    post = PostprocessConfig(method="moving_average", window=(5, 9))
    doc = evaluate.run(SPLIT, post, trained / "models", trained / "prepared", trained / "metrics" / "cv.json")
    on_disk = json.loads((trained / "metrics" / "cv.json").read_text())
    assert on_disk == doc
    assert doc["random_init_backbones"] == ["iresnet", "mfcc", "vggish"]
    assert set(doc["folds"]) == {"fold0", "fold1"}
    for block in ("raw", "smoothed"):
        assert set(doc[block]) == {f"{k}_{s}" for k in evaluate.KEYS for s in ("mean", "std")}
    folds = [doc["folds"][f"fold{k}"]["raw"]["ccc_mean"] for k in SPLIT.folds]
    assert doc["raw"]["ccc_mean_mean"] == pytest.approx(np.mean(folds), abs=1e-6)
    # fold scores equal train's (challenge protocol: all validation frames concatenated)
    fold0 = json.loads((trained / "metrics" / "fold0.json").read_text())
    assert doc["folds"]["fold0"]["raw"]["ccc_mean"] == pytest.approx(fold0["ccc_mean"], abs=1e-6)


def test_evaluate_rejects_changed_folds(trained, tmp_path):
    import shutil

    prepared = tmp_path / "prepared"
    shutil.copytree(trained / "prepared", prepared)
    doc = json.loads((prepared / "folds.json").read_text())
    doc["folds"] = doc["folds"][::-1]
    (prepared / "folds.json").write_text(json.dumps(doc))
    with pytest.raises(InputError, match="differ from fold 0"):
        evaluate.run(SPLIT, PostprocessConfig(), trained / "models", prepared, tmp_path / "cv.json")


def test_predict_writes_submission(trained, tmp_path):
    out = tmp_path / "predictions" / "test.txt"
    final = predict.run(SPLIT, PostprocessConfig(method="median", window=(3, 3)), trained / "models", trained / "prepared", trained / "features", out)
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
    single = predict.run(SplitConfig(n_folds=2, folds=(0,)), PostprocessConfig(), trained / "models", trained / "prepared", trained / "features", tmp_path / "a.txt")
    other = predict.run(SplitConfig(n_folds=2, folds=(1,)), PostprocessConfig(), trained / "models", trained / "prepared", trained / "features", tmp_path / "b.txt")
    both = predict.run(SPLIT, PostprocessConfig(), trained / "models", trained / "prepared", trained / "features", tmp_path / "c.txt")
    t = next(iter(both))
    assert np.allclose(both[t], (single[t] + other[t]) / 2, atol=1e-5)


def test_predict_refuses_features_from_other_weights(trained, tmp_path):
    import shutil

    import zarr

    features = tmp_path / "features"
    shutil.copytree(trained / "features", features)
    g = zarr.open_group(str(features / "vggish.zarr"), mode="r+")
    g.attrs["weights"] = "ef" * 32  # as if re-extracted with a trained VGGish after the models were trained
    with pytest.raises(InputError, match="'vggish' features differ from those the model was trained on: weights"):
        predict.run(SPLIT, PostprocessConfig(), trained / "models", trained / "prepared", features, tmp_path / "t.txt")
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
        cv = {"raw": {"ccc_mean_mean": mean, "ccc_valence_mean": mean - 0.1, "ccc_arousal_mean": mean + 0.1}, "smoothed": {"ccc_mean_mean": mean}, "random_init_backbones": ["iresnet"]}
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
    assert rows[-1]["ccc_mean"] == 0.66  # the newest record wins
    assert rows[3]["name"] is None
    text = ablation.format_table(rows)
    assert "n/a" in text and "not Aff-Wild2 numbers" in text and text.count("\n| ") == 8
    assert ablation.exp_name((True, False, True)) == "abl-lase1-tcn0-transformer1"
