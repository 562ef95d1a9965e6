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

Four steps: :func:`read` (folds, labels, the feature bank, the normaliser), :func:`build` (model, optimiser, learning-rate
schedule, gradient scaler), :func:`loop` (epochs with validation, early stopping and a resume checkpoint after each)
and the writes (:func:`write_model`: checkpoint, validation predictions, meta; :func:`write_metrics`). The fold's trials sit in a feature bank
(pipeline/training/bank.py); a batch is one gather of window rows (pipeline/training/windows.py), normalised with the
training folds' statistics on the compute device; the training step is pipeline/training/fusion.py. Validation
predicts whole trials with overlapping windows of every validation trial batched together
(pipeline/training/inference.py).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.common import provenance
from pipeline.common.config import ModelConfig, TrainConfig, as_dict
from pipeline.common.devices import resolve_device
from pipeline.common.errors import InputError, PipelineError
from pipeline.common.prefetch import read_ahead
from pipeline.io.prepared import load_folds, read_labels
from pipeline.scoring.metrics import json_float
from pipeline.training import checkpoint, resume
from pipeline.training.bank import FeatureBank
from pipeline.training.fusion import (
    PREFETCH,
    Learner,
    StepTimes,
    build_learner,
    epoch_batches,
    run_fingerprint,
    score,
    seed_everything,
    train_epoch,
)
from pipeline.training.inference import INFER_BATCH, predict
from pipeline.training.live import write_curves
from pipeline.training.normalise import Normaliser
from pipeline.training.schedule import lr_factor
from pipeline.training.windows import window_starts

MIN_LR_FRACTION = 0.05  # cosine schedule ends at this fraction of train.lr
RESUME_FORMAT = "va-pipeline-resume/3"  # 3: the loop state as LoopState.to_doc writes it


# ------------------------------------------------------------------------------------------------ state
@dataclass
class FoldData:
    """What :func:`read` gives: fold ``fold``'s validation trials and the other folds' training trials (sorted
    names), their labels ``{trial: (N, 2) float32}``, the feature bank holding all of them, the normaliser fitted on
    the training trials, the modalities whose features come from random-init backbones, and ``lengths``
    ``{training trial: frames}``."""

    fold: int
    val_trials: list[str]
    train_trials: list[str]
    labels: dict[str, np.ndarray]
    bank: FeatureBank
    norm: Normaliser
    random_init: list[str]
    lengths: dict[str, int]


@dataclass
class Best:
    """The best epoch so far (highest validation mean CCC; none yet: epoch -1): its mean CCC, index, scores
    (:func:`~pipeline.training.fusion.score`), predictions ``{trial: (N, 2) float32}`` and weights (CPU copies)."""

    ccc_mean: float = -math.inf
    epoch: int = -1
    val: dict[str, Any] = field(default_factory=dict)
    preds: dict[str, np.ndarray] = field(default_factory=dict)
    weights: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class LoopState:
    """Where the epoch loop stands: what a resume checkpoint holds beside the model, optimiser and generators."""

    epoch: int = 0  # the next epoch to run
    step: int = 0  # optimiser steps taken
    stale: int = 0  # epochs since the best one
    history: list[dict[str, float | None]] = field(default_factory=list)  # one row of curves per epoch run
    done: bool = False  # stopped early, or ran every epoch
    best: Best = field(default_factory=Best)

    def end_epoch(self, val: dict[str, Any], preds: dict[str, np.ndarray], model: torch.nn.Module,
                  cfg: TrainConfig) -> None:
        """Keep epoch ``self.epoch`` when its mean CCC beats the best (an undefined one never does), then move on;
        done after ``cfg.patience`` epochs without a better one or after ``cfg.epochs`` epochs."""
        mean = val["ccc_mean"] if val["ccc_mean"] is not None else -math.inf
        if mean > self.best.ccc_mean:
            weights = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
            self.best = Best(mean, self.epoch, val, preds, weights)
            self.stale = 0
        else:
            self.stale += 1
        self.epoch += 1
        self.done = self.stale >= cfg.patience or self.epoch >= cfg.epochs

    def to_doc(self) -> dict[str, Any]:
        """Plain values and tensors, which ``torch.load(weights_only=True)`` reads back (:meth:`from_doc`)."""
        best = {**vars(self.best), "preds": {t: torch.from_numpy(p) for t, p in self.best.preds.items()}}
        return {**vars(self), "best": best}

    @classmethod
    def from_doc(cls, doc: Mapping[str, Any]) -> LoopState:
        best = Best(**{**doc["best"], "preds": {t: p.numpy() for t, p in doc["best"]["preds"].items()}})
        return cls(**{**doc, "best": best})


