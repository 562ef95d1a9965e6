"""Time arithmetic shared by every stage: frame numbers, seconds, samples, sequence lengths.

Conventions (DESIGN.md):
- Aff-Wild2 frame numbers are 1-based (``00001.jpg`` is the first frame); frame ``f`` of a video at ``fps`` frames
  per second is shown at ``(f - 1) / fps`` seconds.
- Audio is 16 kHz mono (:data:`SAMPLE_RATE`); a time ``t`` seconds is sample ``round(t * SAMPLE_RATE)``.
- A feature sequence shorter than its trial is padded by repeating its last row, a longer one is trimmed from the
  rear (paper, section 3.2).
"""

from __future__ import annotations

import numpy as np

SAMPLE_RATE = 16_000  # Hz, the rate of every prepared WAV file


def frame_times(frame_numbers: np.ndarray, fps: float) -> np.ndarray:
    """Seconds at which 1-based ``frame_numbers`` are shown: ``(f - 1) / fps``; float64 array, same shape."""
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return (np.asarray(frame_numbers, dtype=np.float64) - 1.0) / float(fps)


def seconds_to_samples(seconds: np.ndarray | float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Nearest sample index (int64) of each time in ``seconds`` at ``sample_rate`` Hz."""
    return np.rint(np.asarray(seconds, dtype=np.float64) * sample_rate).astype(np.int64)


def align_length(x: np.ndarray, n: int) -> np.ndarray:
    """Rows of ``x`` (shape (T, ...)) made exactly ``n`` long: trimmed from the rear, or padded by repeating the
    last row (paper 3.2). An empty ``x`` cannot be padded and raises ``ValueError``."""
    if n < 0:
        raise ValueError(f"length must be >= 0, got {n}")
    t = x.shape[0]
    if t >= n:
        return x[:n]
    if t == 0:
        raise ValueError("cannot pad an empty sequence by repeating its last row")
    pad = np.repeat(x[-1:], n - t, axis=0)
    return np.concatenate([x, pad], axis=0)
