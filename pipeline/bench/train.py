"""``python -m pipeline bench train``: the training data path, the model step and the whole training step, with
ratios measured in the same run on the same device, as one JSON line (STYLE.md 17: it imports the training parts
the stage is made of, pipeline/training/fusion.py, instead of running the stage).

Data: with ``--frames N``, a synthetic prepared folder and stores in Aff-Wild2's shapes and trial lengths (N frames,
6 folds; :func:`~pipeline.training.synthetic.synthetic_affwild`, built once under ``work``); else ``data/prepared``
+ ``features`` when they exist, else a demo-sized synthetic set. Fold 0 validates, the rest train, as ``train@0``.
``--paper-size`` widens the model to the paper's size (:data:`PAPER_SIZE`) with a batch of :data:`PAPER_BATCH`
windows.

- ``gather_windows_per_s``: the rows of training batches taken with one bare indexing operation per modality of the
  bank (``FeatureBank.take``), converted to float32 (what the model takes), no normalisation: the ceiling memory
  bandwidth allows;
- ``data_windows_per_s``: the data path, ``FeatureBank.batch`` (gather, normalise, mask, labels), no model;
- ``model_windows_per_s``: forward, backward and optimiser step on one device-resident batch of the real shapes;
- ``pipeline_windows_per_s``: the real training step (``fusion.train_epoch`` over bank batches, prefetched when rows
  live on the host), ``ratio`` = pipeline / model;
- ``infer_windows_per_s``: whole-trial validation (``inference.predict``) over a quarter of fold 0's trials;
- ``epoch_s``: one epoch of this fold at these rates (training windows at the pipeline rate, validation windows at
  the inference rate), ``projected_affwild2_6fold_s``: 6 folds x 30 epochs of it scaled to 2.8 M frames, plus the
  bank build and statistics of each fold scaled likewise;
- ``peak_host_mb`` (maximum RSS), ``peak_gpu_mb`` (``torch.cuda.max_memory_allocated``).
"""

from __future__ import annotations

import json
import resource
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from pipeline.bench.timing import calls_per_s, sync
from pipeline.common import config
from pipeline.common.devices import resolve_device
from pipeline.common.prefetch import read_ahead
from pipeline.io.prepared import load_folds, read_labels
from pipeline.training.bank import FeatureBank, Placement
from pipeline.training.fusion import (
    PREFETCH,
    StepTimes,
    build_learner,
    epoch_batches,
    seed_everything,
    train_epoch,
)
from pipeline.training.inference import predict
from pipeline.training.normalise import Normaliser
from pipeline.training.synthetic import make_synthetic, synthetic_affwild
from pipeline.training.windows import Windows, inference_windows, window_starts

BENCH_STEPS = 12  # optimiser steps measured (after one warm-up epoch's worth is not needed: CPU has no warm-up)
AFFWILD2_FRAMES = 2_800_000  # Aff-Wild2's annotated frames (paper 4.1): what the projection scales to
AFFWILD2_EPOCHS = 30
PAPER_SIZE = {"tcn_channels": 128, "d_model": 256, "ff_dim": 512, "layers": 4, "heads": 4}
PAPER_BATCH = 16
MIN_SECONDS = 2.0  # each rate is timed over at least this long, after warm-up


@dataclass
class Fold0:
    """Fold 0 of the bench data, loaded as ``train@0`` loads it, with how long the bank and statistics took."""

    val: list[str]  # validation trials
    lengths: dict[str, int]  # {training trial: frames}
    bank: FeatureBank
    norm: Normaliser
    bank_s: float
    stats_s: float


