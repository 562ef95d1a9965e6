"""Time arithmetic shared by every stage: frame numbers, seconds, samples, analysis frames, sequence lengths.

Conventions (DESIGN.md):
- Aff-Wild2 frame numbers are 1-based (``00001.jpg`` is the first frame, in presentation order).
- The video timeline starts at 0 = the presentation time of the video's first frame. Frame ``f`` of a constant-rate
  video is shown at ``(f - 1) / fps`` s; a variable-rate video carries its frames' real presentation times
  (:class:`Timestamps`), read from the file.
- Audio is 16 kHz mono (:data:`SAMPLE_RATE`). A prepared WAV is the decoded track as it is; its sample 0 is heard at
  ``audio_offset`` seconds on the video timeline (positive: the track starts after the first frame; negative: before
  it, e.g. audio that starts before the picture). A time ``t`` on the video timeline is sample
  ``round((t - audio_offset) * SAMPLE_RATE)`` of the WAV (:func:`track_seconds`, then :func:`seconds_to_samples`).
- A feature sequence shorter than its trial is padded by repeating its last row, a longer one is trimmed from the
  rear (paper, section 3.2). At the front there is no "last row" to repeat: frames shown before a late-starting track
  get no audio row (zeros, audio mask False), like a video without audio (:func:`audio_source_rows`).
- Analysis frames (MFCC, VGGish log-mel) are ``hop`` samples apart and ``win`` samples long; :func:`frame_span` gives
  the samples a run of them reads, centred (librosa ``center=True``) or not.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction

import numpy as np

SAMPLE_RATE = 16_000  # Hz, the rate of every prepared WAV file
# Largest deviation (seconds) of a frame's timestamp from (f - 1) / fps for which a video still counts as constant
# rate: 1 ms, or one tick where the container's clock is coarser (timestamps are rounded to ticks).
CONSTANT_RATE_TOLERANCE_S = 0.001


# ------------------------------------------------------------------------------------------ frames -> seconds
@dataclass(frozen=True)
class Timestamps:
    """Presentation times of a variable-rate video's frames, run-length coded so that index.json stays small.

    Frame 1 is at 0 s; then ``runs`` of ``(ticks to the next frame, how many times)``, a tick being
    ``time_base[0] / time_base[1]`` seconds (the container's own clock, so the times are exact). A video whose frames
    alternate between two durations takes one run per frame; a constant-rate video needs none of this.
    """

    time_base: tuple[int, int]
    runs: tuple[tuple[int, int], ...]

    @property
    def n_frames(self) -> int:
        return 1 + sum(c for _, c in self.runs)

    def seconds(self) -> np.ndarray:
        """(n_frames,) float64 seconds of every frame, frame 1 at 0."""
        deltas = np.repeat(
            np.array([d for d, _ in self.runs], dtype=np.int64), np.array([c for _, c in self.runs], dtype=np.int64)
        )
        ticks = np.concatenate([[0], np.cumsum(deltas)])
        return ticks * (self.time_base[0] / self.time_base[1])

    def to_json(self) -> dict:
        return {"time_base": list(self.time_base), "runs": [list(r) for r in self.runs]}

    @classmethod
    def from_json(cls, doc: dict | None) -> "Timestamps | None":
        if doc is None:
            return None
        return cls(tuple(doc["time_base"]), tuple((int(d), int(c)) for d, c in doc["runs"]))


def frame_times(frame_numbers: np.ndarray, fps: float, timestamps: Timestamps | None = None) -> np.ndarray:
    """Seconds on the video timeline at which 1-based ``frame_numbers`` are shown (float64, same shape):
    ``(f - 1) / fps`` for a constant-rate video, the recorded presentation times for a variable-rate one."""
    f = np.asarray(frame_numbers, dtype=np.int64)
    if timestamps is not None:
        t = timestamps.seconds()
        if f.size and (f.min() < 1 or f.max() > len(t)):
            raise ValueError(f"frame numbers {f.min()}..{f.max()} outside the video's 1..{len(t)}")
        return t[f - 1]
    if fps <= 0:
        raise ValueError(f"fps must be positive, got {fps}")
    return (f.astype(np.float64) - 1.0) / float(fps)


def timestamps_from_pts(pts: Sequence[int], time_base: Fraction, stated_fps: float | None) -> tuple[float, Timestamps | None]:
    """``(fps, timestamps)`` of a video from its frames' presentation timestamps (``pts`` in ``time_base`` ticks,
    any order).

    - The frames fit ``(f - 1) / stated_fps`` (within :data:`CONSTANT_RATE_TOLERANCE_S`): ``(stated_fps, None)``.
    - They fit a constant rate of their own (the most common frame duration): ``(that rate, None)``; the container
      states a wrong rate and the caller may say so.
    - Otherwise the video has a variable frame rate: ``(mean rate, Timestamps)``, the mean being the stated rate
      (containers state frames / duration) or, without one, ``(n - 1) / (last - first)``.
    A video of one frame (or all frames at one time) keeps ``stated_fps``.
    """
    ticks = np.sort(np.asarray(pts, dtype=np.int64))
    ticks = ticks - ticks[0] if len(ticks) else ticks
    if len(ticks) < 2 or ticks[-1] == 0:
        if not stated_fps or stated_fps <= 0:
            raise ValueError("one frame and no stated frame rate")
        return float(stated_fps), None
    tb = Fraction(time_base)
    t = ticks * float(tb)
    i = np.arange(len(t), dtype=np.float64)
    tol = max(CONSTANT_RATE_TOLERANCE_S, float(tb))
    deltas = np.diff(ticks)
    values, counts = np.unique(deltas[deltas > 0], return_counts=True)
    own = 1 / (Fraction(int(values[counts.argmax()])) * tb)  # exact: 24000/1001, 30, ...
    for fps in (stated_fps, own):
        if fps and fps > 0 and np.abs(t - i / float(fps)).max() <= tol:
            return float(fps), None
    runs: list[tuple[int, int]] = []
    for d in deltas.tolist():
        if runs and runs[-1][0] == d:
            runs[-1] = (d, runs[-1][1] + 1)
        else:
            runs.append((d, 1))
    mean = stated_fps if stated_fps and stated_fps > 0 else (len(t) - 1) / t[-1]
    return float(mean), Timestamps((tb.numerator, tb.denominator), tuple(runs))


# ------------------------------------------------------------------------------------------ seconds -> samples
def track_seconds(times: np.ndarray, audio_offset: float) -> np.ndarray:
    """Video-timeline seconds -> seconds on the WAV's own timeline (0 = its sample 0): ``t - audio_offset``."""
    return np.asarray(times, dtype=np.float64) - float(audio_offset)


