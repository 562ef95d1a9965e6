"""Whole-trial inference: overlapping windows are averaged per frame, and a window's outputs do not depend on the
batch it is in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.common.config import ModelConfig
from pipeline.io.features import FeatureStore
from pipeline.nn import FusionModel
from pipeline.training.bank import FeatureBank
from pipeline.training.inference import predict
from pipeline.training.windows import window_starts
from tests.helpers.tiny import SMALL_SHAPES as SHAPES

CPU = torch.device("cpu")


def trials_of(features: Path) -> list[str]:
    return FeatureStore.open(features / "mfcc.zarr").trials


class Position(torch.nn.Module):
    """Outputs, for each frame, its position in its window (t / T) and a per-frame input value: averaging over the
    windows that cover a frame gives the mean position, which "last window wins" would not."""

    def forward(self, inputs, mask=None):
        x = inputs["mfcc"]
        pos = torch.arange(x.shape[1], dtype=torch.float32)[None, :].expand(x.shape[0], -1) / x.shape[1]
        return torch.stack([pos, torch.tanh(x[..., 0])], dim=-1)


@pytest.mark.parametrize(("window", "hop"), [(16, 5), (16, 16), (100, 30), (7, 3)])
def test_inference_averages_overlapping_windows(small_stores, window, hop):
    _, features = small_stores
    names = trials_of(features)
    bank = FeatureBank.build(features, ["mfcc"], names, CPU, "device", progress=False)
    norm = bank.fit_normaliser(names)
    preds = predict(Position(), bank, norm, names[1:4], window, hop, zero_missing=False, batch=3)
    assert sorted(preds) == sorted(names[1:4])
    for t in names[1:4]:
        n = int(bank.lengths[bank.index[t]])
        total, count = np.zeros(n), np.zeros(n)
        for s in window_starts(n, window, hop):
            k = min(window, n - s)
            total[s : s + k] += np.arange(k) / window
            count[s : s + k] += 1
        np.testing.assert_allclose(preds[t][:, 0], total / count, atol=1e-6)
        rows = FeatureStore.open(features / "mfcc.zarr").read(t)
        np.testing.assert_allclose(preds[t][:, 1], np.tanh(norm.apply("mfcc", torch.from_numpy(rows)).numpy()[:, 0]),
                                   atol=1e-6)


def test_a_window_does_not_depend_on_its_batch(small_stores):
    """In eval mode (BatchNorm on running statistics) the batch size and the other trials change nothing."""
    _, features = small_stores
    names = trials_of(features)
    bank = FeatureBank.build(features, list(SHAPES), names, CPU, "device", progress=False)
    norm = bank.fit_normaliser(names)
    torch.manual_seed(0)
    cfg = ModelConfig(tcn_channels=8, tcn_levels=1, tcn_kernel=3, d_model=16, heads=2, layers=1, ff_dim=16, head_hidden=8)
    model = FusionModel(cfg, bank.row_shapes, max_len=20).eval()
    together = predict(model, bank, norm, names, 20, 7, zero_missing=False, batch=5)
    for t in names[:2]:
        alone = predict(model, bank, norm, [t], 20, 7, zero_missing=False, batch=1)
        assert list(alone) == [t] and alone[t].shape == (bank.lengths_of([t])[t], 2) and alone[t].dtype == np.float32
        np.testing.assert_allclose(alone[t], together[t], atol=1e-5)
