"""Synthetic data (pipeline/training/synthetic.py): the one prepared-folder writer, the learnable set with its
stores (same seed, same arrays; the trial without a face at first and the video without audio), and Aff-Wild2's
trial lengths. (The spec-driven folders of ``make_prepared``: tests/test_prepared_contract.py.)"""

from __future__ import annotations

import json

import h5py
import numpy as np

from pipeline.common.provenance import RANDOM_INIT
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import (
    Trial,
    Video,
    frames_sha256,
    load_folds,
    load_index,
    read_labels,
)
from pipeline.training import synthetic
from pipeline.training.synthetic import TrialData, make_synthetic, write_folder

SHAPES = {"iresnet": (4, 2, 2), "vggish": (6,), "mfcc": (3,)}


def test_write_folder_records_digests_only_when_asked(tmp_path):
    frames = np.arange(4 * 2 * 2 * 3, dtype=np.uint8).reshape(4, 2, 2, 3)
    face = np.array([True, False, True, True])
    video = Video("v", "videos/v.mp4", 25.0, 4, True, "audio/v.wav", 0.5)
    record = Trial("t", "train", "v", 25.0, 4, True, (1, 2, 3, 4))
    labels = np.full((4, 2), 0.5, np.float32)
    rows = [TrialData(record, frames, face, labels), TrialData(Trial("u", "test", "v", 25.0, 4, True, (1, 2, 3, 4)),
                                                               frames, face, None)]
    samples = np.linspace(-1, 1, 8000, dtype=np.float32)
    index = write_folder(tmp_path / "a", 2, {"v": video}, rows, {"v": samples})
    back = load_index(tmp_path / "a")
    assert back.trials == index.trials and back.videos == index.videos
    assert back.trial("t").frames_sha256 == frames_sha256(frames, face) and back.videos["v"].audio_sha256
    assert (tmp_path / "a" / "audio" / "v.wav").exists()
    assert list(read_labels(tmp_path / "a", ["t"])) == ["t"]
    with h5py.File(tmp_path / "a" / "labels.h5") as h5:
        assert list(h5) == ["t"]  # the test trial has no labels
    with h5py.File(tmp_path / "a" / "frames.h5") as h5:
        np.testing.assert_array_equal(h5["u"]["frames"][()], frames)
        np.testing.assert_array_equal(h5["u"]["face"][()], face)

    plain = write_folder(tmp_path / "b", 2, {"v": video}, rows, digests=False)
    assert plain.trial("t").frames_sha256 is None and plain.videos["v"].audio_sha256 is None
    assert not (tmp_path / "b" / "audio").exists()


def test_make_synthetic_same_seed_same_arrays(tmp_path):
    kw = dict(n_trials=4, n_test=1, frames=40, n_folds=2, row_shapes=SHAPES, noise=0.5)
    a = make_synthetic(tmp_path / "a", **kw)
    b = make_synthetic(tmp_path / "b", **kw)
    c = make_synthetic(tmp_path / "c", seed=1, **kw)
    assert (a[0] / "index.json").read_text() == (b[0] / "index.json").read_text()
    assert load_folds(a[0] / "folds.json") == load_folds(b[0] / "folds.json")
    names = [t.name for t in load_index(a[0]).trials]
    labelled = [t for t in names if load_index(a[0]).trial(t).split != "test"]
    la, lb, lc = (read_labels(p, labelled) for p, _ in (a, b, c))
    assert all(np.array_equal(la[t], lb[t]) for t in labelled)
    assert not all(la[t].shape == lc[t].shape and np.array_equal(la[t], lc[t]) for t in labelled)
    for m in SHAPES:
        sa, sb = FeatureStore.open(a[1] / f"{m}.zarr"), FeatureStore.open(b[1] / f"{m}.zarr")
        for t in names:
            np.testing.assert_array_equal(sa.read(t), sb.read(t))
            np.testing.assert_array_equal(sa.mask(t), sb.mask(t))


def test_make_synthetic_conventions(tmp_path):
    prepared, features = make_synthetic(tmp_path, n_trials=5, n_test=2, n_folds=2, row_shapes=SHAPES,
                                        lengths=[50, 60, 70, 80, 90, 30, 40], dtype={"iresnet": "float16",
                                                                                     "vggish": "float16",
                                                                                     "mfcc": "float32"})
    index = load_index(prepared)
    names = [t.name for t in index.trials]
    assert names == [f"syn{i:02d}" for i in range(7)] and [t.n_frames for t in index.trials] == [50, 60, 70, 80, 90, 30, 40]
    assert [t.split for t in index.trials] == ["train"] * 3 + ["val"] * 2 + ["test"] * 2
    assert not index.trial("syn06").has_audio and index.trial("syn05").has_audio
    folds = json.loads((prepared / "folds.json").read_text())
    assert folds["n_folds"] == 2 and sorted(sum(folds["folds"], [])) == names[:5]
    with h5py.File(prepared / "frames.h5") as h5:
        assert h5["syn00"]["frames"].shape == (50, 8, 8, 3)
        assert not h5["syn00"]["face"][:10].any() and h5["syn00"]["face"][10:].all()
    for m, shape in SHAPES.items():
        store = FeatureStore.open(features / f"{m}.zarr")
        assert tuple(store.row_shape) == shape and store.attrs["weights"] == RANDOM_INIT
        assert store.dtype == np.dtype("float32" if m == "mfcc" else "float16")
        mask = store.mask("syn00")
        assert mask[10:].all() and mask[:10].all() == (m != "iresnet")
        assert store.mask("syn06").any() == (m == "iresnet")  # the video without audio
    labels = read_labels(prepared, names[:5])
    assert all(np.abs(y).max() <= 1 and y.dtype == np.float32 for y in labels.values())


def test_affwild_lengths_sum_and_range():
    lengths = synthetic.affwild_lengths(200_000)
    assert sum(lengths) == 200_000
    assert all(synthetic.TRIAL_MIN <= n <= synthetic.TRIAL_MAX for n in lengths)
    assert lengths == synthetic.affwild_lengths(200_000)
