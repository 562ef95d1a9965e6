"""``backbone``: IResNet-50 fine-tuned on AffectNet, the paper's visual backbone (section 3.1: "we trained
IResNet-50 using the AffectNet dataset and obtained a 512-dimensional visual feature vector").

Starts from an arcface_torch ``backbone.pth`` (``backbone.init``) or, without one, from the extractor's own random
init (said on every run, in meta.json and in the metrics). Two heads on the global average of the ``bn2`` map (the
map ``extract@iresnet`` stores): 8 expressions (cross-entropy, optionally class-balanced) and valence-arousal
(tanh, the paper's CCC loss), weighted by ``backbone.expression_weight`` / ``va_weight``. Input: ``backbone.size``
or ``frames.size`` (48 px, the paper's frames). Batched augmentation on the device (flip, small affine, colour
jitter), AdamW with linear warm-up and cosine decay, mixed precision on GPU. ``backbone.freeze`` trains only what
comes after a part (the demo's CPU budget); ``none`` fine-tunes everything.

Writes (paths from dvc.yaml through the CLI)::

    <out>/backbone.pth   the best epoch by validation CCC mean, arcface_torch key layout (loads strictly)
    <out>/heads.pth      that epoch's expression and valence-arousal heads
    <out>/meta.json      written last: start weights, data, params, best epoch, validation metrics, digests
    <out>/last.pt        resume state after each epoch, removed when the run completes
    <metrics_file>       best epoch: accuracy, macro F1, CCC valence / arousal / mean on the validation split
    <plots_dir>/         dvclive per-epoch curves (train/loss, train/ce, train/ccc_loss, val/*, lr)

Resuming: ``last.pt`` carries the model, optimiser, scaler, history and a fingerprint of everything that decides
the result (params, start weights, input size, both splits' labels). A re-run with the same fingerprint continues
after the last complete epoch; every random draw is a function of (seed, epoch, step), so on CPU a resumed run ends
with the same weights as an uninterrupted one.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from pipeline.common import provenance
from pipeline.common.config import BackboneConfig, as_dict
from pipeline.common.devices import amp_dtype, resolve_device
from pipeline.common.errors import InputError
from pipeline.common.outputs import write_atomic
from pipeline.extractors import iresnet as R
from pipeline.extractors import weights as W
from pipeline.extractors.iresnet import (
    CHANNELS,
    CONTRACT,
    IResNet,
    iresnet50,
    preprocess,
    random_init,
)
from pipeline.io import affectnet as A
from pipeline.io.affectnet import EXPRESSIONS, N_CLASSES, AffectNetSplit, read_split
from pipeline.scoring.metrics import accuracy, ccc_loss, ccc_va, json_float, macro_f1
from pipeline.training import resume
from pipeline.training.live import write_curves
from pipeline.training.schedule import lr_factor

RESUME_FORMAT = "va-pipeline-backbone-resume/1"
RANDOM_START = (
    "WARNING: backbone: backbone.init is null: fine-tuning starts from a RANDOMLY INITIALISED IResNet-50 "
    f"(seed {W.SEED}), not from ArcFace weights; meta.json and the metrics say init: {W.RANDOM_INIT}"
)
META_FORMAT = "va-pipeline-backbone/1"
# parts of IResNet in forward order; freeze = "layer3" freezes the stem and layer1..3 (and their BN statistics)
PARTS = ("stem", "layer1", "layer2", "layer3", "layer4")
# augmentation ranges (standard for face crops; no hue jitter: the demo's valence shows in skin tint)
FLIP_P = 0.5
ROTATE_DEG = 10.0
SCALE = (0.9, 1.1)
SHIFT = 0.06  # fraction of the side
JITTER = 0.2  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]


# ---------------------------------------------------------------------------------------------------- model
def part_modules(net: IResNet, part: str) -> list[nn.Module]:
    return [net.conv1, net.bn1, net.prelu] if part == "stem" else [getattr(net, part)]


class BackboneNet(nn.Module):
    """IResNet-50 with two heads on its pooled ``bn2`` map: (B, 3, S, S) normalised RGB -> expression logits
    (B, 8) and valence-arousal (B, 2) in (-1, 1). Parts up to ``freeze`` get no gradient and keep their BN
    statistics (eval mode); ``fc`` / ``features`` (ArcFace's embedding, 112 px only) are not used and stay as
    loaded."""

    def __init__(self, net: IResNet, freeze: str = "none") -> None:
        super().__init__()
        self.net = net
        self.expression = nn.Linear(CHANNELS, N_CLASSES)
        self.va = nn.Linear(CHANNELS, 2)
        self.n_frozen = 0 if freeze == "none" else PARTS.index(freeze) + 1
        self.frozen = [m for part in PARTS[: self.n_frozen] for m in part_modules(net, part)]
        for m in [*self.frozen, net.fc, net.features]:
            for p in m.parameters():
                p.requires_grad_(False)
        # state that never changes during fine-tuning: rebuilt from the start weights on resume, not saved
        names = {id(m): n for n, m in net.named_children()}
        self.fixed_prefixes = tuple(f"net.{names[id(m)]}." for m in [*self.frozen, net.fc, net.features])

    def train(self, mode: bool = True) -> "BackboneNet":
        super().train(mode)
        for m in self.frozen:
            m.eval()
        return self

    def parts(self) -> list:
        """The network's parts in forward order, as ``IResNet.forward_map`` runs them, then ``bn2``."""
        net = self.net
        return [lambda x: net.prelu(net.bn1(net.conv1(x))), net.layer1, net.layer2, net.layer3, net.layer4, net.bn2]

    def trunk(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen parts: (B, 3, S, S) -> their output map (the input itself when nothing is frozen)."""
        for f in self.parts()[: self.n_frozen]:
            x = f(x)
        return x

    def rest(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The trainable parts and the heads: trunk output -> (logits (B, 8), valence-arousal (B, 2))."""
        for f in self.parts()[self.n_frozen :]:
            h = f(h)
        z = h.mean(dim=(2, 3))  # (B, 512, h, w) -> (B, 512), as extract's `pooled` rows
        return self.expression(z), torch.tanh(self.va(z))

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.rest(self.trunk(x))

    def heads_state(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.state_dict().items() if not k.startswith("net.")}

    def changing_state(self) -> dict[str, torch.Tensor]:
        """The state fine-tuning can change (trainable parts, their BN statistics, the heads), on the CPU."""
        return _cpu_state({k: v for k, v in self.state_dict().items() if not k.startswith(self.fixed_prefixes)})

    def load_changing_state(self, state: dict[str, torch.Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        wrong = unexpected + [k for k in missing if not k.startswith(self.fixed_prefixes)]
        if wrong:
            raise RuntimeError(f"resume state does not fit the network: {wrong[:3]}")


def build_model(cfg: BackboneConfig) -> tuple[BackboneNet, str]:
    """The network at its starting point and the start weights' digest (or ``random-init``, loudly)."""
    net = iresnet50()
    digest = W.load_or_random_init(net, cfg.init, cfg.sha256, "backbone.init", init=random_init, warning=RANDOM_START)
    torch.manual_seed(cfg.seed)  # the heads
    return BackboneNet(net, cfg.freeze), digest


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


# ------------------------------------------------------------------------------------------------- batches
def step_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by ``key`` (seed, epoch, step): the draws do not depend on what ran before."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def augment(frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, S, S, 3) uint8 RGB on any device -> (B, 3, S, S) float, augmented and normalised as
    :data:`~pipeline.extractors.iresnet.CONTRACT`. Per image: horizontal flip, rotation, scale and shift in one
    bilinear warp (black beyond the crop, as alignment pads), then brightness, contrast and saturation."""
    B, dev = frames.shape[0], frames.device
    x = frames.permute(0, 3, 1, 2).float() * CONTRACT.scale  # (B, S, S, 3) -> (B, 3, S, S) in [0, 1]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(B, generator=gen)

    flip = torch.where(torch.rand(B, generator=gen) < FLIP_P, -1.0, 1.0)
    angle = uniform(-ROTATE_DEG, ROTATE_DEG) * math.pi / 180
    scale = uniform(*SCALE)
    shift = uniform(-SHIFT, SHIFT), uniform(-SHIFT, SHIFT)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta maps output to input coordinates in [-1, 1]; the flip mirrors the output's x axis
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, 2 * shift[0]], 1), torch.stack([sin * flip, cos, 2 * shift[1]], 1)], 1
    ).to(dev)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    factors = torch.stack([uniform(1 - JITTER, 1 + JITTER) for _ in range(3)], 1).to(dev)  # (B, 3)
    b, c, s = (factors[:, i].view(B, 1, 1, 1) for i in range(3))
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # (B, 1, S, S) luma
    x = x * b
    x = (x - gray.mean(dim=(2, 3), keepdim=True) * b) * c + gray.mean(dim=(2, 3), keepdim=True) * b
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = (gray + (x - gray) * s).clamp(0.0, 1.0)
    return (x - CONTRACT.mean) / CONTRACT.std


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

    def batches(self, index_batches: list[np.ndarray]) -> Iterator[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
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
        return torch.from_numpy(self.split.load(i, self.size)), i


def decode_all(split: AffectNetSplit, size: int) -> np.ndarray:
    """uint8 (N, size, size, 3): every crop of ``split``, decoded by a thread per core (PIL and OpenCV release
    the interpreter lock)."""
    out = np.empty((len(split), size, size, 3), dtype=np.uint8)

    def one(i: int) -> None:
        out[i] = split.load(i, size)

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


def class_weights(counts: np.ndarray, balance: bool) -> torch.Tensor | None:
    """Inverse-frequency cross-entropy weights, mean 1 over the classes present (absent classes get 0)."""
    if not balance:
        return None
    counts = np.asarray(counts, dtype=np.float64)
    w = np.where(counts > 0, 1.0 / np.maximum(counts, 1), 0.0)
    return torch.tensor(w / w[counts > 0].mean(), dtype=torch.float32)


# ---------------------------------------------------------------------------------------------------- steps
def losses(
    logits: torch.Tensor, va: torch.Tensor, expression: torch.Tensor, va_true: torch.Tensor,
    weight: torch.Tensor | None, cfg: BackboneConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(total, cross-entropy, CCC loss) for logits (B, 8), va (B, 2) against int64 (B,) and (B, 2) labels."""
    ce = F.cross_entropy(logits.float(), expression, weight=weight)
    cl = ccc_loss(va.float(), va_true)  # (1 - CCC_v) + (1 - CCC_a) over the batch
    return cfg.expression_weight * ce + cfg.va_weight * cl, ce, cl


def train_step(
    model: BackboneNet, optim: torch.optim.Optimizer, scaler: torch.amp.GradScaler, batch: tuple, gen: torch.Generator,
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


def index_batches(n: int, batch: int) -> list[np.ndarray]:
    """0..n-1 in order, in batches of ``batch`` (the last one shorter)."""
    return [np.arange(i, min(i + batch, n)) for i in range(0, n, batch)]


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


# ------------------------------------------------------------------------------------------------ files
def _torch_bytes(obj: Any) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _cpu_state(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in state.items()}


def best_bytes(model: BackboneNet) -> dict[str, bytes]:
    """The serialised best files: ``backbone.pth`` (the IResNet's own state_dict: arcface_torch names, nothing
    else) and ``heads.pth`` (the two heads)."""
    return {
        "backbone.pth": _torch_bytes(_cpu_state(model.net.state_dict())),
        "heads.pth": _torch_bytes(_cpu_state(model.heads_state())),
    }


def write_files(out_dir: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        write_atomic(out_dir / name, data)


def fingerprint(cfg: BackboneConfig, size: int, init_digest: str, train: AffectNetSplit, val: AffectNetSplit) -> str:
    """What decides the result: params (less throughput-only keys), input size, start weights, both splits, and the
    code that trains (this module, the network, the reader)."""
    params = {k: v for k, v in as_dict(cfg).items() if k not in ("workers", "cache_gb", "data", "init")}
    code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in (sys.modules[__name__], R, A))).hexdigest()
    key = {"format": RESUME_FORMAT, "params": params, "size": size, "init": init_digest, "code": code,
           "train": train.fingerprint(), "val": val.fingerprint()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# ---------------------------------------------------------------------------------------------------- stage
def run(
    cfg: BackboneConfig,
    frames_size: int,
    out_dir: Path,
    metrics_file: Path,
    plots_dir: Path | None,
    device: str = "auto",
) -> dict[str, Any]:
    """Fine-tune on ``cfg.data`` and write ``out_dir`` (backbone.pth, heads.pth, meta.json), ``metrics_file`` and
    the curves under ``plots_dir``; resumes from ``out_dir/last.pt``. Returns the metrics written."""
    t_start = time.perf_counter()
    out_dir, metrics_file = Path(out_dir), Path(metrics_file)
    dev = resolve_device(device)
    adtype = amp_dtype(dev)
    size = cfg.size or frames_size

    train, val = read_split(cfg.data, "train"), read_split(cfg.data, "val")
    for s in (train, val):
        skipped = ", ".join(f"{n} {why}" for why, n in s.skipped.items()) or "none"
        print(f"backbone: {s.split}: {len(s)} images ({s.layout} layout), skipped: {skipped}", flush=True)
    if len(train) < 2 or len(val) < 2:
        raise InputError(f"{cfg.data}: need at least 2 usable training and 2 validation images, got {len(train)} and {len(val)}")

    model, init_digest = build_model(cfg)
    fp = fingerprint(cfg, size, init_digest, train, val)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)  # written last: its presence means the folder is complete
    saved = resume.load(out_dir / "last.pt", RESUME_FORMAT, fp, "backbone")
    if saved is None:
        for stale in ("backbone.pth", "heads.pth", "last.pt"):
            (out_dir / stale).unlink(missing_ok=True)
    if cfg.freeze != "none":
        print(f"backbone: freeze {cfg.freeze}: training only what follows it (the paper fine-tunes everything)")

    model.to(dev).to(memory_format=torch.channels_last)
    optim = make_optimizer(model, cfg)
    scaler = torch.amp.GradScaler("cuda", enabled=adtype == torch.float16)
    weight = class_weights(train.class_counts(), cfg.balance)
    weight = weight.to(dev) if weight is not None else None

    history: list[dict[str, float | None]] = []
    best: dict[str, Any] = {"epoch": -1, "score": -math.inf, "val": None, "sha256": None}
    start = 0
    if saved is not None:
        model.load_changing_state(saved["model"])
        optim.load_state_dict(saved["optim"])
        scaler.load_state_dict(saved["scaler"])
        history, best, start = saved["history"], saved["best"], saved["epoch"] + 1
        if best["epoch"] == saved["epoch"]:  # killed before the best files were written from this state
            write_files(out_dir, best_bytes(model))
        if not (out_dir / "backbone.pth").exists() or W.sha256_file(out_dir / "backbone.pth") != best["sha256"]:
            raise InputError(f"{out_dir / 'backbone.pth'}: missing or not the best epoch recorded in last.pt; "
                             "delete last.pt to start over")
        print(f"backbone: resuming after epoch {saved['epoch']} (best so far: epoch {best['epoch']})", flush=True)

    pin = dev.type == "cuda"
    train_crops = Crops(train, size, cfg.cache_gb, cfg.workers, pin)
    val_crops = Crops(val, size, cfg.cache_gb, cfg.workers, pin)
    steps_per_epoch = len(epoch_batches(len(train), cfg.batch, cfg.seed, 0))
    total_steps = cfg.epochs * steps_per_epoch
    warmup = round(cfg.warmup_epochs * steps_per_epoch)
    step_s, images = 0.0, 0
    val_bank = trunk_bank(model, val_crops, cfg.batch, dev, adtype, cfg.cache_gb)
    train_bank = None if cfg.augment else trunk_bank(model, train_crops, cfg.batch, dev, adtype, cfg.cache_gb)
    if train_bank is not None:
        print(f"backbone: no augmentation: the frozen parts' output of the {len(train)} training images is computed once")

    for epoch in range(start, cfg.epochs):
        t_epoch = time.perf_counter()
        model.train()
        sums, lr = torch.zeros(3), cfg.lr
        batches = epoch_batches(len(train), cfg.batch, cfg.seed, epoch)
        source = train_crops.batches(batches) if train_bank is None else (
            (train_bank[torch.from_numpy(idx).to(dev)], train_crops.expression[idx], train_crops.va[idx]) for idx in batches
        )
        bar = tqdm(source, total=len(batches), desc=f"backbone epoch {epoch}", unit="batch", leave=False)
        for k, batch in enumerate(bar):
            step = epoch * steps_per_epoch + k
            lr = cfg.lr * lr_factor(step, warmup, total_steps)
            t0 = time.perf_counter()
            out = train_step(model, optim, scaler, batch, step_generator(cfg.seed, epoch, k), lr, cfg, weight, dev, adtype)
            sums += torch.stack(out).float().cpu()  # one sync per step: the loop is compute-bound, not launch-bound
            step_s += time.perf_counter() - t0
            images += len(batch[0])
        t_val = time.perf_counter()
        metrics = evaluate(model, val_crops, cfg.batch, dev, adtype, val_bank)
        mean = sums / max(1, len(batches))
        row = {"epoch": epoch, "train/loss": float(mean[0]), "train/ce": float(mean[1]), "train/ccc_loss": float(mean[2]),
               **{f"val/{k}": v for k, v in metrics.items()}, "lr": lr}
        history.append(row)
        score = metrics["ccc_mean"] if metrics["ccc_mean"] is not None else -math.inf
        is_best = score > best["score"] or best["epoch"] < 0
        if is_best:
            best = {"epoch": epoch, "score": score, "val": metrics, "sha256": None}
        best_files = best_bytes(model) if is_best else None
        if best_files is not None:
            best["sha256"] = hashlib.sha256(best_files["backbone.pth"]).hexdigest()
        state = {
            "format": RESUME_FORMAT, "fingerprint": fp, "epoch": epoch, "history": history, "best": best,
            "model": model.changing_state(), "optim": optim.state_dict(), "scaler": scaler.state_dict(),
        }
        resume.save(out_dir / "last.pt", state)  # first: the best files can be rebuilt from it
        if best_files is not None:
            write_files(out_dir, best_files)
        write_curves(plots_dir, history)
        print(
            f"backbone epoch {epoch:3d} loss {row['train/loss']:.4f} (ce {row['train/ce']:.4f}, ccc {row['train/ccc_loss']:.4f}) "
            f"val acc {metrics['accuracy']} f1 {metrics['macro_f1']} ccc v {metrics['ccc_valence']} "
            f"a {metrics['ccc_arousal']} ({t_val - t_epoch:.1f} s train, {time.perf_counter() - t_val:.1f} s val)"
            f"{' best' if is_best else ''}",
            flush=True,
        )

    seconds = round(time.perf_counter() - t_start, 2)
    digest = best["sha256"]
    result = {
        **(best["val"] or {}),
        "best_epoch": best["epoch"],
        "epochs": cfg.epochs,
        "init": init_digest,
        "random_init_start": init_digest == W.RANDOM_INIT,
        "freeze": cfg.freeze,
        "size": size,
        "train_images": len(train),
        "val_images": len(val),
        "device": str(dev),
        "seconds": seconds,
        "train_images_per_s": round(images / step_s, 2) if step_s else None,
    }
    meta = {
        "format": META_FORMAT,
        "backbone": "backbone.pth",
        "backbone_sha256": digest,
        "init": {"path": cfg.init, "sha256": init_digest},
        "random_init_start": init_digest == W.RANDOM_INIT,
        "input": {"size": size, "contract": "RGB uint8 -> (x / 255 - 0.5) / 0.5", "features": "bn2 map"},
        "data": {
            "root": str(cfg.data), "layout": train.layout, "train_images": len(train), "val_images": len(val),
            "skipped": {"train": train.skipped, "val": val.skipped},
            "train_class_counts": dict(zip(EXPRESSIONS, train.class_counts().tolist())),
        },
        "params": as_dict(cfg),
        "best_epoch": best["epoch"],
        "val": best["val"],
        "history": history,
        "provenance": provenance.record(),
    }
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(metrics_file, (json.dumps(result, indent=1) + "\n").encode())
    write_atomic(out_dir / "meta.json", (json.dumps(meta, indent=1) + "\n").encode())
    (out_dir / "last.pt").unlink(missing_ok=True)
    print(
        f"backbone: best epoch {best['epoch']}: val accuracy {result.get('accuracy')}, macro F1 {result.get('macro_f1')}, "
        f"CCC v {result.get('ccc_valence')} a {result.get('ccc_arousal')} in {seconds} s"
        + (" (started from RANDOM INIT)" if result["random_init_start"] else ""),
        flush=True,
    )
    return result
