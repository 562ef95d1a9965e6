"""Fine-tuning :class:`~pipeline.nn.backbone.BackboneNet` on AffectNet: the crops and their batches, the optimiser,
the two losses, one training step and one epoch, validation, and the serialised best files. The ``backbone`` stage
runs them; ``bench backbone`` times them.

Every random draw is a function of (seed, epoch, step): the batch order of :func:`epoch_batches` and the
augmentation of :func:`train_step` (:func:`~pipeline.training.augment.step_generator`), so a resumed run on CPU ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import io
import os
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.common.config import BackboneConfig
from pipeline.extractors.iresnet import preprocess
from pipeline.faces.stills import load_crop
from pipeline.io.affectnet import AffectNetSplit
from pipeline.nn.backbone import BackboneNet, cpu_state
from pipeline.scoring.metrics import accuracy, ccc_loss, ccc_va, json_float, macro_f1
from pipeline.training.augment import augment, step_generator
from pipeline.training.schedule import lr_factor

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]  # (inputs, expression int64 (B,), va float32 (B, 2))


# ---------------------------------------------------------------------------------------------------- data
class Crops:
    """A split's face crops at ``size`` with their labels. Decoded once into memory (threads) when they take at
    most ``cache_gb``; otherwise decoded per batch by a DataLoader with ``workers`` processes."""

    def __init__(self, split: AffectNetSplit, size: int, cache_gb: float, workers: int, pin: bool) -> None:
        self.split, self.size, self.workers, self.pin = split, size, workers, pin
        self.expression = torch.from_numpy(split.expression)
        self.va = torch.from_numpy(split.va)
        self.cache: torch.Tensor | None = None
        if len(split) * size * size * 3 <= cache_gb * 2**30:
            self.cache = torch.from_numpy(decode_all(split, size))

    def __len__(self) -> int:
        return len(self.split)

    def batches(self, index_batches: list[np.ndarray]) -> Iterator[Batch]:
        """(frames uint8 (B, S, S, 3), expression int64 (B,), va float32 (B, 2)) per index batch, on the CPU."""
        if self.cache is not None:
            for idx in index_batches:
                i = torch.from_numpy(idx)
                yield self.cache[i], self.expression[i], self.va[i]
            return
        loader = torch.utils.data.DataLoader(
            _Decoded(self.split, self.size), batch_sampler=[b.tolist() for b in index_batches],
            num_workers=self.workers, pin_memory=self.pin,
        )
        for frames, idx in loader:
            yield frames, self.expression[idx], self.va[idx]


class _Decoded(torch.utils.data.Dataset):
    def __init__(self, split: AffectNetSplit, size: int) -> None:
        self.split, self.size = split, size

    def __len__(self) -> int:
        return len(self.split)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        return torch.from_numpy(load_crop(self.split, i, self.size)), i


def decode_all(split: AffectNetSplit, size: int) -> np.ndarray:
    """uint8 (N, size, size, 3): every crop of ``split``, decoded by a thread per core (PIL and OpenCV release
    the interpreter lock)."""
    out = np.empty((len(split), size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = load_crop(split, i, size)

    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        list(tqdm(pool.map(one, range(len(split))), total=len(split), desc=f"decode {split.split}", unit="image",
                  leave=False, disable=len(split) < 2000))
    return out


def epoch_batches(n: int, batch: int, seed: int, epoch: int) -> list[np.ndarray]:
    """A seeded permutation of ``n`` images cut into full batches (a short last batch is dropped: BN and the
    batch CCC want several images); one batch of all when ``n < batch``."""
    order = np.random.default_rng([seed, epoch]).permutation(n)
    if n < batch:
        return [order]
    return [order[i : i + batch] for i in range(0, n - batch + 1, batch)]


def index_batches(n: int, batch: int) -> list[np.ndarray]:
    """0..n-1 in order, in batches of ``batch`` (the last one shorter)."""
    return [np.arange(i, min(i + batch, n)) for i in range(0, n, batch)]


def train_batches(crops: Crops, bank: torch.Tensor | None, batches: list[np.ndarray], dev: torch.device) -> Iterable[Batch]:
    """One epoch's training batches in the order of ``batches``: uint8 frames from ``crops``, or the frozen parts'
    output (B, C, h, w) gathered from ``bank`` (:func:`trunk_bank`) on ``dev``."""
    if bank is None:
        return crops.batches(batches)
    return ((bank[torch.from_numpy(idx).to(dev)], crops.expression[idx], crops.va[idx]) for idx in batches)


# ------------------------------------------------------------------------------------------------ training
def class_weights(counts: np.ndarray, balance: bool) -> torch.Tensor | None:
    """Inverse-frequency cross-entropy weights, mean 1 over the classes present (absent classes get 0)."""
    if not balance:
        return None
    counts = np.asarray(counts, dtype=np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return torch.tensor(w / w[counts > 0].mean(), dtype=torch.float32)


def make_optimizer(model: nn.Module, cfg: BackboneConfig) -> torch.optim.AdamW:
    """AdamW over the trainable parameters; no weight decay on BN, PReLU and biases (1-D tensors)."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    return torch.optim.AdamW(
        [
            {"params": [p for p in trainable if p.ndim > 1], "weight_decay": cfg.weight_decay},
            {"params": [p for p in trainable if p.ndim <= 1], "weight_decay": 0.0},
        ],
        lr=cfg.lr,
    )