def run(work: Path, device: str = "auto", frames: int | None = None, paper_size: bool = False,
        steps: int = BENCH_STEPS) -> dict:
    """Measure the training data path and step on fold 0 and print one JSON line (see the README, "Scale")."""
    model_cfg, train_cfg = configs(paper_size)
    prepared, features, source = bench_data(Path(work), frames, model_cfg.modalities)
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    seed_everything(train_cfg.seed, dev)
    fold = load_fold0(prepared, features, model_cfg.modalities, train_cfg.bank, dev)
    bank, norm, zm, b = fold.bank, fold.norm, model_cfg.zero_missing, train_cfg.batch
    plan = epoch_batches(bank, fold.lengths, train_cfg, [0, 0, 0], torch.Generator().manual_seed(0))
    rates = data_rates(bank, norm, plan, zm, b)

    learner = build_learner(model_cfg, train_cfg, bank.row_shapes, dev, lambda s: 1.0)
    fixed = bank.batch(plan[0], norm, zm)  # device-resident inputs of the real shapes, reused
    rates["model"] = _rate(lambda: train_epoch(learner, [dict(fixed)], StepTimes()), dev, b)
    on_host = any(bank.placement[m] != "device" for m in bank.modalities)
    times = StepTimes()
    k = max(2, min(steps, len(plan)))

    def pipeline_steps() -> None:  # the real step: gather from the bank, then train (as the train stage does)
        make = (bank.batch(w, norm, zm) for w in plan[:k])
        train_epoch(learner, read_ahead(make, PREFETCH) if on_host else make, times)

    rates["pipeline"] = _rate(pipeline_steps, dev, k * b, warmup=0)
    learner.model.eval()
    infer_trials = fold.val[: max(1, len(fold.val) // 4)]
    n_infer = len(inference_windows(bank.lengths_of(infer_trials), bank.index, train_cfg.window, train_cfg.hop)[0])
    rates["infer"] = _rate(lambda: predict(learner.model, bank, norm, infer_trials, train_cfg.window, train_cfg.hop,
                                           zm, autocast_dtype=learner.adtype), dev, n_infer, warmup=0)
    line = report(fold, train_cfg, rates, times, source, dev, paper_size)
    print(json.dumps(line), flush=True)
    return line


def configs(paper_size: bool) -> tuple[config.ModelConfig, config.TrainConfig]:
    """``model`` and ``train`` from ./params.yaml (defaults without one), widened to :data:`PAPER_SIZE` and
    :data:`PAPER_BATCH` with ``paper_size``."""
    raw = config.read_params() if config.DEFAULT_PARAMS.exists() else {}
    model_cfg = config.section("model", raw=raw)
    train_cfg = config.section("train", raw=raw)
    if paper_size:
        model_cfg = config.build(config.ModelConfig, {**config.as_dict(model_cfg), **PAPER_SIZE}, "model")
        train_cfg = config.build(config.TrainConfig, {**config.as_dict(train_cfg), "batch": PAPER_BATCH}, "train")
    return model_cfg, train_cfg


def bench_data(work: Path, frames: int | None, modalities: Sequence[str]) -> tuple[Path, Path, str]:
    """``(prepared, features, what they are)``: Aff-Wild2-shaped synthetic data of ``frames`` frames under ``work``;
    else ``data/prepared`` and ``features`` when they hold every modality; else a demo-sized synthetic set under
    ``work`` (made once)."""
    if frames:
        prepared, features = synthetic_affwild(work, frames)
        return prepared, features, f"synthetic Aff-Wild2 shapes, {frames} frames"
    prepared, features = Path("data/prepared"), Path("features")
    if (prepared / "folds.json").exists() and all((features / f"{m}.zarr" / "zarr.json").exists() for m in modalities):
        return prepared, features, "data/prepared"
    if not (work / "prepared" / "folds.json").exists():
        make_synthetic(work)
    return work / "prepared", work / "features", "synthetic demo size"


def load_fold0(prepared: Path, features: Path, modalities: Sequence[str], placement: Placement,
               dev: torch.device) -> Fold0:
    """Fold 0's trials, their labels, the bank of all of them on ``dev`` and the training trials' statistics, timed."""
    folds = load_folds(prepared / "folds.json")
    val, trn = sorted(folds[0]), sorted(t for f in folds[1:] for t in f)
    labels = read_labels(prepared, trn + val)
    t0 = time.perf_counter()
    bank = FeatureBank.build(features, list(modalities), trn + val, dev, placement, labels)
    sync(dev)
    bank_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    norm = bank.fit_normaliser(trn)
    return Fold0(val, bank.lengths_of(trn), bank, norm, bank_s, time.perf_counter() - t0)


def data_rates(bank: FeatureBank, norm: Normaliser, plan: list[Windows], zero_missing: bool,
               batch: int) -> dict[str, float]:
    """Windows per second of the bare gather (the ceiling) and of the data path (``FeatureBank.batch``), cycling
    through ``plan``: ``{"gather": ..., "data": ...}``."""
    it = iter(range(10**9))

    def gather() -> None:  # one bare indexing operation per modality, converted to float32
        rows = plan[next(it) % len(plan)].rows.reshape(-1)  # (B, T) -> (B*T,)
        for m in bank.modalities:
            bank.take(m, rows).float()

    def data() -> None:  # what the model takes (normalised, masked, labels)
        bank.batch(plan[next(it) % len(plan)], norm, zero_missing)

    return {"gather": _rate(gather, bank.device, batch), "data": _rate(data, bank.device, batch)}


def report(fold: Fold0, train_cfg: config.TrainConfig, rates: dict[str, float], times: StepTimes, source: str,
           dev: torch.device, paper_size: bool) -> dict[str, Any]:
    """The JSON line: the rates (windows per second), one epoch of this fold at them and its projection to
    Aff-Wild2's size, where the bank lives, and peak memory."""
    bank, w, hop = fold.bank, train_cfg.window, train_cfg.hop
    frames_total = sum(fold.lengths.values()) + sum(bank.lengths_of(fold.val).values())
    train_windows = sum(len(window_starts(n, w, hop)) for n in fold.lengths.values())
    val_windows = len(inference_windows(bank.lengths_of(fold.val), bank.index, w, hop)[0])
    epoch_s = train_windows / rates["pipeline"] + val_windows / rates["infer"]
    scale = AFFWILD2_FRAMES / frames_total
    per_fold_fixed = (fold.bank_s + fold.stats_s) * scale
    return {
        "bench": "train",
        "data": source,
        "frames_total": frames_total,
        "device": str(dev),
        "bank": bank.describe(),
        "model": "paper-size" if paper_size else "params.yaml",
        "batch": train_cfg.batch,
        "window": w,
        "gather_windows_per_s": round(rates["gather"], 1),
        "data_windows_per_s": round(rates["data"], 1),
        "data_over_gather": round(rates["data"] / rates["gather"], 3),
        "model_windows_per_s": round(rates["model"], 2),
        "pipeline_windows_per_s": round(rates["pipeline"], 2),
        "ratio": round(rates["pipeline"] / rates["model"], 3),
        "data_wait_share": round(times.wait_share, 4),
        "infer_windows_per_s": round(rates["infer"], 2),
        "bank_build_s": round(fold.bank_s, 2),
        "stats_s": round(fold.stats_s, 2),
        "epoch_s": round(epoch_s, 1),
        "projected_affwild2_6fold_s": round(6 * (AFFWILD2_EPOCHS * epoch_s * scale + per_fold_fixed), 0),
        "peak_host_mb": round(_peak_rss_mb(), 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }


def _rate(step: Callable[[], Any], device: torch.device, per_call: int, min_seconds: float = MIN_SECONDS,
          warmup: int = 1) -> float:
    """Windows per second of ``step`` (one call = ``per_call`` windows), synchronised around the timed region."""
    return per_call * calls_per_s(step, device, min_seconds, min_calls=2, warmup=warmup)


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
