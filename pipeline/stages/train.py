"""``train@<k>``: fit the fusion model on every fold but ``k``, validate on fold ``k``, keep the best epoch.

Writes (paths from dvc.yaml through the CLI)::

    <model_dir>/model.pt             best checkpoint (pipeline/training/checkpoint.py): weights, model params, row shapes,
                                     normalisation statistics, the features' extractor / weights / parameters
    <model_dir>/val_predictions.npz  {trial: (N, 2) float32} whole-trial predictions of the best epoch
    <model_dir>/meta.json            fold, trials, best epoch, random-init flags, per-trial validation CCC
    <metrics_file>                   CCC of the best epoch over all validation frames concatenated (challenge
                                     protocol), throughput, where the feature bank lived, random-init flags
    <plots_dir>/                     dvclive per-epoch curves: train/loss, val/ccc_valence, val/ccc_arousal, val/ccc_mean, lr

and, for ``--resume``, ``<model_dir>/../.resume/<fold dir>/last.pt`` after every epoch (outside the stage's DVC
output, which DVC deletes before a re-run; ``.dvcignore`` keeps it out of ``evaluate``'s dependency on ``models``).

The fold's trials sit in a feature bank (pipeline/training/bank.py); a batch is one gather of window rows, normalised with
the training folds' statistics on the compute device. Validation predicts whole trials with overlapping windows of
every validation trial batched together (pipeline/training/windows.py).
"""

from __future__ import annotations

import hashlib
import json
import math
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.common import provenance
from pipeline.common.config import ModelConfig, TrainConfig, as_dict
from pipeline.common.devices import amp_dtype, resolve_device
from pipeline.common.errors import InputError, PipelineError
from pipeline.common.prefetch import read_ahead
from pipeline.io.prepared import load_folds, read_labels
from pipeline.nn import FusionModel
from pipeline.scoring.metrics import ccc_loss, ccc_va, json_float
from pipeline.training import checkpoint, resume
from pipeline.training.bank import FeatureBank, Windows
from pipeline.training.live import write_curves
from pipeline.training.normalise import Normaliser
from pipeline.training.schedule import lr_factor
from pipeline.training.windows import INFER_BATCH, epoch_windows, predict, window_starts

GRAD_CLIP = 1.0  # max gradient norm; CCC loss spikes on near-constant batches
MIN_LR_FRACTION = 0.05  # cosine schedule ends at this fraction of train.lr
PREFETCH = 2  # batches gathered ahead when some rows live on the host (pinned or mapped)
RESUME_FORMAT = "va-pipeline-resume/2"


# ------------------------------------------------------------------------------------------ small helpers
def seed_everything(seed: int, device: torch.device) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if device.type == "cpu":
        # CPU kernels are deterministic with this; two runs with the same params give the same metrics
        torch.use_deterministic_algorithms(True, warn_only=True)


def score(preds: dict[str, np.ndarray], labels: dict[str, np.ndarray]) -> dict[str, Any]:
    """Challenge-protocol CCC over all frames concatenated, plus per trial; NaN written as null."""
    trials = sorted(preds)
    overall = ccc_va(np.concatenate([preds[t] for t in trials]), np.concatenate([labels[t] for t in trials]))
    per_trial = {t: {k: json_float(v) for k, v in ccc_va(preds[t], labels[t]).items()} for t in trials}
    return {**{k: json_float(v) for k, v in overall.items()}, "per_trial": per_trial}


