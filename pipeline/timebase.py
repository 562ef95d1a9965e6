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


# ----------------------------------------------------------------------------------- audio frames per video frame
def hop_frame(seconds: np.ndarray | float, hop: int, offset: float = 0.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Index (int64) of the hop-spaced analysis frame nearest to each time: frame ``k`` is the one whose reference
    point sits at sample ``k * hop + offset``, i.e. ``k = round((t * sample_rate - offset) / hop)``.

    - librosa frames with ``center=True`` (MFCC): reference = the window centre, ``offset = 0``.
    - VGGish log-mel frames (``center=False``): frame ``k`` covers samples ``[k * hop, k * hop + win)``.
    """
    s = np.asarray(seconds, dtype=np.float64) * sample_rate
    return np.floor((s - offset) / hop + 0.5).astype(np.int64)  # round half up, the same on every platform


def centred_example_start(
    seconds: np.ndarray | float, hop: int, win: int, n_frames: int, sample_rate: int = SAMPLE_RATE
) -> np.ndarray:
    """First frame (int64) of the run of ``n_frames`` uncentred frames (hop ``hop``, window ``win`` samples) whose
    centre is nearest to each time. The run spans samples ``[k * hop, k * hop + (n_frames - 1) * hop + win)``, centre
    ``k * hop + ((n_frames - 1) * hop + win) / 2``; VGGish (hop 160, win 400, 96 frames): centre ``160 k + 7800``,
    at most half a hop (5 ms) from the frame time. ``k`` may be negative or run past the audio (edges are padded)."""
    return hop_frame(seconds, hop, offset=((n_frames - 1) * hop + win) / 2.0, sample_rate=sample_rate)


def audio_mask(seconds: np.ndarray, n_samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) bool: the frame time lies within the audio track, i.e. its sample ``round(t * sr)`` is ``< n_samples``.
    A video without audio has ``n_samples = 0`` and an all-False mask."""
    return seconds_to_samples(seconds, sample_rate) < n_samples


def audio_source_rows(mask: np.ndarray) -> np.ndarray:
    """For each frame, the frame whose audio row it takes (int64, -1 = none: zeros).

    Frames with audio take their own row; a frame past the end of a short track repeats the last row before it
    (paper 3.2: a shorter sequence is padded by repeating its last row); a frame with no audio row before it
    (no audio at all) gets -1. A track longer than the video needs nothing: rows exist only for the video's frames,
    so the excess is trimmed by construction."""
    mask = np.asarray(mask, dtype=bool)
    idx = np.where(mask, np.arange(len(mask)), -1)
    return np.maximum.accumulate(idx) if len(idx) else idx.astype(np.int64)
