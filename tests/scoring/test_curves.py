"""Validation curves: lines break where frames were not annotated."""

from __future__ import annotations

import numpy as np


def test_curves_break_at_unannotated_gaps():
    from pipeline.scoring.curves import with_gaps

    t = np.array([0.0, 0.04, 0.08, 1.0, 1.04])  # 22 frames missing after 0.08 s
    y = np.arange(5.0)
    t2, y2 = with_gaps(t, y)
    assert np.isnan(t2[3]) and np.isnan(y2[3]) and len(t2) == 6
    np.testing.assert_array_equal(t2[[0, 1, 2, 4, 5]], t)