def epoch_batches(
    bank: FeatureBank, lengths: dict[str, int], cfg: TrainConfig, epoch_seed: list[int], order_gen: torch.Generator
) -> list[Windows]:
    """The training batches of one epoch, as bank coordinates: windows re-cut from a fresh offset per trial
    (:func:`epoch_windows`), shuffled as a ``DataLoader(shuffle=True, generator=order_gen)`` would."""
    items = epoch_windows(lengths, cfg.window, cfg.hop, np.random.default_rng(epoch_seed))
    trial = np.array([bank.index[t] for t, _ in items], dtype=np.int64)
    start = np.array([s for _, s in items], dtype=np.int64)
    torch.empty((), dtype=torch.int64).random_(generator=order_gen)  # a DataLoader iterator's base seed draw
    order = np.array(list(torch.utils.data.RandomSampler(range(len(items)), generator=order_gen)), dtype=np.int64)
    return [
        bank.windows(trial[order[i : i + cfg.batch]], start[order[i : i + cfg.batch]], cfg.window)
        for i in range(0, len(order), cfg.batch)
    ]


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


def train_epoch(
    model: FusionModel,
    batches: Iterable[dict[str, torch.Tensor]],
    optim: torch.optim.Optimizer,
    sched: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    adtype: torch.dtype | None,
    times: StepTimes,
) -> float:
    """One pass over ``batches`` (each ``{modality: (B, T, ...), "mask": (B, T), "labels": (B, T, 2)}``);
    returns the mean loss. The loss stays on the device until the end (no synchronisation per step)."""
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
        total += loss.detach()
        n += 1
        times.windows += len(y)
    mean = float(total) / n if n else float("nan")  # one synchronisation per epoch
    times.steps += n
    times.step_s += time.perf_counter() - t_start
    return mean


# -------------------------------------------------------------------------------------------- resuming
def resume_path(model_dir: Path) -> Path:
    """``models/.resume/fold<k>/last.pt`` beside ``models/fold<k>``."""
    model_dir = Path(model_dir)
    return model_dir.parent / ".resume" / model_dir.name / "last.pt"