# ------------------------------------------------------------------------------------------------ stage
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
    model_dir = Path(model_dir)
    dev = resolve_device(device)
    seed_everything(train_cfg.seed + fold, dev)
    data = read(fold, model_cfg, train_cfg, Path(prepared), Path(features), dev, progress)
    order_gen = torch.Generator().manual_seed(train_cfg.seed * 1000 + fold)  # the order of training windows
    learner = build(model_cfg, train_cfg, data, dev)

    fp = run_fingerprint(fold, model_cfg, train_cfg, [data.val_trials, data.train_trials], data.bank, data.labels)
    last = resume_path(model_dir)
    state = _load_resume(last, fp, learner, order_gen, fold) if resume else LoopState()
    times = loop(data, model_cfg, train_cfg, learner, order_gen, state, plots_dir,
                 save=lambda s: _save_resume(last, fp, learner, order_gen, s))
    if state.best.epoch < 0:
        val = data.val_trials
        raise PipelineError(
            f"fold {fold}: validation CCC was undefined (NaN) in all {state.epoch} epoch(s): the predictions are not "
            f"finite (training diverged, or the features hold NaN) or they and the labels of the validation trials "
            f"{val[:3]}{'...' if len(val) > 3 else ''} are constant; nothing was written"
        )
    write_model(data, model_cfg, train_cfg, state.best, model_dir)
    metrics = write_metrics(data, state, times, dev, Path(metrics_file), t_start)
    return {**metrics, "timing": times}


def read(fold: int, model_cfg: ModelConfig, train_cfg: TrainConfig, prepared: Path, features: Path,
         dev: torch.device, progress: bool) -> FoldData:
    """Fold ``fold``'s trials from ``prepared/folds.json`` (validation: that fold; training: the others), their
    labels, a feature bank of all of them from ``features`` on ``dev`` (placement ``train.bank``) and the
    normaliser of the training trials' real rows."""
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
    return FoldData(fold, val_trials, train_trials, labels, bank, norm, random_init, bank.lengths_of(train_trials))


def build(model_cfg: ModelConfig, train_cfg: TrainConfig, data: FoldData, dev: torch.device) -> Learner:
    """The model (drawn from torch's global generator), AdamW, the schedule (warm-up over ``train.warmup_epochs``,
    then cosine down to :data:`MIN_LR_FRACTION` at the end of ``train.epochs``; steps counted from the training
    trials' windows) and the gradient scaler."""
    n_windows = sum(len(window_starts(n, train_cfg.window, train_cfg.hop)) for n in data.lengths.values())
    steps_per_epoch = math.ceil(n_windows / train_cfg.batch)  # resampling keeps the count within a few windows
    total_steps = max(1, train_cfg.epochs * steps_per_epoch)
    warmup = train_cfg.warmup_epochs * steps_per_epoch
    return build_learner(model_cfg, train_cfg, data.bank.row_shapes, dev,
                         lambda s: lr_factor(s, warmup, total_steps, MIN_LR_FRACTION))


def loop(data: FoldData, model_cfg: ModelConfig, train_cfg: TrainConfig, learner: Learner, order_gen: torch.Generator,
         state: LoopState, plots_dir: Path | None, save: Callable[[LoopState], None]) -> StepTimes:
    """Epochs from ``state.epoch`` until ``state.done``: train on the epoch's plan, predict and score the validation
    trials, write the curves, keep the best epoch, then hand ``state`` (updated in place) to ``save``. Returns where
    the training time went."""
    bank, zm = data.bank, model_cfg.zero_missing
    on_host = any(bank.placement[m] != "device" for m in bank.modalities)
    times = StepTimes()
    while not state.done and state.epoch < train_cfg.epochs:
        t_epoch = time.perf_counter()
        plan = epoch_batches(bank, data.lengths, train_cfg, [train_cfg.seed, data.fold, state.epoch], order_gen)
        make = (bank.batch(w, data.norm, zm) for w in plan)
        loss = train_epoch(learner, read_ahead(make, PREFETCH) if on_host else make, times)
        state.step += len(plan)

        learner.model.eval()
        preds = predict(learner.model, bank, data.norm, data.val_trials, train_cfg.window, train_cfg.hop, zm,
                        INFER_BATCH, learner.adtype)
        val = score(preds, data.labels)
        state.history.append({"train/loss": loss, "val/ccc_valence": val["ccc_valence"],
                              "val/ccc_arousal": val["ccc_arousal"], "val/ccc_mean": val["ccc_mean"],
                              "lr": learner.optim.param_groups[0]["lr"]})
        write_curves(plots_dir, state.history)
        times.epochs.append(time.perf_counter() - t_epoch)
        print(f"fold {data.fold} epoch {state.epoch:3d} loss {loss:.4f} val ccc v {val['ccc_valence']} "
              f"a {val['ccc_arousal']} mean {val['ccc_mean']} ({times.epochs[-1]:.1f} s)", flush=True)
        state.end_epoch(val, preds, learner.model, train_cfg)
        save(state)
    return times


