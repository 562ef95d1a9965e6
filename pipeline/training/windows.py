"""Window plans for the temporal model: where windows start in a trial, the training plan of an epoch, the windows
of whole-trial inference, and their bank coordinates (DESIGN.md "Model"). Planning only: the feature bank
(pipeline/training/bank.py) gathers the rows, pipeline/training/inference.py runs the model over them.

A window is ``window`` consecutive frames of one trial; a trial shorter than that gives one window whose frames
past the trial's end are padding (masked out). Trials are named by their index in bank order (the trials sorted by
name, concatenated: trial ``i`` occupies bank rows ``offsets[i] .. offsets[i] + lengths[i]``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch


def window_starts(n: int, window: int, hop: int, offset: int = 0) -> list[int]:
    """Start rows of the windows that cover a trial of ``n`` frames.

    Windows start at ``offset, offset + hop, ...``; a window at 0 and one ending at the last frame are added when
    missing, so every frame is covered whatever ``offset``. A trial of at most ``window`` frames is one window at 0.
    """
    if n <= window:
        return [0]
    last = n - window
    starts = set(range(min(offset, last), last + 1, hop))
    starts.update((0, last))
    return sorted(starts)


def epoch_windows(lengths: Mapping[str, int], window: int, hop: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """The training windows of one epoch: per trial (in name order), a fresh random offset in ``[0, hop)``, so the
    cut points move from epoch to epoch (Su Zhang's windows are fixed; resampling sees more distinct windows for
    the same cost)."""
    out: list[tuple[str, int]] = []
    for trial in sorted(lengths):
        offset = int(rng.integers(0, hop)) if hop > 1 else 0
        out.extend((trial, s) for s in window_starts(lengths[trial], window, hop, offset))
    return out


def epoch_plan(
    lengths: Mapping[str, int],
    index: Mapping[str, int],
    window: int,
    hop: int,
    batch: int,
    epoch_seed: Sequence[int],
    order_gen: torch.Generator,
) -> list[tuple[np.ndarray, np.ndarray]]:
    """The training batches of one epoch over the trials of ``lengths`` ({trial: frames}): :func:`epoch_windows`
    cut with ``np.random.default_rng(epoch_seed)``, shuffled as a ``DataLoader(shuffle=True, generator=order_gen)``
    would, then cut into batches of ``batch`` windows. Each batch is (trial index in bank order (B,) int64, start
    row within the trial (B,) int64); ``index`` maps a trial name to its bank index."""
    items = epoch_windows(lengths, window, hop, np.random.default_rng(list(epoch_seed)))
    trial = np.array([index[t] for t, _ in items], dtype=np.int64)
    start = np.array([s for _, s in items], dtype=np.int64)
    torch.empty((), dtype=torch.int64).random_(generator=order_gen)  # a DataLoader iterator's base seed draw
    order = np.array(list(torch.utils.data.RandomSampler(range(len(items)), generator=order_gen)), dtype=np.int64)
    return [(trial[order[i : i + batch]], start[order[i : i + batch]]) for i in range(0, len(order), batch)]


def inference_windows(
    lengths: Mapping[str, int], index: Mapping[str, int], window: int, hop: int
) -> tuple[np.ndarray, np.ndarray]:
    """Every window of whole-trial inference over the trials of ``lengths`` ({trial: frames}, in that order): (trial
    index in bank order (W,) int64, start row (W,) int64), windows every ``hop`` frames plus one ending on each
    trial's last frame."""
    tr: list[int] = []
    st: list[int] = []
    for t, n in lengths.items():
        s = window_starts(int(n), window, hop)
        tr.extend([index[t]] * len(s))
        st.extend(s)
    return np.asarray(tr, dtype=np.int64), np.asarray(st, dtype=np.int64)


@dataclass(frozen=True)
class Windows:
    """Bank coordinates of ``B`` windows of ``T`` frames (CPU tensors): rows to read and which are real frames."""

    trial: torch.Tensor  # (B,) int64 trial index (bank order)
    rows: torch.Tensor  # (B, T) int64 bank row of each frame (padding repeats the trial's last row)
    valid: torch.Tensor  # (B, T) bool, False on padding past the trial's end

    def __len__(self) -> int:
        return len(self.trial)


def window_rows(
    offsets: torch.Tensor, lengths: torch.Tensor, trial: np.ndarray, start: np.ndarray, length: int
) -> Windows:
    """Coordinates of windows ``(trial[b], start[b])`` (bank trial index, first row in the trial) of ``length``
    frames, for a bank whose trials start at rows ``offsets`` (n_trials,) int64 and have ``lengths`` (n_trials,)
    int64 rows: one vectorised computation, no per-window Python."""
    tr = torch.as_tensor(np.asarray(trial, dtype=np.int64))
    st = torch.as_tensor(np.asarray(start, dtype=np.int64))
    pos = st[:, None] + torch.arange(length)[None, :]  # (B, T) row within the trial
    n = lengths[tr][:, None]  # (B, 1)
    valid = pos < n
    rows = offsets[tr][:, None] + torch.minimum(pos, n - 1)  # (B, T) bank rows, padding clamped
    return Windows(tr, rows, valid)