def run_fingerprint(fold: int, model_cfg: ModelConfig, train_cfg: TrainConfig, trials: list[list[str]],
                    bank: FeatureBank, labels: dict[str, np.ndarray]) -> str:
    """Digest of everything that decides a training run: a resume checkpoint with another one is not resumed."""
    h = hashlib.sha256()
    h.update(json.dumps({"fold": fold, "model": as_dict(model_cfg), "train": as_dict(train_cfg), "trials": trials,
                         "stores": {m: bank.attrs[m].get("fingerprint") for m in bank.modalities}},
                        sort_keys=True).encode())
    for t in sorted(labels):
        h.update(np.ascontiguousarray(labels[t], dtype=np.float32).tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------------------------------------- stage
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
    resume: bool = False,
    progress: bool = True,
) -> dict[str, Any]:
    """Train fold ``fold`` and write its checkpoint, validation predictions, metrics and curves.

    ``resume``: continue from the last epoch checkpoint of an interrupted run with the same inputs and params (on
    CPU the result equals an uninterrupted run's). Returns the metrics written to ``metrics_file`` (plus a
    ``timing`` entry).
    """
    t_start = time.perf_counter()
    prepared, features, model_dir = Path(prepared), Path(features), Path(model_dir)
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
    bank = FeatureBank.build(features, modalities, train_trials + val_trials, dev, train_cfg.bank, labels, progress)
    norm = bank.fit_normaliser(train_trials)
    random_init = sorted(m for m in modalities if bank.attrs[m].get("weights") == provenance.RANDOM_INIT)
    print(f"train fold {fold}: feature bank {json.dumps(bank.describe())} on {dev}", flush=True)
    if random_init:
        print(f"train fold {fold}: NOTE features from random-init backbones: {', '.join(random_init)}")

    lengths = {t: int(bank.lengths[bank.index[t]]) for t in train_trials}
    order_gen = torch.Generator().manual_seed(train_cfg.seed * 1000 + fold)
    model = FusionModel.from_config(model_cfg, bank.row_shapes, max_len=train_cfg.window).to(dev)
    optim = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    n_windows = sum(len(window_starts(n, train_cfg.window, train_cfg.hop)) for n in lengths.values())
    steps_per_epoch = math.ceil(n_windows / train_cfg.batch)  # resampling keeps the count within a few windows
    total_steps = max(1, train_cfg.epochs * steps_per_epoch)
    warmup = train_cfg.warmup_epochs * steps_per_epoch
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: lr_factor(s, warmup, total_steps, MIN_LR_FRACTION))
    adtype = amp_dtype(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=adtype == torch.float16)
    on_host = any(bank.placement[m] != "device" for m in modalities)

    state: dict[str, Any] = {"epoch": 0, "step": 0, "stale": 0, "history": [], "done": False,
                             "best": {"score": -math.inf, "epoch": -1}}
    fp = run_fingerprint(fold, model_cfg, train_cfg, [val_trials, train_trials], bank, labels)
    last = resume_path(model_dir)
    if resume:
        state = _load_resume(last, fp, model, optim, sched, scaler, order_gen, state, fold)

    times = StepTimes()
    while not state["done"] and state["epoch"] < train_cfg.epochs:
        epoch = state["epoch"]
        t_epoch = time.perf_counter()
        plan = epoch_batches(bank, lengths, train_cfg, [train_cfg.seed, fold, epoch], order_gen)
        make = (bank.batch(w, norm, model_cfg.zero_missing) for w in plan)
        loss = train_epoch(model, read_ahead(make, PREFETCH) if on_host else make, optim, sched, scaler, adtype, times)
        state["step"] += len(plan)

        model.eval()
        preds = predict(model, bank, norm, val_trials, train_cfg.window, train_cfg.hop, model_cfg.zero_missing,
                        INFER_BATCH, adtype)
        val = score(preds, labels)
        logged = {"train/loss": loss, "val/ccc_valence": val["ccc_valence"], "val/ccc_arousal": val["ccc_arousal"],
                  "val/ccc_mean": val["ccc_mean"], "lr": optim.param_groups[0]["lr"]}
        state["history"].append(logged)
        write_curves(plots_dir, state["history"])
        times.epochs.append(time.perf_counter() - t_epoch)
        print(f"fold {fold} epoch {epoch:3d} loss {loss:.4f} val ccc v {val['ccc_valence']} a {val['ccc_arousal']} "
              f"mean {val['ccc_mean']} ({times.epochs[-1]:.1f} s)", flush=True)
        mean = val["ccc_mean"] if val["ccc_mean"] is not None else -math.inf
        if mean > state["best"]["score"]:
            state["best"] = {"score": mean, "epoch": epoch, "val": val, "preds": preds,
                             "state": {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}}
            state["stale"] = 0
        else:
            state["stale"] += 1
        state["epoch"] = epoch + 1
        state["done"] = state["stale"] >= train_cfg.patience or state["epoch"] >= train_cfg.epochs
        _save_resume(last, fp, model, optim, sched, scaler, order_gen, state)

    best = state["best"]
    if best["epoch"] < 0:
        raise PipelineError(
            f"fold {fold}: validation CCC was undefined (NaN) in all {state['epoch']} epoch(s): the predictions are not "
            f"finite (training diverged, or the features hold NaN) or they and the labels of the validation trials "
            f"{val_trials[:3]}{'...' if len(val_trials) > 3 else ''} are constant; nothing was written"
        )
    return _write_outputs(fold, model_cfg, train_cfg, bank, norm, best, state, val_trials, train_trials,
                          random_init, dev, model_dir, Path(metrics_file), times, t_start)


