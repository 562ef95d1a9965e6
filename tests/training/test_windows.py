"""Window plans: every frame covered, hand-checked cases, per-epoch resampling, an epoch's shuffled batches, the
windows of whole-trial inference and their bank coordinates. (Gathering batches: tests/test_bank.py; overlapping
inference: tests/test_inference.py.)"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.training.windows import (
    epoch_plan,
    epoch_windows,
    inference_windows,
    window_rows,
    window_starts,
)


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


def test_epoch_plan_shuffles_every_window_once_as_a_dataloader_would():
    lengths = {"b": 450, "a": 1000, "c": 120}
    index = {"a": 0, "b": 1, "c": 2}
    plan = epoch_plan(lengths, index, 300, 200, 3, [0, 1, 2], torch.Generator().manual_seed(5))
    items = epoch_windows(lengths, 300, 200, np.random.default_rng([0, 1, 2]))
    assert [len(t) for t, _ in plan] == [3] * (len(items) // 3) + ([len(items) % 3] if len(items) % 3 else [])
    got = [(int(t), int(s)) for tr, st in plan for t, s in zip(tr, st)]
    assert sorted(got) == sorted((index[t], s) for t, s in items)
    order = [int(i) for i in torch.utils.data.DataLoader(range(len(items)), shuffle=True,
                                                         generator=torch.Generator().manual_seed(5))]
    assert got == [(index[items[i][0]], items[i][1]) for i in order]
    again = epoch_plan(lengths, index, 300, 200, 3, [0, 1, 2], torch.Generator().manual_seed(5))
    assert all((a == c).all() and (b == d).all() for (a, b), (c, d) in zip(plan, again))


def test_inference_windows_hand_case():
    trial, start = inference_windows({"b": 11, "a": 3}, {"a": 0, "b": 1}, 4, 3)
    assert trial.tolist() == [1, 1, 1, 1, 0] and start.tolist() == [0, 3, 6, 7, 0]
    assert trial.dtype == start.dtype == np.int64


def test_window_rows_clamp_padding_to_the_last_row():
    offsets, lengths = torch.tensor([0, 5]), torch.tensor([5, 3])
    w = window_rows(offsets, lengths, np.array([1, 0, 0]), np.array([1, 3, 0]), 4)
    assert len(w) == 3 and w.trial.tolist() == [1, 0, 0]
    assert w.rows.tolist() == [[6, 7, 7, 7], [3, 4, 4, 4], [0, 1, 2, 3]]
    assert w.valid.tolist() == [[True, True, False, False], [True, True, False, False], [True] * 4]
