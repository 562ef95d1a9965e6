"""``train@<k>``: fit the fusion model on every fold but ``k``, validate on fold ``k``, keep the best epoch.

Writes (paths from dvc.yaml through the CLI)::

    <model_dir>/model.pt             best checkpoint: state_dict, model params, row shapes, normalisation statistics
    <model_dir>/val_predictions.npz  {trial: (N, 2) float32} whole-trial predictions of the best epoch
    <model_dir>/meta.json            fold, trials, best epoch, random-init flags, per-trial validation CCC
    <metrics_file>                   CCC of the best epoch over all validation frames concatenated (challenge
                                     protocol), throughput, random-init flags
    <plots_dir>/                     dvclive per-epoch curves: train/loss, val/ccc_valence, val/ccc_arousal, val/ccc_mean
"""

from __future__ import annotations

import json
import math
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.config import ModelConfig, TrainConfig, as_dict
from pipeline.devices import resolve_device
from pipeline.errors import InputError
from pipeline.io.prepared import load_folds, read_labels
from pipeline.metrics import ccc_loss, ccc_va, json_float
from pipeline.nn import FusionModel
from pipeline.windows import FeatureSource, Normaliser, Prefetcher, WindowDataset, predict_trial

CHECKPOINT_FORMAT = "va-pipeline-model/1"
GRAD_CLIP = 1.0  # max gradient norm; CCC loss spikes on near-constant batches
MIN_LR_FRACTION = 0.05  # cosine schedule ends at this fraction of train.lr


# ------------------------------------------------------------------------------------------ shared helpers
def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPU (bf16 where supported, else fp16 with a GradScaler); full precision on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cpu":
        # CPU kernels are deterministic with this; two runs with the same params give the same metrics
        torch.use_deterministic_algorithms(True, warn_only=True)


def load_checkpoint(path: Path, device: torch.device) -> tuple[FusionModel, Normaliser, dict[str, Any]]:
    """Model (eval mode, on ``device``), its normalisation statistics and the checkpoint's metadata."""
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run `python -m pipeline train --fold <k>` first)") from None
    if ckpt.get("format") != CHECKPOINT_FORMAT:
        raise InputError(f"{path}: not a checkpoint of this pipeline (format {ckpt.get('format')!r})")
    cfg = ModelConfig(**ckpt["model"])
    row_shapes = {m: tuple(s) for m, s in ckpt["row_shapes"].items()}
    model = FusionModel.from_config(cfg, row_shapes, max_len=ckpt["window"])
    model.load_state_dict(ckpt["state_dict"])
    model.to(device).eval()
    return model, Normaliser.from_state(ckpt["norm"]), ckpt