def _write_outputs(fold: int, model_cfg: ModelConfig, train_cfg: TrainConfig, bank: FeatureBank, norm: Normaliser,
                   best: dict[str, Any], state: dict[str, Any], val_trials: list[str], train_trials: list[str],
                   random_init: list[str], dev: torch.device, model_dir: Path, metrics_file: Path,
                   times: StepTimes, t_start: float) -> dict[str, Any]:
    features = {m: checkpoint.feature_record(bank.attrs[m]) for m in bank.modalities}
    made_by = provenance.record()
    checkpoint.save(model_dir / "model.pt", {
        "fold": fold,
        "epoch": best["epoch"],
        "model": as_dict(model_cfg),
        "train": as_dict(train_cfg),
        "row_shapes": {m: list(s) for m, s in bank.row_shapes.items()},
        "window": train_cfg.window,
        "hop": train_cfg.hop,
        "norm": norm.state(),
        "features": features,
        "provenance": made_by,
        "state_dict": best["state"],
    })
    np.savez(model_dir / "val_predictions.npz", **best["preds"])
    val = best["val"]
    meta = {
        "fold": fold,
        "val_trials": val_trials,
        "train_trials": train_trials,
        "best_epoch": best["epoch"],
        "modalities": list(bank.modalities),
        "random_init_backbones": random_init,
        "features": features,
        "provenance": made_by,
        "val": {k: val[k] for k in ("ccc_valence", "ccc_arousal", "ccc_mean")},
        "per_trial": val["per_trial"],
    }
    (model_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    metrics = {
        "fold": fold,
        "ccc_valence": val["ccc_valence"],
        "ccc_arousal": val["ccc_arousal"],
        "ccc_mean": val["ccc_mean"],
        "best_epoch": best["epoch"],
        "epochs_run": state["epoch"],
        "random_init_backbones": random_init,
        "train_frames": int(sum(bank.lengths[bank.index[t]] for t in train_trials)),
        "bank": {m: bank.placement[m] for m in bank.modalities},
        "device": str(dev),
        "seconds": round(time.perf_counter() - t_start, 2),
        "windows_per_s": round(times.windows / times.step_s, 2) if times.step_s else None,
        "data_wait_share": json_float(times.wait_share),
    }
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"fold {fold}: best epoch {best['epoch']} val ccc mean {val['ccc_mean']} "
          f"(v {val['ccc_valence']}, a {val['ccc_arousal']}) in {metrics['seconds']} s")
    return {**metrics, "timing": times}


def _save_resume(path: Path, fp: str, model: FusionModel, optim: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                 order_gen: torch.Generator, state: dict[str, Any]) -> None:
    """Everything needed to continue after this epoch as if never stopped (RNG states included)."""
    best = state["best"]
    resume.save(path, {
        "format": RESUME_FORMAT,
        "fingerprint": fp,
        "model": model.state_dict(),
        "optim": optim.state_dict(),
        "sched": sched.state_dict(),
        "scaler": scaler.state_dict(),
        "order_gen": order_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "state": {**state, "best": {**best, "preds": {t: torch.from_numpy(p) for t, p in best.get("preds", {}).items()}}},
    })


def _load_resume(path: Path, fp: str, model: FusionModel, optim: torch.optim.Optimizer,
                 sched: torch.optim.lr_scheduler.LRScheduler, scaler: torch.amp.GradScaler,
                 order_gen: torch.Generator, fresh: dict[str, Any], fold: int) -> dict[str, Any]:
    """Restore a run from ``path`` when it was made with the same inputs and params; else start afresh."""
    doc = resume.load(path, RESUME_FORMAT, fp, f"train fold {fold}")
    if doc is None:
        print(f"train fold {fold}: starting at epoch 0", flush=True)
        return fresh
    model.load_state_dict(doc["model"])
    optim.load_state_dict(doc["optim"])
    sched.load_state_dict(doc["sched"])
    scaler.load_state_dict(doc["scaler"])
    order_gen.set_state(doc["order_gen"])
    torch.set_rng_state(doc["torch_rng"])
    if doc["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(doc["cuda_rng"])
    state = doc["state"]
    state["best"]["preds"] = {t: p.numpy() for t, p in state["best"].get("preds", {}).items()}
    print(f"train fold {fold}: resuming after epoch {state['epoch'] - 1} from {path}", flush=True)
    return state
