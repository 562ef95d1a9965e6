"""Smoothing values as they arrive equals smoothing the whole trial (every method, even and odd windows, trials
shorter than the window, any chunking)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis.smoother import StreamingSmoother
from pipeline.common.config import PostprocessConfig
from pipeline.scoring.postprocess import smooth


@pytest.mark.parametrize("method", ["none", "moving_average", "median", "savgol"])
@pytest.mark.parametrize("window", [(1, 1), (5, 5), (4, 9), (2, 31)])
def test_streaming_equals_whole_trial(method, window):
    cfg = PostprocessConfig(method=method, window=window)
    rng = np.random.default_rng(0)
    for n in (1, 3, 20, 200):
        x = rng.uniform(-1.2, 1.2, (n, 2)).astype(np.float32)  # beyond [-1, 1]: the clipping too
        want = smooth(x, cfg)
        for chunk in (1, 7, 64):
            s = StreamingSmoother(cfg)
            parts = [s.push(x[i : i + chunk]) for i in range(0, n, chunk)]
            got = np.concatenate([*parts, s.finish()])
            np.testing.assert_allclose(got, want, atol=1e-6, err_msg=f"{method} {window} n={n} chunk={chunk}")


def test_values_come_out_a_context_later():
    s = StreamingSmoother(PostprocessConfig(method="median", window=(5, 3)))
    assert s.context == 6
    assert len(s.push(np.zeros((6, 2)))) == 0 and len(s.push(np.zeros((4, 2)))) == 4 and len(s.finish()) == 6
    assert StreamingSmoother(PostprocessConfig()).context == 0
