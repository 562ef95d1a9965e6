"""CCC against an independent formula and hand-computed cases; the torch loss; smoothing."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pipeline.common.config import PostprocessConfig
from pipeline.scoring.metrics import ccc, ccc_loss, ccc_torch, ccc_va, json_float
from pipeline.scoring.postprocess import smooth, smooth_1d


def ccc_pearson(x: np.ndarray, y: np.ndarray) -> float:
    """Independent form: 2 r sx sy / (sx^2 + sy^2 + (mx - my)^2), through np.corrcoef."""
    r = np.corrcoef(x, y)[0, 1]
    sx, sy = x.std(), y.std()
    return 2 * r * sx * sy / (sx**2 + sy**2 + (x.mean() - y.mean()) ** 2)


def test_ccc_matches_independent_formula():
    rng = np.random.default_rng(0)
    for _ in range(20):
        x = rng.normal(size=200)
        y = 0.5 * x + rng.normal(0.3, 0.8, size=200)
        assert ccc(x, y) == pytest.approx(ccc_pearson(x, y), abs=1e-12)


@pytest.mark.parametrize(
    ("x", "y", "expected"),
    [
        ([1, 2, 3], [1, 2, 3], 1.0),
        ([1, 2, 3], [3, 2, 1], -1.0),
        ([1, 2, 3], [2, 3, 4], 4 / 7),  # cov 2/3, variances 2/3, mean gap 1: (4/3) / (4/3 + 1)
        ([1, 2, 3], [2, 4, 6], 4 / 11),  # cov 4/3, var 2/3 and 8/3, mean gap 2: (8/3) / (10/3 + 4)
        ([0, 0, 0], [1, 2, 3], 0.0),  # one constant series: defined, zero
    ],
)
def test_ccc_hand_computed(x, y, expected):
    assert ccc(np.array(x), np.array(y)) == pytest.approx(expected)


@pytest.mark.parametrize(
    ("x", "y"),
    [([1, 1, 1], [1, 1, 1]), ([0.5, 0.5], [0.5, 0.5]), ([1.0], [1.0]), ([], []), ([1, np.nan, 3], [1, 2, 3]), ([1, 2], [1, 2, 3])],
)
def test_ccc_degenerate_is_nan(x, y):
    assert math.isnan(ccc(np.array(x, dtype=float), np.array(y, dtype=float)))


def test_ccc_va_and_torch_agree():
    rng = np.random.default_rng(1)
    p, t = rng.uniform(-1, 1, (300, 2)), rng.uniform(-1, 1, (300, 2))
    t[:, 0] = 0.7 * p[:, 0] + 0.1
    ref = ccc_va(p, t)
    got = ccc_torch(torch.tensor(p), torch.tensor(t)).numpy()
    assert got == pytest.approx([ref["ccc_valence"], ref["ccc_arousal"]], abs=1e-5)
    assert ref["ccc_mean"] == pytest.approx((ref["ccc_valence"] + ref["ccc_arousal"]) / 2)


def test_torch_ccc_pools_batch_and_respects_mask():
    rng = np.random.default_rng(2)
    p, t = rng.normal(size=(3, 40, 2)), rng.normal(size=(3, 40, 2))
    mask = np.ones((3, 40), bool)
    mask[1, 25:] = False
    p_pad = p.copy()
    p_pad[~mask] = 1e3  # padding must not count
    got = ccc_torch(torch.tensor(p_pad), torch.tensor(t), torch.tensor(mask)).numpy()
    ref = [ccc(p[..., d][mask], t[..., d][mask]) for d in range(2)]
    assert got == pytest.approx(ref, abs=1e-5)


def test_loss_is_finite_for_constant_input():
    pred = torch.zeros(2, 10, 2, requires_grad=True)
    target = torch.zeros(2, 10, 2)
    loss = ccc_loss(pred, target)
    loss.backward()
    assert torch.isfinite(loss) and loss.item() == pytest.approx(2.0)
    assert torch.isfinite(pred.grad).all()


def test_loss_zero_for_perfect_prediction():
    y = torch.rand(4, 30, 2) * 2 - 1
    assert ccc_loss(y.clone(), y).item() == pytest.approx(0.0, abs=1e-5)


def test_smoothing():
    x = np.sin(np.linspace(0, 6, 120)).astype(np.float32)
    spiky = x.copy()
    spiky[60] += 3
    for method in ("moving_average", "savgol", "median"):
        y = smooth_1d(spiky, method, 7)
        assert y.shape == x.shape and np.isfinite(y).all()
        assert abs(y[60] - x[60]) < abs(spiky[60] - x[60])
        assert np.allclose(smooth_1d(np.full(9, 0.3, np.float32), method, 5), 0.3, atol=1e-6)
        assert smooth_1d(x[:3], method, 31).shape == (3,)  # window longer than the series
    assert np.array_equal(smooth_1d(spiky, "none", 9), spiky)
    assert np.array_equal(smooth_1d(spiky, "median", 1), spiky)
    pred = np.stack([spiky, spiky], 1)
    out = smooth(pred, PostprocessConfig(method="median", window=(1, 5)))
    assert np.allclose(out[:, 0], np.clip(spiky, -1, 1))  # window 1: valence untouched but for the clip
    # arousal: a running median of 5 by hand (edges repeat the end value), then the clip to the label range
    by_hand = np.median(np.lib.stride_tricks.sliding_window_view(np.pad(spiky, 2, mode="edge"), 5), axis=1)
    np.testing.assert_allclose(out[:, 1], np.clip(by_hand, -1, 1), atol=1e-6)
    assert abs(out[60, 1] - x[60]) < 0.06  # the spike is gone, not just clipped to 1
    assert out.min() >= -1 and out.max() <= 1


def test_json_float_keeps_metrics_files_valid_json():
    assert json_float(float("nan")) is None and json_float(float("inf")) is None and json_float(None) is None
    assert json_float(0.12345678) == 0.123457