def seconds_to_samples(seconds: np.ndarray | float, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Nearest sample index (int64) of each time in ``seconds`` at ``sample_rate`` Hz."""
    return np.rint(np.asarray(seconds, dtype=np.float64) * sample_rate).astype(np.int64)


def ms_to_samples(ms: float, sample_rate: int = SAMPLE_RATE) -> int:
    """A window or hop given in milliseconds, in whole samples (25 ms at 16 kHz: 400)."""
    return int(round(ms * sample_rate / 1000))


# ----------------------------------------------------------------------------------- audio frames per video frame
def hop_frame(seconds: np.ndarray | float, hop: int, offset: float = 0.0, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Index (int64) of the hop-spaced analysis frame nearest to each time (seconds on the WAV's timeline): frame
    ``k`` is the one whose reference point sits at sample ``k * hop + offset``, i.e.
    ``k = round((t * sample_rate - offset) / hop)``.

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
    return hop_frame(seconds, hop, offset=run_length(n_frames, hop, win) / 2.0, sample_rate=sample_rate)


def run_length(n_frames: int, hop: int, win: int) -> int:
    """Samples covered by ``n_frames`` consecutive analysis frames: ``(n_frames - 1) * hop + win`` (VGGish: 15 600)."""
    return (n_frames - 1) * hop + win


def frame_start(k: np.ndarray | int, hop: int, win: int, centred: bool) -> np.ndarray | int:
    """First sample of analysis frame ``k`` (int or int64 array): ``k * hop`` for an uncentred frame, ``k * hop -
    win // 2`` for a centred one (librosa ``center=True``). May be negative: the reader pads with zeros."""
    return k * hop - (win // 2 if centred else 0)


def frame_span(lo: int, hi: int, hop: int, win: int, centred: bool) -> tuple[int, int]:
    """Samples ``[start, stop)`` read by analysis frames ``lo .. hi - 1`` (:func:`frame_start`). ``start`` may be
    negative and ``stop`` may pass the track: the reader pads with zeros, as librosa's centred analysis does."""
    start = int(frame_start(lo, hop, win, centred))
    return start, start + run_length(hi - lo, hop, win)


def n_centred_frames(n_samples: int, hop: int) -> int:
    """Frames of a ``center=True`` analysis of ``n_samples`` samples (librosa: ``1 + n // hop``)."""
    return 1 + n_samples // hop


def audio_mask(track_times: np.ndarray, n_samples: int, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """(N,) bool: the frame is heard within the track, i.e. its sample ``round(t * sr)`` (``t`` on the WAV's timeline,
    :func:`track_seconds`) lies in ``[0, n_samples)``. A video without audio has ``n_samples = 0``: all False."""
    s = seconds_to_samples(track_times, sample_rate)
    return (s >= 0) & (s < n_samples)


def audio_source_rows(mask: np.ndarray) -> np.ndarray:
    """For each frame, the frame whose audio row it takes (int64, -1 = none: zeros).

    Frames with audio take their own row; a frame past the end of a short track repeats the last row before it
    (paper 3.2: a shorter sequence is padded by repeating its last row); a frame with no audio row before it (no
    audio at all, or shown before a late-starting track) gets -1. A track longer than the video needs nothing: rows
    exist only for the video's frames, so the excess is trimmed by construction."""
    mask = np.asarray(mask, dtype=bool)
    idx = np.where(mask, np.arange(len(mask)), -1)
    return np.maximum.accumulate(idx) if len(idx) else idx.astype(np.int64)


# ------------------------------------------------------------------------------ hidden-state sequences (wav2vec2)
def conv_stack(kernels: Sequence[int], strides: Sequence[int]) -> tuple[int, int]:
    """``(hop, receptive field)`` in samples of a stack of unpadded 1-D convolutions, the feature encoder of the
    wav2vec2 family (wav2vec2, HuBERT, WavLM): kernels (10, 3, 3, 3, 3, 2, 2), strides (5, 2, 2, 2, 2, 2, 2) give
    (320, 400), i.e. 50 hidden frames per second at 16 kHz, frame ``k`` computed from samples
    ``[k * 320, k * 320 + 400)`` (an uncentred analysis frame: :func:`frame_start`)."""
    hop, field = 1, 1
    for k, s in zip(kernels, strides, strict=True):
        field += (int(k) - 1) * hop
        hop *= int(s)
    return hop, field


def n_uncentred_frames(n_samples: int, hop: int, win: int) -> int:
    """Frames of an uncentred analysis of ``n_samples`` samples: ``(n - win) // hop + 1``, 0 when ``n < win``."""
    return max(0, (int(n_samples) - win) // hop + 1)


def nearest_uncentred_frame(seconds: np.ndarray | float, hop: int, win: int, n_frames: int,
                            sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Index (int64) of the uncentred frame (hop ``hop``, window ``win`` samples) whose centre ``k * hop + win / 2``
    is nearest each time (seconds on the WAV's timeline), clipped to ``[0, n_frames)``: a time in the track's last
    ``win / 2`` samples takes its last frame, as an analysis of the whole track would give it."""
    k = hop_frame(seconds, hop, offset=win / 2.0, sample_rate=sample_rate)
    return np.clip(k, 0, max(int(n_frames) - 1, 0))