def score(preds: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Challenge-protocol CCC over all frames concatenated, plus per trial; NaN written as null."""
    trials = sorted(preds)
    overall = ccc_va(np.concatenate([preds[t] for t in trials]), np.concatenate([labels[t] for t in trials]))
    per_trial = {t: {k: json_float(v) for k, v in ccc_va(preds[t], labels[t]).items()} for t in trials}
    return {**{k: json_float(v) for k, v in overall.items()}, "per_trial": per_trial}


# ---------------------------------------------------------------------------------------------------- stage
@dataclass
class StepTimes:
    """Where training time went: blocked on the next batch versus the whole step (data wait included)."""

    wait_s: float = 0.0
    step_s: float = 0.0
    steps: int = 0
    windows: int = 0
    epochs: list[float] = field(default_factory=list)

    @property
    def wait_share(self) -> float:
        return self.wait_s / self.step_s if self.step_s else float("nan")


def run(
    fold: int,
    model_cfg: ModelConfig,
    train_cfg: TrainConfig,
    prepared: Path,
    features: Path,
    model_dir: Path,
    metrics_file: Path,
    plots_dir: Path | None,
    device: str = "auto",
    max_steps: int | None = None,
) -> dict[str, Any]:
    """Train fold ``fold`` and write its checkpoint, validation predictions, metrics and curves.

    ``max_steps`` stops after that many optimiser steps (benchmarks); the stage itself leaves it None.
    Returns the metrics written to ``metrics_file`` (plus a ``timing`` entry).
    """
    t_start = time.perf_counter()
    prepared, features = Path(prepared), Path(features)
    dev = resolve_device(device)
    seed_everything(train_cfg.seed + fold, dev)

    folds = load_folds(prepared / "folds.json")
    if not 0 <= fold < len(folds):
        raise InputError(f"{prepared / 'folds.json'}: no fold {fold} (it has {len(folds)})")
    val_trials = sorted(folds[fold])
    train_trials = sorted(t for k, f in enumerate(folds) if k != fold for t in f)
    if not val_trials or not train_trials:
        raise InputError(f"{prepared / 'folds.json'}: fold {fold} leaves no training or no validation trials")
    labels = read_labels(prepared, train_trials + val_trials)

    modalities = list(model_cfg.modalities)
    need = FeatureSource.nbytes(features, modalities, train_trials + val_trials)
    preload = need <= train_cfg.preload_gb * 2**30
    source = FeatureSource(features, modalities, train_trials + val_trials, preload=preload)
    for t in train_trials + val_trials:
        if source.lengths[t] != len(labels[t]):
            raise InputError(f"{features}: trial {t!r} has {source.lengths[t]} feature rows but {len(labels[t])} labels")
    norm = Normaliser.fit(source, train_trials)
    random_init = sorted(m for m, r in source.random_init.items() if r)
    if random_init:
        print(f"train fold {fold}: NOTE features from random-init backbones: {', '.join(random_init)}")

    dataset = WindowDataset(source, norm, {t: labels[t] for t in train_trials}, train_cfg.window, train_cfg.hop)
    loader_gen = torch.Generator().manual_seed(train_cfg.seed * 1000 + fold)
    loader = torch.utils.data.DataLoader(
        dataset,
        batch_size=train_cfg.batch,
        shuffle=True,
        generator=loader_gen,
        num_workers=train_cfg.workers,
        pin_memory=dev.type == "cuda",
        persistent_workers=False,
    )

    model = FusionModel.from_config(model_cfg, source.row_shapes, max_len=train_cfg.window).to(dev)
    optim = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    steps_per_epoch = math.ceil(len(dataset) / train_cfg.batch)  # resampling keeps the count within a few windows
    total_steps = max(1, train_cfg.epochs * steps_per_epoch)
    warmup = train_cfg.warmup_epochs * steps_per_epoch

    def lr_factor(step: int) -> float:  # linear warm-up, then cosine decay to MIN_LR_FRACTION
        if step < warmup:
            return (step + 1) / warmup
        p = min(1.0, (step - warmup) / max(1, total_steps - warmup))
        return MIN_LR_FRACTION + (1 - MIN_LR_FRACTION) * 0.5 * (1 + math.cos(math.pi * p))

    sched = torch.optim.lr_scheduler.LambdaLR(optim, lr_factor)
    adtype = amp_dtype(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=adtype == torch.float16)

    live = _open_curves(plots_dir)
    best: dict[str, Any] = {"score": -math.inf, "epoch": -1}
    times = StepTimes()
    stale, step = 0, 0
    epoch = 0
    for epoch in range(train_cfg.epochs):
        t_epoch = time.perf_counter()
        dataset.resample(np.random.default_rng([train_cfg.seed, fold, epoch]))
        model.train()
        losses = []
        it = iter(Prefetcher(loader, dev))
        while True:
            t0 = time.perf_counter()
            batch = next(it, None)
            t1 = time.perf_counter()
            if batch is None:
                break
            mask = batch.pop("mask")
            y = batch.pop("labels")
            with torch.autocast(dev.type, dtype=adtype, enabled=adtype is not None):
                pred = model(batch, mask)  # (B, T, 2)
            loss = ccc_loss(pred.float(), y, mask)
            optim.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.unscale_(optim)
            torch.nn.utils.clip_grad_norm_(model.parameters(), GRAD_CLIP)
            scaler.step(optim)
            scaler.update()
            sched.step()
            losses.append(float(loss.detach()))
            if dev.type == "cuda":
                torch.cuda.synchronize()
            t2 = time.perf_counter()
            times.wait_s += t1 - t0
            times.step_s += t2 - t0
            times.steps += 1
            times.windows += len(y)
            step += 1
            if max_steps is not None and step >= max_steps:
                break

        model.eval()
        preds = {
            t: predict_trial(model, source, norm, t, train_cfg.window, train_cfg.hop, dev, train_cfg.batch, adtype)
            for t in val_trials
        }
        val = score(preds, labels)
        mean = val["ccc_mean"] if val["ccc_mean"] is not None else -math.inf
        live.log_metric("train/loss", float(np.mean(losses)) if losses else float("nan"))
        for k in ("ccc_valence", "ccc_arousal", "ccc_mean"):
            live.log_metric(f"val/{k}", val[k] if val[k] is not None else float("nan"))
        live.log_metric("lr", optim.param_groups[0]["lr"])
        live.next_step()
        times.epochs.append(time.perf_counter() - t_epoch)
        print(
            f"fold {fold} epoch {epoch:3d} loss {np.mean(losses) if losses else float('nan'):.4f} "
            f"val ccc v {val['ccc_valence']} a {val['ccc_arousal']} mean {val['ccc_mean']} "
            f"({times.epochs[-1]:.1f} s)",
            flush=True,
        )
        if mean > best["score"]:
            best = {
                "score": mean,
                "epoch": epoch,
                "val": val,
                "preds": preds,
                "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()},
            }
            stale = 0
        else:
            stale += 1
            if stale >= train_cfg.patience:
                break
        if max_steps is not None and step >= max_steps:
            break
    live.end()
    if plots_dir is not None:
        _drop_live_summary(Path(plots_dir))

    model_dir = Path(model_dir)
    model_dir.mkdir(parents=True, exist_ok=True)
    torch.save(
        {
            "format": CHECKPOINT_FORMAT,
            "fold": fold,
            "epoch": best["epoch"],
            "model": as_dict(model_cfg),
            "train": as_dict(train_cfg),
            "row_shapes": {m: list(s) for m, s in source.row_shapes.items()},
            "window": train_cfg.window,
            "hop": train_cfg.hop,
            "norm": norm.state(),
            "state_dict": best["state"],
        },
        model_dir / "model.pt",
    )
    np.savez(model_dir / "val_predictions.npz", **best["preds"])
    meta = {
        "fold": fold,
        "val_trials": val_trials,
        "train_trials": train_trials,
        "best_epoch": best["epoch"],
        "modalities": modalities,
        "random_init_backbones": random_init,
        "val": {k: best["val"][k] for k in ("ccc_valence", "ccc_arousal", "ccc_mean")},
        "per_trial": best["val"]["per_trial"],
    }
    (model_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")

    val = best["val"]
    metrics = {
        "fold": fold,
        "ccc_valence": val["ccc_valence"],
        "ccc_arousal": val["ccc_arousal"],
        "ccc_mean": val["ccc_mean"],
        "best_epoch": best["epoch"],
        "epochs_run": epoch + 1,
        "random_init_backbones": random_init,
        "train_windows_per_epoch": len(dataset),
        "preloaded": preload,
        "device": str(dev),
        "seconds": round(time.perf_counter() - t_start, 2),
        "windows_per_s": round(times.windows / times.step_s, 2) if times.step_s else None,
        "data_wait_share": json_float(times.wait_share),
    }
    metrics_file = Path(metrics_file)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(metrics, indent=1) + "\n")
    print(
        f"fold {fold}: best epoch {best['epoch']} val ccc mean {val['ccc_mean']} "
        f"(v {val['ccc_valence']}, a {val['ccc_arousal']}) in {metrics['seconds']} s"
    )
    return {**metrics, "timing": times}


class _NoCurves:
    """Stands in for dvclive when no curves are wanted (``plots_dir=None``: benchmarks)."""

    def log_metric(self, *args: Any, **kwargs: Any) -> None:
        pass

    def next_step(self) -> None:
        pass

    def end(self) -> None:
        pass


def _open_curves(plots_dir: Path | None) -> Any:
    """dvclive's ``Live`` writing per-epoch curves under ``plots_dir`` (no dvc.yaml of its own), or a no-op."""
    if plots_dir is None:
        return _NoCurves()
    from dvclive import Live

    return Live(dir=str(plots_dir), dvcyaml=None, save_dvc_exp=False, report=None)


def _drop_live_summary(plots_dir: Path) -> None:
    """dvclive also writes a summary ``metrics.json`` (the last epoch, not the best); the fold's metrics file is the
    one summary, so the curves folder keeps only the per-epoch ``plots/metrics/**.tsv`` that dvc.yaml declares."""
    summary = plots_dir / "metrics.json"
    if summary.exists():
        summary.unlink()
