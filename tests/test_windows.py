"""Window sampler, normalisation, chunked versus preloaded reading, and whole-trial overlapping inference."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.bench.train import make_synthetic
from pipeline.windows import FeatureSource, Normaliser, epoch_windows, make_window, predict_trial, window_starts

SHAPES = {"iresnet": (8, 2, 2), "vggish": (6,), "mfcc": (4,)}


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("tinywin")
    return make_synthetic(root, n_trials=4, n_test=1, frames=60, n_folds=2, row_shapes=SHAPES, dtype="float32")


@pytest.mark.parametrize(("n", "window", "hop", "offset"), [(10, 4, 2, 0), (10, 4, 3, 0), (300, 300, 200, 0), (5, 8, 4, 0), (1000, 300, 200, 0), (1000, 300, 200, 137), (11, 4, 3, 2)])
def test_window_starts_cover_every_frame(n, window, hop, offset):
    starts = window_starts(n, window, hop, offset)
    covered = np.zeros(n, int)
    for s in starts:
        assert 0 <= s and (s + window <= n or (s == 0 and n < window))
        covered[s : s + window] += 1
    assert covered.min() >= 1
    assert starts == sorted(set(starts))


def test_window_starts_hand_cases():
    assert window_starts(10, 4, 3) == [0, 3, 6]
    assert window_starts(11, 4, 3) == [0, 3, 6, 7]  # the last window ends on the last frame
    assert window_starts(3, 4, 2) == [0]
    assert window_starts(1000, 300, 200) == [0, 200, 400, 600, 700]


def test_epoch_windows_resample_with_rng():
    lengths = {"a": 1000, "b": 450, "c": 120}
    w1 = epoch_windows(lengths, 300, 200, np.random.default_rng(0))
    w2 = epoch_windows(lengths, 300, 200, np.random.default_rng(1))
    assert w1 != w2 and w1 == epoch_windows(lengths, 300, 200, np.random.default_rng(0))
    assert ("c", 0) in w1 and {t for t, _ in w1} == set(lengths)


def test_normaliser_and_window(tiny):
    prepared, features = tiny
    trials = ["syn00", "syn01", "syn02"]
    src = FeatureSource(features, list(SHAPES), trials, preload=True)
    norm = Normaliser.fit(src, trials)
    rows = np.concatenate([src.rows("mfcc", t, 0, src.lengths[t])[src.masks["mfcc"][t]] for t in trials])
    assert np.allclose(norm.mean["mfcc"], rows.mean(0), atol=1e-5)
    assert np.allclose(norm.std["mfcc"], rows.std(0), atol=1e-5)
    assert norm.mean["iresnet"].shape == (8, 2, 2)
    n = src.lengths["syn00"]
    w = make_window(src, norm, "syn00", 0, n + 7, labels=np.ones((n, 2), np.float32))
    assert w["iresnet"].shape == (n + 7, 8, 2, 2) and w["mask"].sum() == n
    assert np.all(w["iresnet"][:10] == 0)  # no face in the first 10 frames of syn00: the training mean
    assert np.all(w["labels"][n:] == 0) and np.all(w["mfcc"][n:] == 0)
    back = Normaliser.from_state(norm.state())
    assert np.array_equal(back.mean["vggish"], norm.mean["vggish"])


def test_chunked_reads_equal_preloaded(tiny):
    _, features = tiny
    a = FeatureSource(features, list(SHAPES), ["syn01", "syn03"], preload=True)
    b = FeatureSource(features, list(SHAPES), ["syn01", "syn03"], preload=False)
    for m in SHAPES:
        assert np.array_equal(a.rows(m, "syn03", 5, 37), b.rows(m, "syn03", 5, 37))


class FirstTwo(torch.nn.Module):
    """Per-frame function of the input: overlap averaging must return it unchanged."""

    def forward(self, inputs, mask=None):
        return torch.tanh(inputs["mfcc"][..., :2])


@pytest.mark.parametrize(("window", "hop"), [(16, 5), (16, 16), (100, 30), (7, 3)])
def test_predict_trial_averages_overlaps(tiny, window, hop):
    _, features = tiny
    src = FeatureSource(features, ["mfcc"], ["syn02"], preload=False)
    norm = Normaliser.fit(src, ["syn02"])
    n = src.lengths["syn02"]
    pred = predict_trial(FirstTwo(), src, norm, "syn02", window, hop, torch.device("cpu"), batch=3)
    ref = np.tanh(norm.apply("mfcc", src.rows("mfcc", "syn02", 0, n), src.masks["mfcc"]["syn02"])[:, :2])
    assert pred.shape == (n, 2)
    assert np.allclose(pred, ref, atol=1e-6)
