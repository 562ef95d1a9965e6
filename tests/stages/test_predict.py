"""predict: the ABAW submission file, folds averaged, features from other weights refused."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.common.config import (
    PostprocessConfig,
)
from pipeline.common.errors import InputError
from pipeline.io.prepared import load_index
from pipeline.stages import predict
from tests.helpers.tiny import SPLIT


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

