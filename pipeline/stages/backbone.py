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
the result (params, start weights, input size, both splits' labels, the code in :data:`CODE`). A re-run with the
same fingerprint continues after the last complete epoch; every random draw is a function of (seed, epoch, step), so
on CPU a resumed run ends with the same weights as an uninterrupted one.

The parts: the network is :mod:`pipeline.nn.backbone`, the crops, steps and evaluation
:mod:`pipeline.training.backbone`, the augmentation :mod:`pipeline.training.augment`, the reader
:mod:`pipeline.io.affectnet` and the crop of one image :mod:`pipeline.faces.stills`; this module reads the splits,
builds or resumes the model, runs the epochs and writes the files.
"""

from __future__ import annotations

import hashlib
import json
import math
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from pipeline.common import provenance
from pipeline.common.config import BackboneConfig, as_dict
from pipeline.common.devices import amp_dtype, resolve_device
from pipeline.common.errors import InputError
from pipeline.common.outputs import write_atomic, write_json
from pipeline.extractors import iresnet
from pipeline.extractors import weights as W
from pipeline.extractors.iresnet import CONTRACT, InputContract, iresnet50, random_init
from pipeline.faces import align, stills
from pipeline.io import affectnet
from pipeline.io.affectnet import EXPRESSIONS, AffectNetSplit, read_split
from pipeline.nn import backbone as nn_backbone
from pipeline.nn.backbone import BackboneNet
from pipeline.scoring import metrics as scoring_metrics
from pipeline.training import augment, resume, schedule
from pipeline.training import backbone as training_backbone
from pipeline.training.backbone import (
    Crops,
    StepPlan,
    Trainer,
    best_bytes,
    epoch_batches,
    evaluate,
    train_batches,
    train_epoch,
    trunk_bank,
)
from pipeline.training.live import write_curves

RESUME_FORMAT = "va-pipeline-backbone-resume/1"
RANDOM_START = (
    "WARNING: backbone: backbone.init is null: fine-tuning starts from a RANDOMLY INITIALISED IResNet-50 "
    f"(seed {W.SEED}), not from ArcFace weights; meta.json and the metrics say init: {W.RANDOM_INIT}"
)
META_FORMAT = "va-pipeline-backbone/1"
# the code that decides the result: a change to any of these modules starts a resumed run over; dvc.yaml's backbone
# deps list the same files (a test says so)
CODE = (
    sys.modules[__name__], nn_backbone, training_backbone, augment, schedule, iresnet, W, affectnet, stills, align,
    scoring_metrics,
)


def contract_text(c: InputContract) -> str:
    """The input contract as meta.json writes it: ``RGB uint8 -> (x / 255 - 0.5) / 0.5``."""
    return f"{c.color} {c.dtype} -> {c.formula}"


# ------------------------------------------------------------------------------------------------- inputs
def read_splits(cfg: BackboneConfig) -> tuple[AffectNetSplit, AffectNetSplit]:
    """The training and validation splits of ``cfg.data``, each said in one line; an InputError when either has
    fewer than 2 usable images."""
    train, val = read_split(cfg.data, "train"), read_split(cfg.data, "val")
    for s in (train, val):
        skipped = ", ".join(f"{n} {why}" for why, n in s.skipped.items()) or "none"
        print(f"backbone: {s.split}: {len(s)} images ({s.layout} layout), skipped: {skipped}", flush=True)
    if len(train) < 2 or len(val) < 2:
        raise InputError(f"{cfg.data}: need at least 2 usable training and 2 validation images, got {len(train)} and {len(val)}")
    return train, val


def build_model(cfg: BackboneConfig) -> tuple[BackboneNet, str]:
    """The network at its starting point and the start weights' digest (or ``random-init``, loudly)."""
    net = iresnet50()
    digest = W.load_or_random_init(net, cfg.init, cfg.sha256, "backbone.init", init=random_init, warning=RANDOM_START)
    torch.manual_seed(cfg.seed)  # the heads
    return BackboneNet(net, cfg.freeze), digest


def fingerprint(cfg: BackboneConfig, size: int, init_digest: str, train: AffectNetSplit, val: AffectNetSplit) -> str:
    """What decides the result: params (less throughput-only keys), input size, start weights, both splits, and the
    code that trains (:data:`CODE`: this stage, the network, the steps, augmentation, schedule, reader, crops, loss)."""
    params = {k: v for k, v in as_dict(cfg).items() if k not in ("workers", "cache_gb", "data", "init")}
    code = hashlib.sha256(b"".join(Path(m.__file__).read_bytes() for m in CODE)).hexdigest()
    key = {"format": RESUME_FORMAT, "params": params, "size": size, "init": init_digest, "code": code,
           "train": train.fingerprint(), "val": val.fingerprint()}
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()


# ------------------------------------------------------------------------------------------------- resume
@dataclass
class Progress:
    """The loop's state: one row per finished epoch, the best epoch so far (``epoch``, ``score`` = validation CCC
    mean, ``val`` metrics, ``sha256`` of its backbone.pth), the next epoch to run; and, for this process only, the
    seconds spent in training steps and the images they saw."""

    history: list[dict[str, float | None]] = field(default_factory=list)
    best: dict[str, Any] = field(default_factory=lambda: {"epoch": -1, "score": -math.inf, "val": None, "sha256": None})
    start: int = 0
    step_s: float = 0.0
    images: int = 0


def open_out_dir(out_dir: Path, fp: str) -> dict[str, Any] | None:
    """Make ``out_dir`` ready: meta.json goes (written last, its presence means the folder is complete); the resume
    state of a run with fingerprint ``fp``, if ``last.pt`` holds one, else None and the best files of another run
    go too."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "meta.json").unlink(missing_ok=True)
    saved = resume.load(out_dir / "last.pt", RESUME_FORMAT, fp, "backbone")
    if saved is None:
        for stale in ("backbone.pth", "heads.pth", "last.pt"):
            (out_dir / stale).unlink(missing_ok=True)
    return saved


def restore(saved: dict[str, Any], tr: Trainer, out_dir: Path) -> Progress:
    """Load the resume state into the trainer; the best files are rewritten when the kill came before they were,
    and must then be the best epoch that ``last.pt`` records (else an InputError)."""
    tr.model.load_changing_state(saved["model"])
    tr.optim.load_state_dict(saved["optim"])
    tr.scaler.load_state_dict(saved["scaler"])
    progress = Progress(saved["history"], saved["best"], saved["epoch"] + 1)
    best = progress.best
    if best["epoch"] == saved["epoch"]:  # killed before the best files were written from this state
        write_files(out_dir, best_bytes(tr.model))
    if not (out_dir / "backbone.pth").exists() or W.sha256_file(out_dir / "backbone.pth") != best["sha256"]:
        raise InputError(f"{out_dir / 'backbone.pth'}: missing or not the best epoch recorded in last.pt; "
                         "delete last.pt to start over")
    print(f"backbone: resuming after epoch {saved['epoch']} (best so far: epoch {best['epoch']})", flush=True)
    return progress


def write_files(out_dir: Path, files: dict[str, bytes]) -> None:
    """Each ``{name: bytes}`` into ``out_dir``, atomically."""
    for name, data in files.items():
        write_atomic(out_dir / name, data)


# ------------------------------------------------------------------------------------------------- epochs
@dataclass
class Data:
    """Both splits' crops, and the frozen parts' outputs (:func:`~pipeline.training.backbone.trunk_bank`) where
    they are computed once: always for validation when something is frozen, for training only without
    augmentation."""

    train: Crops
    val: Crops
    train_bank: torch.Tensor | None
    val_bank: torch.Tensor | None


def load_data(tr: Trainer, train: AffectNetSplit, val: AffectNetSplit, size: int, cfg: BackboneConfig) -> Data:
    """The crops of both splits at ``size`` (cached or streamed, ``cfg.cache_gb``) and their trunk banks."""
    pin = tr.dev.type == "cuda"
    train_crops = Crops(train, size, cfg.cache_gb, cfg.workers, pin)
    val_crops = Crops(val, size, cfg.cache_gb, cfg.workers, pin)
    val_bank = trunk_bank(tr.model, val_crops, cfg.batch, tr.dev, tr.adtype, cfg.cache_gb)
    train_bank = None if cfg.augment else trunk_bank(tr.model, train_crops, cfg.batch, tr.dev, tr.adtype, cfg.cache_gb)
    if train_bank is not None:
        print(f"backbone: no augmentation: the frozen parts' output of the {len(train)} training images is computed once")
    return Data(train_crops, val_crops, train_bank, val_bank)


@dataclass
class Epoch:
    """One epoch's outcome: its history row, whether it is the best yet, and when training and validation began
    (``time.perf_counter``)."""

    row: dict[str, float | None]
    is_best: bool
    t_train: float
    t_val: float


def train_and_validate(epoch: int, tr: Trainer, data: Data, plan: StepPlan, cfg: BackboneConfig, progress: Progress) -> Epoch:
    """Train one epoch, validate, append its row to ``progress.history`` and make it ``progress.best`` when its
    validation CCC mean is the highest yet (the first epoch always is)."""
    t_train = time.perf_counter()
    batches = epoch_batches(len(data.train), cfg.batch, cfg.seed, epoch)
    stats = train_epoch(tr, train_batches(data.train, data.train_bank, batches, tr.dev), len(batches), epoch, plan, cfg)
    progress.step_s += stats.step_s
    progress.images += stats.images
    t_val = time.perf_counter()
    metrics = evaluate(tr.model, data.val, cfg.batch, tr.dev, tr.adtype, data.val_bank)
    row = {"epoch": epoch, "train/loss": float(stats.mean[0]), "train/ce": float(stats.mean[1]),
           "train/ccc_loss": float(stats.mean[2]), **{f"val/{k}": v for k, v in metrics.items()}, "lr": stats.lr}
    progress.history.append(row)
    score = metrics["ccc_mean"] if metrics["ccc_mean"] is not None else -math.inf
    is_best = score > progress.best["score"] or progress.best["epoch"] < 0
    if is_best:
        progress.best = {"epoch": epoch, "score": score, "val": metrics, "sha256": None}
    return Epoch(row, is_best, t_train, t_val)


def save_epoch(
    epoch: int, is_best: bool, tr: Trainer, progress: Progress, fp: str, out_dir: Path, plots_dir: Path | None
) -> None:
    """``last.pt`` first (the best files can be rebuilt from it), then the best files when this epoch is the best,
    then the curves."""
    best_files = best_bytes(tr.model) if is_best else None
    if best_files is not None:
        progress.best["sha256"] = hashlib.sha256(best_files["backbone.pth"]).hexdigest()
    state = {
        "format": RESUME_FORMAT, "fingerprint": fp, "epoch": epoch, "history": progress.history, "best": progress.best,
        "model": tr.model.changing_state(), "optim": tr.optim.state_dict(), "scaler": tr.scaler.state_dict(),
    }
    resume.save(out_dir / "last.pt", state)
    if best_files is not None:
        write_files(out_dir, best_files)
    write_curves(plots_dir, progress.history)


def epoch_line(e: Epoch) -> str:
    """The epoch's log line: losses, validation metrics, seconds of training and of validation (and saving)."""
    row = e.row
    return (
        f"backbone epoch {row['epoch']:3d} loss {row['train/loss']:.4f} (ce {row['train/ce']:.4f}, ccc {row['train/ccc_loss']:.4f}) "
        f"val acc {row['val/accuracy']} f1 {row['val/macro_f1']} ccc v {row['val/ccc_valence']} "
        f"a {row['val/ccc_arousal']} ({e.t_val - e.t_train:.1f} s train, {time.perf_counter() - e.t_val:.1f} s val)"
        f"{' best' if e.is_best else ''}"
    )


# ------------------------------------------------------------------------------------------------- outputs
def summary(
    cfg: BackboneConfig, size: int, init_digest: str, train: AffectNetSplit, val: AffectNetSplit, progress: Progress,
    dev: torch.device, seconds: float,
) -> dict[str, Any]:
    """The metrics file: the best epoch's validation metrics, what the run started from and saw, its time and
    training throughput (images/s in training steps)."""
    best = progress.best
    return {
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
        "train_images_per_s": round(progress.images / progress.step_s, 2) if progress.step_s else None,
    }


def meta_doc(
    cfg: BackboneConfig, size: int, init_digest: str, train: AffectNetSplit, val: AffectNetSplit, progress: Progress
) -> dict[str, Any]:
    """meta.json: the best backbone.pth and its digest, the start weights, the input contract, the data, params,
    the best epoch's validation metrics, every epoch's row and the provenance."""
    best = progress.best
    return {
        "format": META_FORMAT,
        "backbone": "backbone.pth",
        "backbone_sha256": best["sha256"],
        "init": {"path": cfg.init, "sha256": init_digest},
        "random_init_start": init_digest == W.RANDOM_INIT,
        "input": {"size": size, "contract": contract_text(CONTRACT), "features": "bn2 map"},
        "data": {
            "root": str(cfg.data), "layout": train.layout, "train_images": len(train), "val_images": len(val),
            "skipped": {"train": train.skipped, "val": val.skipped},
            "train_class_counts": dict(zip(EXPRESSIONS, train.class_counts().tolist())),
        },
        "params": as_dict(cfg),
        "best_epoch": best["epoch"],
        "val": best["val"],
        "history": progress.history,
        "provenance": provenance.record(),
    }


def finish(out_dir: Path, metrics_file: Path, result: dict[str, Any], meta: dict[str, Any]) -> None:
    """Write the metrics file, then meta.json (last: the folder is complete), then drop the resume state."""
    write_json(metrics_file, result)
    write_json(out_dir / "meta.json", meta)
    (out_dir / "last.pt").unlink(missing_ok=True)
    print(
        f"backbone: best epoch {result['best_epoch']}: val accuracy {result.get('accuracy')}, macro F1 {result.get('macro_f1')}, "
        f"CCC v {result.get('ccc_valence')} a {result.get('ccc_arousal')} in {result['seconds']} s"
        + (" (started from RANDOM INIT)" if result["random_init_start"] else ""),
        flush=True,
    )


# --------------------------------------------------------------------------------------------------- stage
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
    size = cfg.size or frames_size

    train, val = read_splits(cfg)
    model, init_digest = build_model(cfg)
    fp = fingerprint(cfg, size, init_digest, train, val)
    saved = open_out_dir(out_dir, fp)
    if cfg.freeze != "none":
        print(f"backbone: freeze {cfg.freeze}: training only what follows it (the paper fine-tunes everything)")
    tr = Trainer.build(model, cfg, train.class_counts(), dev, amp_dtype(dev))
    progress = Progress() if saved is None else restore(saved, tr, out_dir)

    data = load_data(tr, train, val, size, cfg)
    plan = StepPlan.of(len(train), cfg)
    for epoch in range(progress.start, cfg.epochs):
        e = train_and_validate(epoch, tr, data, plan, cfg, progress)
        save_epoch(epoch, e.is_best, tr, progress, fp, out_dir, plots_dir)
        print(epoch_line(e), flush=True)

    seconds = round(time.perf_counter() - t_start, 2)
    result = summary(cfg, size, init_digest, train, val, progress, dev, seconds)
    finish(out_dir, metrics_file, result, meta_doc(cfg, size, init_digest, train, val, progress))
    return result
