"""split: official and random schemes, video grouping, determinism."""

import json

import pytest

from pipeline.common.config import SplitConfig
from pipeline.common.errors import InputError
from pipeline.io.prepared import Trial
from pipeline.stages import split


def trials():
    out = []
    for v in range(14):
        names = [f"v{v}_left", f"v{v}_right"] if v in (2, 11) else [f"v{v}"]
        for n in names:
            out.append(Trial(n, "val" if v >= 11 else "train", f"v{v}", 30.0, 100 + 37 * v, True, (1,)))
    return out


def video_of(name):
    return name.split("_")[0]


@pytest.mark.parametrize("scheme", ["official", "random"])
def test_folds_partition_and_keep_videos_together(scheme):
    cfg = SplitConfig(n_folds=6, scheme=scheme, seed=3)
    folds = split.make_folds(trials(), cfg)
    assert len(folds) == 6 and all(folds)
    flat = [t for f in folds for t in f]
    assert sorted(flat) == sorted(t.name for t in trials())  # a partition
    fold_of = {t: k for k, f in enumerate(folds) for t in f}
    assert fold_of["v2_left"] == fold_of["v2_right"] and fold_of["v11_left"] == fold_of["v11_right"]
    assert split.make_folds(trials(), cfg) == folds  # deterministic
    if scheme == "official":
        assert sorted(folds[0]) == sorted(t.name for t in trials() if t.split == "val")
        assert all(not n.startswith(("v11", "v12", "v13")) for f in folds[1:] for n in f)


def test_seed_changes_the_cut_and_sizes_are_balanced():
    a = split.make_folds(trials(), SplitConfig(scheme="random", seed=0))
    b = split.make_folds(trials(), SplitConfig(scheme="random", seed=1))
    assert a != b
    size = {t.name: t.n_frames for t in trials()}
    totals = [sum(size[t] for t in f) for f in a]
    assert max(totals) - min(totals) <= max(size.values())


def test_too_few_videos_and_no_validation_set():
    with pytest.raises(InputError, match="cannot fill 12 folds"):
        split.make_folds(trials(), SplitConfig(n_folds=13, folds=(0,), scheme="official"))
    only_train = [t for t in trials() if t.split == "train"]
    with pytest.raises(InputError, match="needs validation trials"):
        split.make_folds(only_train, SplitConfig())
    assert len(split.make_folds(only_train, SplitConfig(scheme="random"))) == 6


def test_run_writes_folds_json(make_prepared, tmp_path):
    spec = {f"t{i}": {"n": 20 + i, "split": "val" if i < 2 else "train"} for i in range(8)}
    spec["t9"] = {"n": 30, "split": "test"}
    idx = make_prepared(spec)
    out = tmp_path / "folds.json"
    split.run(SplitConfig(n_folds=4, folds=(0, 1, 2, 3)), idx.root / "index.json", out)
    doc = json.loads(out.read_text())
    assert doc["n_folds"] == 4 and doc["scheme"] == "official" and doc["folds"][0] == ["t0", "t1"]
    assert "t9" not in {t for f in doc["folds"] for t in f}
    assert doc["frames"] == [sum(spec[t]["n"] for t in f) for f in doc["folds"]]


def test_official_keeps_a_video_split_across_train_and_val_together(capsys):
    ts = trials()
    ts = [Trial("v11_left", "train", "v11", 30.0, 507, True, (1,)) if t.name == "v11_left" else t for t in ts]
    folds = split.make_folds(ts, SplitConfig(n_folds=6, scheme="official", seed=3))
    assert {"v11_left", "v11_right"} <= set(folds[0])  # together, in the validation fold
    assert sorted(t for f in folds for t in f) == sorted(t.name for t in ts)
    assert capsys.readouterr().err.strip() == (
        "warning: video 'v11' has trials in both Train_Set (v11_left) and Validation_Set (v11_right); "
        "all of them go to fold 0, the validation fold"
    )