@dataclass(frozen=True)
class StepPlan:
    """The run's optimiser steps: ``per_epoch`` full batches, the first ``warmup`` steps warm the learning rate up,
    cosine decay ends at step ``total``."""

    per_epoch: int
    warmup: int
    total: int

    @classmethod
    def of(cls, n_train: int, cfg: BackboneConfig) -> StepPlan:
        """The plan for ``n_train`` training images under ``cfg`` (batch, epochs, warmup_epochs)."""
        per_epoch = len(epoch_batches(n_train, cfg.batch, cfg.seed, 0))
        return cls(per_epoch, round(cfg.warmup_epochs * per_epoch), cfg.epochs * per_epoch)

    def lr(self, peak: float, epoch: int, k: int) -> float:
        """The learning rate of step ``k`` of ``epoch``, for a peak of ``peak``."""
        return peak * lr_factor(epoch * self.per_epoch + k, self.warmup, self.total)


def losses(
    logits: torch.Tensor, va: torch.Tensor, expression: torch.Tensor, va_true: torch.Tensor,
    weight: torch.Tensor | None, cfg: BackboneConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, cross-entropy, CCC loss) for logits (B, 8), va (B, 2) against int64 (B,) and (B, 2) labels."""
    ce = F.cross_entropy(logits.float(), expression, weight=weight)
    cl = ccc_loss(va.float(), va_true)  # (1 - CCC_v) + (1 - CCC_a) over the batch
    return cfg.expression_weight * ce + cfg.va_weight * cl, ce, cl


def train_step(
    model: BackboneNet, optim: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: Batch, gen: torch.Generator,
    lr: float, cfg: BackboneConfig, weight: torch.Tensor | None, dev: torch.device, adtype: torch.dtype | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One optimiser step on an (inputs, expression, va) batch; returns the detached (total, ce, ccc) losses.
    ``inputs``: uint8 frames (B, S, S, 3), augmented when ``cfg.augment``; or, from a :func:`trunk_bank`, the
    frozen parts' float output (B, C, h, w), which then go straight to :meth:`BackboneNet.rest`."""
    inputs, expression, va_true = (t.to(dev, non_blocking=True) for t in batch)
    with torch.autocast(dev.type, dtype=adtype, enabled=adtype is not None):
        if inputs.dtype == torch.uint8:
            x = augment(inputs, gen) if cfg.augment else preprocess(inputs)
            logits, va = model(x.contiguous(memory_format=torch.channels_last))
        else:
            logits, va = model.rest(inputs)
    total, ce, cl = losses(logits, va, expression, va_true, weight, cfg)
    for g in optim.param_groups:
        g["lr"] = lr
    optim.zero_grad(set_to_none=True)
    scaler.scale(total).backward()
    scaler.step(optim)
    scaler.update()
    return total.detach(), ce.detach(), cl.detach()


def make_scaler(adtype: torch.dtype | None) -> torch.amp.GradScaler:
    """The gradient scaler for autocast dtype ``adtype``: active for float16 only (bfloat16 and float32 need none)."""
    return torch.amp.GradScaler("cuda", enabled=adtype == torch.float16)


@dataclass
class Trainer:
    """What every training step uses: the network (on ``dev``), its optimiser and gradient scaler, the
    cross-entropy class weights (on ``dev``; None: unweighted) and the autocast dtype (None: float32)."""

    model: BackboneNet
    optim: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    weight: torch.Tensor | None
    dev: torch.device
    adtype: torch.dtype | None

    @classmethod
    def build(
        cls, model: BackboneNet, cfg: BackboneConfig, class_counts: np.ndarray, dev: torch.device,
        adtype: torch.dtype | None,
    ) -> Trainer:
        """Move ``model`` to ``dev`` (channels-last) and make its optimiser, scaler and class weights (from the
        training split's int64 (8,) ``class_counts``)."""
        model.to(dev).to(memory_format=torch.channels_last)
        weight = class_weights(class_counts, cfg.balance)
        return cls(model, make_optimizer(model, cfg), make_scaler(adtype), weight.to(dev) if weight is not None else None,
                   dev, adtype)


