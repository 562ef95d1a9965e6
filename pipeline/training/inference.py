"""Whole-trial inference (validation in ``train``, the test trials in ``predict``): the windows of every trial
(pipeline/training/windows.py) batched together from the feature bank, each frame's outputs averaged over the
windows that contain it (DESIGN.md "Model")."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from pipeline.training.bank import FeatureBank
from pipeline.training.normalise import Normaliser
from pipeline.training.windows import inference_windows

INFER_BATCH = 32  # windows per inference batch (no gradients: larger than a training batch)


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
    trial_idx, starts = inference_windows(bank.lengths_of(trials), bank.index, window, hop)
    for i in range(0, len(starts), batch):
        w = bank.windows(trial_idx[i : i + batch], starts[i : i + batch], window)
        inputs = bank.batch(w, norm, zero_missing, with_labels=False)
        mask = inputs.pop("mask")
        with torch.autocast(dev.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(inputs, mask)  # (B, T, 2)
        rows = w.rows.to(dev)[mask]  # (K,) bank rows of the real frames
        total.index_add_(0, rows, out[mask].double())
        count.index_add_(0, rows, torch.ones_like(rows, dtype=torch.float64))
    mean = (total / count.clamp_min(1.0)[:, None]).float().cpu().numpy()  # (R, 2) per bank row
    return {t: mean[bank.offsets[bank.index[t]] : bank.offsets[bank.index[t]] + bank.lengths[bank.index[t]]] for t in trials}
