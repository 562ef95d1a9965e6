"""Windows for the temporal model: where they start in a trial, the training plan of an epoch, and whole-trial
inference with overlapping windows averaged per frame (DESIGN.md "Model").

A window is ``window`` consecutive frames of one trial; a trial shorter than that gives one window whose frames
past the trial's end are padding (masked out). Batches are gathered from a :class:`~pipeline.training.bank.FeatureBank`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch

from pipeline.training.bank import FeatureBank
from pipeline.training.normalise import Normaliser

INFER_BATCH = 32  # windows per inference batch (no gradients: larger than a training batch)


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


def inference_windows(bank: FeatureBank, trials: Sequence[str], window: int, hop: int) -> tuple[np.ndarray, np.ndarray]:
    """Every window of whole-trial inference over ``trials``: (trial index in the bank, start row) arrays, windows
    every ``hop`` frames plus one ending on each trial's last frame."""
    tr, st = [], []
    for t in trials:
        i = bank.index[t]
        s = window_starts(int(bank.lengths[i]), window, hop)
        tr.extend([i] * len(s))
        st.extend(s)
    return np.asarray(tr, dtype=np.int64), np.asarray(st, dtype=np.int64)


@torch.no_grad()
def predict(
    model: torch.nn.Module,
    bank: FeatureBank,
    norm: Normaliser,
    trials: Sequence[str],
    window: int,
    hop: int,
    zero_missing: bool,
    batch: int = INFER_BATCH,
    autocast_dtype: torch.dtype | None = None,
) -> dict[str, np.ndarray]:
    """Whole-trial predictions ``{trial: (N, 2) float32}``: windows of all ``trials`` batched together, each
    frame's outputs averaged over the windows that contain it. ``model`` must be in eval mode (outputs of a window
    then do not depend on the other windows of its batch)."""
    dev = bank.device
    total = torch.zeros((bank.n_rows, 2), dtype=torch.float64, device=dev)
    count = torch.zeros((bank.n_rows,), dtype=torch.float64, device=dev)
    trial_idx, starts = inference_windows(bank, trials, window, hop)
    for i in range(0, len(starts), batch):
        w = bank.windows(trial_idx[i : i + batch], starts[i : i + batch], window)
        inputs = bank.batch(w, norm, zero_missing, with_labels=False)
        mask = inputs.pop("mask")
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(inputs, mask)  # (B, T, 2)
        rows = w.rows.to(dev)[mask]  # (K,) bank rows of the real frames
        total.index_add_(0, rows, out[mask].double())
        count.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float64))
    mean = (total / count.clamp_min(1.0)[:, None]).float().cpu().numpy()
    return {t: mean[bank.offsets[bank.index[t]] : bank.offsets[bank.index[t]] + bank.lengths[bank.index[t]]] for t in trials}