# ------------------------------------------------------------------------------------------------ outputs
def write_model(data: FoldData, model_cfg: ModelConfig, train_cfg: TrainConfig, best: Best, model_dir: Path) -> None:
    """``model_dir/model.pt`` (the best epoch's weights with everything needed to use them), ``val_predictions.npz``
    and ``meta.json``."""
    bank = data.bank
    features = {m: checkpoint.feature_record(bank.attrs[m]) for m in bank.modalities}
    made_by = provenance.record()
    checkpoint.save(model_dir / "model.pt", {
        "fold": data.fold,
        "epoch": best.epoch,
        "model": as_dict(model_cfg),
        "train": as_dict(train_cfg),
        "row_shapes": {m: list(s) for m, s in bank.row_shapes.items()},
        "window": train_cfg.window,
        "hop": train_cfg.hop,
        "norm": data.norm.state(),
        "features": features,
        "provenance": made_by,
        "state_dict": best.weights,
    })
    np.savez(model_dir / "val_predictions.npz", **best.preds)
    val = best.val
    meta = {
        "fold": data.fold,
        "val_trials": data.val_trials,
        "train_trials": data.train_trials,
        "best_epoch": best.epoch,
        "modalities": list(bank.modalities),
        "random_init_backbones": data.random_init,
        "features": features,
        "provenance": made_by,
        "val": {k: val[k] for k in ("ccc_valence", "ccc_arousal", "ccc_mean")},
        "per_trial": val["per_trial"],
    }
    (model_dir / "meta.json").write_text(json.dumps(meta, indent=1) + "\n")


def write_metrics(data: FoldData, state: LoopState, times: StepTimes, dev: torch.device, metrics_file: Path,
                  t_start: float) -> dict[str, Any]:
    """``metrics_file``: the best epoch's CCC (all validation frames concatenated), the epochs run, where the bank
    lived, and throughput (``seconds`` since ``t_start``, a ``time.perf_counter`` value). Returns what it wrote."""
    bank, best = data.bank, state.best
    val = best.val
    metrics = {
        "fold": data.fold,
        "ccc_valence": val["ccc_valence"],
        "ccc_arousal": val["ccc_arousal"],
        "ccc_mean": val["ccc_mean"],
        "best_epoch": best.epoch,
        "epochs_run": state.epoch,
        "random_init_backbones": data.random_init,
        "train_frames": int(sum(data.lengths.values())),
        "bank": {m: bank.placement[m] for m in bank.modalities},
        "device": str(dev),
        "seconds": round(time.perf_counter() - t_start, 2),
        "windows_per_s": round(times.windows / times.step_s, 2) if times.step_s else None,
        "data_wait_share": json_float(times.wait_share),
    }
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(metrics, indent=1) + "\n")
    print(f"fold {data.fold}: best epoch {best.epoch} val ccc mean {val['ccc_mean']} "
          f"(v {val['ccc_valence']}, a {val['ccc_arousal']}) in {metrics['seconds']} s")
    return metrics


# ------------------------------------------------------------------------------------------------ resuming
def resume_path(model_dir: Path) -> Path:
    """``models/.resume/fold<k>/last.pt`` beside ``models/fold<k>``."""
    model_dir = Path(model_dir)
    return model_dir.parent / ".resume" / model_dir.name / "last.pt"


def _save_resume(path: Path, fp: str, learner: Learner, order_gen: torch.Generator, state: LoopState) -> None:
    """Everything needed to continue after this epoch as if never stopped (RNG states included)."""
    resume.save(path, {
        "format": RESUME_FORMAT,
        "fingerprint": fp,
        "model": learner.model.state_dict(),
        "optim": learner.optim.state_dict(),
        "sched": learner.sched.state_dict(),
        "scaler": learner.scaler.state_dict(),
        "order_gen": order_gen.get_state(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "state": state.to_doc(),
    })


def _load_resume(path: Path, fp: str, learner: Learner, order_gen: torch.Generator, fold: int) -> LoopState:
    """Restore a run from ``path`` when it was made with the same inputs and params; else a fresh state."""
    doc = resume.load(path, RESUME_FORMAT, fp, f"train fold {fold}")
    if doc is None:
        print(f"train fold {fold}: starting at epoch 0", flush=True)
        return LoopState()
    learner.model.load_state_dict(doc["model"])
    learner.optim.load_state_dict(doc["optim"])
    learner.sched.load_state_dict(doc["sched"])
    learner.scaler.load_state_dict(doc["scaler"])
    order_gen.set_state(doc["order_gen"])
    torch.set_rng_state(doc["torch_rng"])
    if doc["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(doc["cuda_rng"])
    state = LoopState.from_doc(doc["state"])
    print(f"train fold {fold}: resuming after epoch {state.epoch - 1} from {path}", flush=True)
    return state
