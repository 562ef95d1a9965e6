"""Feature rows of a chunk of frames, through the :class:`~pipeline.extractors.Extractor` contract, as the extract
stage stores them (pipeline/stages/extract.py): the same inputs, the network's output converted to the store's
dtype (``ex.dtype``), the same mask.

- ``frames`` extractors: the chunk's crops, ``ex.batch`` at a time; mask = the frame had a face.
- ``audio`` extractors (:class:`AudioRows`): rows at each frame's time on the track
  (:func:`~pipeline.io.timebase.track_seconds`), mask = the frame is heard within the track
  (:func:`~pipeline.io.timebase.audio_mask`); a frame past the end of a short track repeats the last row heard,
  a frame before a late track (or without audio) gets zeros (:func:`~pipeline.io.timebase.audio_source_rows`).
  The last row heard may lie in an earlier chunk: it is kept.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from pipeline.extractors import Extractor
from pipeline.io.timebase import audio_mask, audio_source_rows


def _to_store(ex: Extractor, y: torch.Tensor) -> np.ndarray:
    """Network output -> host rows in the store's dtype (converted on the device, as the stage's writer gets them)."""
    return y.detach().to(getattr(torch, ex.dtype)).cpu().numpy()


@torch.inference_mode()
def frame_rows(ex: Extractor, crops: np.ndarray) -> np.ndarray:
    """uint8 crops (k, S, S, 3) -> rows (k, *row_shape) in the store dtype, ``ex.batch`` crops per forward."""
    out = np.zeros((len(crops), *ex.row_shape), dtype=ex.dtype)
    for i in range(0, len(crops), ex.batch):
        out[i : i + ex.batch] = _to_store(ex, ex.forward(torch.from_numpy(np.ascontiguousarray(crops[i : i + ex.batch]))))
    return out


@torch.inference_mode()
def audio_inputs_rows(ex: Extractor, src: Any, times: np.ndarray) -> np.ndarray:
    """Rows (n, *row_shape) in the store dtype at ``times`` (n,) seconds on the track of ``src``, ``ex.batch`` at a
    time: ``audio_inputs``, ``collate`` (or float32 arrays stacked), ``forward``."""
    out = np.zeros((len(times), *ex.row_shape), dtype=ex.dtype)
    for i in range(0, len(times), ex.batch):
        part = ex.audio_inputs(src, times[i : i + ex.batch])
        if ex.collate is not None:
            x = ex.collate([part])
        else:
            x = torch.from_numpy(np.ascontiguousarray(part, dtype=np.float32))
        out[i : i + ex.batch] = _to_store(ex, ex.forward(x))
    return out


class AudioRows:
    """One audio extractor over one track, chunk after chunk of frames (see the module docstring). ``src``: the
    track (``read``, ``n_samples``, ``key``)."""

    def __init__(self, ex: Extractor, src: Any) -> None:
        self.ex, self.src = ex, src
        self.last = -1  # the latest frame heard so far (-1: none)
        self.last_row: np.ndarray | None = None

    def __call__(self, lo: int, track_times: np.ndarray, n_samples: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Rows (k, *row_shape) and mask (k,) of frames ``lo .. lo + k - 1`` at ``track_times`` (k,) seconds on the
        track's timeline; ``n_samples``: the track's length to place them against (default: ``src.n_samples``)."""
        k = len(track_times)
        mask = audio_mask(track_times, self.src.n_samples if n_samples is None else n_samples)
        local = audio_source_rows(mask)
        source = np.maximum(np.where(local >= 0, local + lo, -1), self.last)  # frame whose row each frame takes
        rows = np.zeros((k, *self.ex.row_shape), dtype=self.ex.dtype)
        earlier = (source >= 0) & (source < lo)  # past the end of the track: the last row heard, before this chunk
        if earlier.any():
            rows[earlier] = self.last_row
        own = source >= lo
        if own.any():
            uniq, inverse = np.unique(source[own], return_inverse=True)
            computed = audio_inputs_rows(self.ex, self.src, track_times[uniq - lo])
            rows[own] = computed[inverse.reshape(-1)]
            self.last, self.last_row = int(uniq[-1]), computed[-1]
        return rows, mask