@dataclass
class EpochStats:
    """One epoch's training: mean (total, ce, ccc) losses (3,), the last step's learning rate, the seconds spent in
    :func:`train_step` and the images it saw."""

    mean: torch.Tensor
    lr: float
    step_s: float
    images: int


def train_epoch(
    tr: Trainer, source: Iterable[Batch], n_batches: int, epoch: int, plan: StepPlan, cfg: BackboneConfig
) -> EpochStats:
    """:func:`train_step` over the ``n_batches`` batches of ``source`` (:func:`train_batches`), each with its
    scheduled learning rate and the augmentation drawn for (seed, epoch, step)."""
    tr.model.train()
    sums, lr, step_s, images = torch.zeros(3), cfg.lr, 0.0, 0
    bar = tqdm(source, total=n_batches, desc=f"backbone epoch {epoch}", unit="batch", leave=False)
    for k, batch in enumerate(bar):
        lr = plan.lr(cfg.lr, epoch, k)
        t0 = time.perf_counter()
        out = train_step(tr.model, tr.optim, tr.scaler, batch, step_generator(cfg.seed, epoch, k), lr, cfg, tr.weight,
                         tr.dev, tr.adtype)
        sums += torch.stack(out).float().cpu()  # one sync per step: the loop is compute-bound, not launch-bound
        step_s += time.perf_counter() - t0
        images += len(batch[0])
    return EpochStats(sums / max(1, n_batches), lr, step_s, images)


# ---------------------------------------------------------------------------------------------- evaluation
@torch.no_grad()  # not inference_mode: training backpropagates through what follows these tensors
def trunk_bank(
    model: BackboneNet, crops: Crops, batch: int, dev: torch.device, adtype: torch.dtype | None, cache_gb: float
) -> torch.Tensor | None:
    """The frozen parts' output for every image without augmentation, (N, C, h, w) on ``dev``: they cannot
    change during the run, so validation (and training, when ``augment`` is off) computes them once (with layer3
    frozen at 48 px, about 90 % of a forward pass). None when nothing is frozen or it would exceed ``cache_gb``."""
    if model.n_frozen == 0:
        return None
    model.eval()
    out = None
    batches = index_batches(len(crops), batch)
    for idx, (frames, _, _) in zip(batches, crops.batches(batches)):
        with torch.autocast(dev.type, dtype=adtype, enabled=adtype is not None):
            h = model.trunk(preprocess(frames.to(dev, non_blocking=True)).contiguous(memory_format=torch.channels_last))
        if out is None:
            if len(crops) * h[0].numel() * h.element_size() > cache_gb * 2**30:
                return None
            out = torch.empty((len(crops), *h.shape[1:]), dtype=h.dtype, device=dev)
        out[idx[0] : idx[-1] + 1] = h
    return out


@torch.inference_mode()
def evaluate(
    model: BackboneNet, crops: Crops, batch: int, dev: torch.device, adtype: torch.dtype | None,
    bank: torch.Tensor | None = None,
) -> dict[str, Any]:
    """Accuracy and macro F1 over the 8 expressions, CCC valence / arousal / mean over all images at once;
    from the frozen parts' outputs when ``bank`` (:func:`trunk_bank`) is given."""
    model.eval()
    batches = index_batches(len(crops), batch)
    logits, va = [], []
    frames_of = None if bank is not None else crops.batches(batches)
    for idx in batches:
        with torch.autocast(dev.type, dtype=adtype, enabled=adtype is not None):
            if frames_of is None:
                lg, v = model.rest(bank[idx[0] : idx[-1] + 1])
            else:
                frames = next(frames_of)[0]
                lg, v = model(preprocess(frames.to(dev, non_blocking=True)).contiguous(memory_format=torch.channels_last))
        logits.append(lg.float().cpu())
        va.append(v.float().cpu())
    pred = torch.cat(logits).argmax(1).numpy()
    true = crops.expression.numpy()
    out = {"accuracy": accuracy(pred, true), "macro_f1": macro_f1(pred, true)}
    out.update(ccc_va(torch.cat(va).numpy(), crops.va.numpy()))
    return {k: json_float(v) for k, v in out.items()}


# --------------------------------------------------------------------------------------------------- files
def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def best_bytes(model: BackboneNet) -> dict[str, bytes]:
    """The serialised best files: ``backbone.pth`` (the IResNet's own state_dict: arcface_torch names, nothing
    else) and ``heads.pth`` (the two heads)."""
    return {
        "backbone.pth": _torch_bytes(cpu_state(model.net.state_dict())),
        "heads.pth": _torch_bytes(cpu_state(model.heads_state())),
    }
