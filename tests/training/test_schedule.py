"""The learning-rate schedule both training loops use (pipeline/training/schedule.py)."""

from __future__ import annotations

import math

import pytest

from pipeline.training.schedule import lr_factor


def test_warm_up_then_cosine_to_zero():
    f = [lr_factor(s, 10, 100) for s in range(100)]
    assert f[0] == pytest.approx(0.1) and f[4] == pytest.approx(0.5) and f[9] == pytest.approx(1.0)
    assert f[10] == pytest.approx(1.0) and all(a >= b for a, b in zip(f[10:], f[11:]))
    # halfway through the decay the cosine is at half its range
    assert lr_factor(55, 10, 100) == pytest.approx(0.5)
    assert f[-1] == pytest.approx(0.5 * (1 + math.cos(math.pi * 89 / 90))) and lr_factor(100, 10, 100) == 0.0


def test_floor_and_past_the_end():
    assert lr_factor(100, 10, 100, floor=0.05) == pytest.approx(0.05)
    assert lr_factor(500, 10, 100, floor=0.05) == pytest.approx(0.05)  # stays at the floor
    assert lr_factor(55, 10, 100, floor=0.05) == pytest.approx(0.05 + 0.95 * 0.5)


def test_no_warm_up():
    assert lr_factor(0, 0, 10) == 1.0 and lr_factor(9, 0, 10) < lr_factor(1, 0, 10) < 1.0
