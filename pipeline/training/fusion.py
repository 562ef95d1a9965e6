"""Training the fusion model, the parts the ``train`` stage and ``bench train`` share: seeding, the model with its
optimiser, an epoch's batches from the feature bank, one training epoch with its timing, the validation score and
the digest of a run (what a resume checkpoint must match).

A training step: the batch's windows (``{modality: (B, T, *row_shape), "mask": (B, T), "labels": (B, T, 2)}``)
through the model under autocast, the CCC loss over real frames, gradients clipped to :data:`GRAD_CLIP`, one AdamW
step, one step of the learning-rate schedule.
"""

from __future__ import annotations

import hashlib
import json
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from pipeline.common.config import ModelConfig, TrainConfig, as_dict
from pipeline.common.devices import amp_dtype
from pipeline.nn import FusionModel
from pipeline.scoring.metrics import ccc_loss, ccc_va, json_float
from pipeline.training.bank import FeatureBank
from pipeline.training.windows import Windows, epoch_plan

GRAD_CLIP = 1.0  # max gradient norm; CCC loss spikes on near-constant batches
PREFETCH = 2  # batches gathered ahead when some rows live on the host (pinned or mapped)


def seed_everything(seed: int, device: torch.device) -> None:
    """Seed Python's, NumPy's and torch's global generators with ``seed``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cpu":
        # CPU kernels are deterministic with this; two runs with the same params give the same metrics
        torch.use_deterministic_algorithms(True, warn_only=True)


@dataclass
class Learner:
    """The model and what updates it: optimiser, learning-rate schedule (stepped once per batch), gradient scaler
    (active with float16 autocast only) and the autocast dtype (None: full precision)."""

    model: FusionModel
    optim: torch.optim.Optimizer
    sched: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    adtype: torch.dtype | None


def build_learner(model_cfg: ModelConfig, train_cfg: TrainConfig, row_shapes: Mapping[str, tuple[int, ...]],
                  device: torch.device, lr_at: Callable[[int], float]) -> Learner:
    """A freshly initialised model (from torch's global generator) for rows of ``row_shapes`` on ``device``, AdamW
    at ``train.lr`` times ``lr_at(step)``."""
    model = FusionModel(model_cfg, row_shapes, max_len=train_cfg.window).to(device)
    optim = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_at)
    adtype = amp_dtype(device)
    scaler = torch.amp.GradScaler("cuda", enabled=adtype == torch.float16)
    return Learner(model, optim, sched, scaler, adtype)


def epoch_batches(bank: FeatureBank, lengths: Mapping[str, int], cfg: TrainConfig, epoch_seed: Sequence[int],
                  order_gen: torch.Generator) -> list[Windows]:
    """The training batches of one epoch over the trials of ``lengths`` ({trial: frames}), as coordinates in
    ``bank``: :func:`~pipeline.training.windows.epoch_plan` with the window, hop and batch of ``cfg``."""
    plan = epoch_plan(lengths, bank.index, cfg.window, cfg.hop, cfg.batch, epoch_seed, order_gen)
    return [bank.windows(trial, start, cfg.window) for trial, start in plan]


@dataclass
class StepTimes:
    """Where training time went: blocked on the next batch versus the whole epoch's training loop."""

    wait_s: float = 0.0
    step_s: float = 0.0
    steps: int = 0
    windows: int = 0
    epochs: list[float] = field(default_factory=list)

    @property
    def wait_share(self) -> float:
        return self.wait_s / self.step_s if self.step_s else float("nan")


def train_epoch(learner: Learner, batches: Iterable[dict[str, torch.Tensor]], times: StepTimes) -> float:
    """One pass over ``batches`` (each ``{modality: (B, T, ...), "mask": (B, T), "labels": (B, T, 2)}``, consumed:
    mask and labels are popped); returns the mean loss. The loss stays on the device until the end (no
    synchronisation per step)."""
    model, optim, scaler = learner.model, learner.optim, learner.scaler
    model.train()
    dev = next(model.parameters()).device
    total = torch.zeros((), device=dev)
    n = 0
    t_start = time.perf_counter()
    it = iter(batches)
    while True:
        t0 = time.perf_counter()
        batch = next(it, None)
        times.wait_s += time.perf_counter() - t0
        if batch is None:
            break
        mask, y = batch.pop("mask"), batch.pop("labels")
        with torch.autocast(dev.type, dtype=learner.adtype, enabled=learner.adtype is not None):
            pred = model(batch, mask)  # (B, T, 2)
        loss = ccc_loss(pred.float(), y, mask)
        optim.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.unscale_(optim)
        torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
        scaler.step(optim)
        scaler.update()
        learner.sched.step()
        total += loss.detach()
        n += 1
        times.windows += len(y)
    mean = float(total) / n if n else float("nan")  # one synchronisation per epoch
    times.steps += n
    times.step_s += time.perf_counter() - t_start
    return mean


def score(preds: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """Challenge-protocol CCC over all frames concatenated, plus per trial; NaN written as null. ``preds`` and
    ``labels``: {trial: (N, 2)} (valence, arousal)."""
    trials = sorted(preds)
    overall = ccc_va(np.concatenate([preds[t] for t in trials]), np.concatenate([labels[t] for t in trials]))
    per_trial = {t: {k: json_float(v) for k, v in ccc_va(preds[t], labels[t]).items()} for t in trials}
    return {**{k: json_float(v) for k, v in overall.items()}, "per_trial": per_trial}


def run_fingerprint(fold: int, model_cfg: ModelConfig, train_cfg: TrainConfig, trials: list[list[str]],
                    bank: FeatureBank, labels: Mapping[str, np.ndarray]) -> str:
    """Digest of everything that decides a training run: a resume checkpoint with another one is not resumed."""
    h = hashlib.sha256()
    h.update(json.dumps({"fold": fold, "model": as_dict(model_cfg), "train": as_dict(train_cfg), "trials": trials,
                         "stores": {m: bank.attrs[m].get("fingerprint") for m in bank.modalities}},
                        sort_keys=True).encode())
    for t in sorted(labels):
        h.update(np.ascontiguousarray(labels[t], dtype=np.float32).tobytes())
    return h.hexdigest()
