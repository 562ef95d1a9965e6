"""Where windows start: every frame covered, hand-checked cases, per-epoch resampling. (Batches and overlapping
inference: tests/test_bank.py.)"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.training.windows import epoch_windows, window_starts


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
