"""Windowed access to a prepared 16 kHz mono track, shared by the audio extractors.

An extractor asks for sample ranges around the frames of one batch, never for the whole track, so memory stays
bounded by the batch however long the video is. Reads outside the track return zeros (silence): that is how the
windows of the first and last frames are padded.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.common.errors import InputError
from pipeline.io.timebase import SAMPLE_RATE


class AudioSource:
    """A mono float32 track at :data:`~pipeline.io.timebase.SAMPLE_RATE`: a WAV file (read by range) or an array."""

    def __init__(self, path: str | Path | None = None, samples: np.ndarray | None = None, key: str = "") -> None:
        self.key = key or str(path)  # identifies the track (video) in caches
        self._file: sf.SoundFile | None = None
        self._samples = None
        if samples is not None:
            self._samples = np.asarray(samples, dtype=np.float32)
            self.n_samples = len(self._samples)
        elif path is not None:
            try:
                self._file = sf.SoundFile(str(path))
            except (RuntimeError, OSError) as e:
                raise InputError(f"{path}: cannot read audio: {e}") from None
            if self._file.samplerate != SAMPLE_RATE or self._file.channels != 1:
                raise InputError(f"{path}: expected {SAMPLE_RATE} Hz mono, got {self._file.samplerate} Hz x {self._file.channels}")
            self.n_samples = self._file.frames
        else:  # a video without audio
            self.n_samples = 0

    @classmethod
    def silent(cls, key: str = "") -> "AudioSource":
        return cls(key=key)

    def read(self, start: int, stop: int) -> np.ndarray:
        """float32 samples ``[start, stop)``, zeros where the range lies outside the track."""
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        lo, hi = max(start, 0), min(stop, self.n_samples)
        if hi > lo:
            if self._samples is not None:
                out[lo - start : hi - start] = self._samples[lo:hi]
            else:
                assert self._file is not None
                self._file.seek(lo)
                out[lo - start : hi - start] = self._file.read(hi - lo, dtype="float32", always_2d=False)
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def runs(frames: np.ndarray, span: int, max_len: int) -> list[tuple[int, int, np.ndarray]]:
    """Group sorted unique analysis-frame indices into runs ``(lo, hi, members)`` that are cheaper to analyse as one
    contiguous range: a new run starts at a gap wider than ``span`` (nothing shared) or when the range would exceed
    ``max_len`` frames (bounded memory). ``hi`` is the last member + ``span``."""
    out: list[tuple[int, int, np.ndarray]] = []
    if not len(frames):
        return out
    start = 0
    for i in range(1, len(frames) + 1):
        if i == len(frames) or frames[i] - frames[i - 1] > span or frames[i] + span - frames[start] > max_len:
            out.append((int(frames[start]), int(frames[i - 1]) + span, frames[start:i]))
            start = i
    return out
