"""Smoothing of per-frame predictions (params ``postprocess``), applied per trial before scoring or submission."""

from __future__ import annotations

import numpy as np
from scipy.ndimage import median_filter, uniform_filter1d

from pipeline.common.config import PostprocessConfig

SAVGOL_ORDER = 2  # polynomial order of the Savitzky-Golay filter


def smooth_1d(x: np.ndarray, method: str, window: int) -> np.ndarray:
    """Smooth one (N,) series. Edges repeat the nearest value, so the output has the input's length.

    A window of 1 (or a series of one frame) returns a copy. Savitzky-Golay needs an odd window above its order:
    an even window is rounded up, and a window longer than the series is cut to the longest odd one that fits.
    """
    x = np.asarray(x, dtype=np.float32)
    n = len(x)
    if method == "none" or window <= 1 or n < 2:
        return x.copy()
    if method == "moving_average":
        return uniform_filter1d(x, size=min(window, n), mode="nearest")
    if method == "median":
        return median_filter(x, size=min(window, n), mode="nearest")
    if method == "savgol":
        w = window | 1  # odd
        if w > n:
            w = n if n % 2 else n - 1
        if w <= SAVGOL_ORDER:
            return x.copy()
        from scipy.signal import (
            savgol_filter,  # here: scipy.signal takes most of a second to import
        )

        return savgol_filter(x, w, SAVGOL_ORDER, mode="nearest").astype(np.float32)
    raise ValueError(f"unknown smoothing method {method!r}")


def smooth(pred: np.ndarray, cfg: PostprocessConfig) -> np.ndarray:
    """Smooth a trial's (N, 2) valence-arousal predictions with ``cfg.window[d]`` for dimension ``d``; the result is
    clipped to [-1, 1], the label range."""
    out = np.stack([smooth_1d(pred[:, d], cfg.method, cfg.window[d]) for d in range(pred.shape[1])], axis=1)
    return np.clip(out, -1.0, 1.0)
