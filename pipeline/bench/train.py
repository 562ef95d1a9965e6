"""``python -m pipeline bench train``: the training data path, the model step and the whole training step, with
ratios measured in the same run on the same device, as one JSON line (STYLE.md 17: it imports the stage's parts).

Data: with ``--frames N``, a synthetic prepared folder and stores in Aff-Wild2's shapes and trial lengths (N frames,
6 folds; :func:`synthetic_affwild`, built once under ``work``); else ``data/prepared`` + ``features`` when they
exist, else a demo-sized synthetic set. Fold 0 validates, the rest train, as ``train@0``. ``--paper-size`` widens the
model to the paper's size (:data:`PAPER_SIZE`) with a batch of :data:`PAPER_BATCH` windows.

- ``gather_windows_per_s``: the rows of training batches taken with one bare indexing operation per modality of the
  bank, converted to float32 (what the model takes), no normalisation: the ceiling memory bandwidth allows;
- ``data_windows_per_s``: the data path, ``FeatureBank.batch`` (gather, normalise, mask, labels), no model;
- ``model_windows_per_s``: forward, backward and optimiser step on one device-resident batch of the real shapes;
- ``pipeline_windows_per_s``: the real training step (``train.train_epoch`` over bank batches, prefetched when rows
  live on the host), ``ratio`` = pipeline / model;
- ``infer_windows_per_s``: whole-trial validation (``windows.predict``) over a quarter of fold 0's trials;
- ``epoch_s``: one epoch of this fold at these rates (training windows at the pipeline rate, validation windows at
  the inference rate), ``projected_affwild2_6fold_s``: 6 folds x 30 epochs of it scaled to 2.8 M frames, plus the
  bank build and statistics of each fold scaled likewise;
- ``peak_host_mb`` (maximum RSS), ``peak_gpu_mb`` (``torch.cuda.max_memory_allocated``).
:func:`make_synthetic` is also what the tests train on.
"""

from __future__ import annotations

import json
import resource
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from tqdm import tqdm

from pipeline.common import config
from pipeline.common.devices import amp_dtype, resolve_device
from pipeline.common.prefetch import read_ahead
from pipeline.common.provenance import RANDOM_INIT
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import (
    INDEX_FORMAT,
    PreparedIndex,
    Trial,
    Video,
    index_to_json,
    load_folds,
    read_labels,
    write_labels,
)
from pipeline.io.timebase import SAMPLE_RATE
from pipeline.nn import FusionModel
from pipeline.training.bank import FeatureBank
from pipeline.training.windows import inference_windows, predict, window_starts

BENCH_STEPS = 12  # optimiser steps measured (after one warm-up epoch's worth is not needed: CPU has no warm-up)

ROW_SHAPES = {"iresnet": (512, 3, 3), "vggish": (128,), "mfcc": (39,)}


def make_synthetic(
    root: Path,
    n_trials: int = 9,
    n_test: int = 2,
    frames: int = 430,
    n_folds: int = 6,
    seed: int = 0,
    row_shapes: dict[str, tuple[int, ...]] | None = None,
    dtype: str | dict[str, str] = "float16",
    noise: float = 1.0,
    lengths: list[int] | None = None,
    progress: bool = False,
) -> tuple[Path, Path]:
    """Write ``root/prepared`` (index.json, frames.h5, labels.h5, folds.json) and ``root/features/<name>.zarr`` stores.

    Labels are smooth latent valence/arousal in (-1, 1); the visual map carries valence (and some arousal) through
    fixed random directions, vggish and mfcc carry arousal, each with Gaussian noise of std ``noise`` and a
    per-trial offset (what normalisation and temporal context must see past). Trial lengths vary around
    ``frames``, or are ``lengths`` (the last ``n_test`` of them test trials); one trial has its first frames
    without a face and one test trial (or, without test trials, the last trial) has no audio. ``dtype``: the stores'
    dtype, or one per modality. Stores are labelled random-init. Returns ``(prepared, features)``.
    """
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    shapes = dict(ROW_SHAPES if row_shapes is None else row_shapes)
    dtypes = {m: dtype if isinstance(dtype, str) else dtype[m] for m in shapes}
    prepared, features = Path(root) / "prepared", Path(root) / "features"
    prepared.mkdir(parents=True, exist_ok=True)
    features.mkdir(parents=True, exist_ok=True)
    if lengths is not None:
        n_trials = len(lengths) - n_test
    total = n_trials + n_test
    width = max(2, len(str(total - 1)))
    names = [f"syn{i:0{width}d}" for i in range(total)]
    if lengths is None:
        lengths = [int(frames + rng.integers(-frames // 5, frames // 5 + 1)) for _ in names]
    length = dict(zip(names, (int(n) for n in lengths)))
    split = {t: ("test" if i >= n_trials else ("val" if i >= n_trials - 2 else "train")) for i, t in enumerate(names)}
    fps = {t: (30.0 if i % 2 == 0 else 25.0) for i, t in enumerate(names)}
    silent = names[-1]

    latent, labels = {}, {}
    for t in names:
        z = gaussian_filter1d(rng.normal(size=(length[t] + 12, 2)), sigma=25, axis=0)
        z = np.tanh(1.3 * z / z.std(0))
        latent[t] = z[12:]  # what the features show now
        labels[t] = z[:-12].astype(np.float32)  # labels lag the signal by 12 frames, as raters do
    directions = {m: rng.normal(size=(2, int(np.prod(s)))) / np.sqrt(np.prod(s)) * 4 for m, s in shapes.items()}
    weight = {"iresnet": (1.0, 0.4), "vggish": (0.2, 1.0), "mfcc": (0.0, 1.0)}

    videos, trials = {}, []
    with h5py.File(prepared / "frames.h5", "w") as h5:
        for t in names:
            n = length[t]
            videos[t] = Video(t, f"videos/{t}.mp4", fps[t], n, t != silent, f"audio/{t}.wav", n / fps[t])
            trials.append(Trial(t, split[t], t, fps[t], n, t != silent, tuple(range(1, n + 1))))
            g = h5.create_group(t)
            g["frames"] = np.zeros((n, 8, 8, 3), np.uint8)
            face = np.ones(n, bool)
            if t == names[0]:
                face[:10] = False
            g["face"] = face
    write_labels(prepared / "labels.h5", {t: labels[t] for t in names if split[t] != "test"})
    index = PreparedIndex(prepared, 8, SAMPLE_RATE, videos, tuple(trials))
    (prepared / "index.json").write_text(json.dumps(index_to_json(index, "last")))
    labelled = [t for t in names if split[t] != "test"]
    folds = [labelled[k::n_folds] for k in range(n_folds)]
    (prepared / "folds.json").write_text(json.dumps({"n_folds": n_folds, "scheme": "random", "seed": seed, "folds": folds}))

    bar = tqdm(total=sum(length.values()) * len(shapes), unit="row", desc="synthetic stores", disable=not progress)
    for m, shape in shapes.items():
        store = FeatureStore.open_or_create(
            features / f"{m}.zarr",
            extractor=m,
            row_shape=shape,
            dtype=dtypes[m],
            trials=length,
            fps=fps,
            fingerprint={"synthetic": seed, "noise": noise},
            attrs={"weights": RANDOM_INIT},
            n_buckets=2 if total < 64 else 16,
        )
        wv, wa = weight.get(m, (0.5, 0.5))
        dirs = torch.from_numpy(directions[m]).float()  # (2, D)
        for t in store.pending():
            n = length[t]
            lat = torch.from_numpy(latent[t]).float()  # (n, 2)
            signal = (wv * lat[:, :1]) * dirs[0] + (wa * lat[:, 1:]) * dirs[1]  # (n, D)
            offset = torch.from_numpy(rng.normal(size=signal.shape[1])).float() * 0.5
            rows = (signal + offset).add_(torch.randn(signal.shape, generator=gen), alpha=noise).numpy()
            mask = np.ones(n, bool)
            if m == "iresnet" and t == names[0]:
                mask[:10] = False
                rows[:10] = 0
            if m != "iresnet" and t == silent:  # the video without audio
                mask[:] = False
                rows[:] = 0
            store.append(t, 0, rows.reshape(n, *shape).astype(dtypes[m]), mask)
            bar.update(n)
        store.flush()
    bar.close()
    return prepared, features


AFFWILD2_FRAMES = 2_800_000  # Aff-Wild2's annotated frames (paper 4.1): what the projection scales to
AFFWILD2_EPOCHS = 30
TRIAL_MIN, TRIAL_MAX = 300, 25_000  # Aff-Wild2's shortest and longest trials, in frames
PAPER_SIZE = {"tcn_channels": 128, "d_model": 256, "ff_dim": 512, "layers": 4, "heads": 4}
PAPER_BATCH = 16
MIN_SECONDS = 2.0  # each rate is timed over at least this long, after warm-up


def affwild_lengths(frames_total: int, seed: int = 0) -> list[int]:
    """Trial lengths in Aff-Wild2's range (300 to 25 000 frames), log-uniform (mean about 5 600 frames, Aff-Wild2's
    is about 4 700), summing to ``frames_total``."""
    rng = np.random.default_rng(seed)
    out: list[int] = []
    left = frames_total
    while left > 0:
        n = int(round(np.exp(rng.uniform(np.log(TRIAL_MIN), np.log(TRIAL_MAX)))))
        n = left if left - n < TRIAL_MIN else min(n, left)
        out.append(n)
        left -= n
    return out


def synthetic_affwild(work: Path, frames_total: int) -> tuple[Path, Path]:
    """A prepared folder and stores in Aff-Wild2's shapes (IResNet (512, 3, 3) and VGGish (128,) float16, MFCC
    (39,) float32) and trial lengths, ``frames_total`` frames in 6 folds; built once under ``work``."""
    root = Path(work) / f"affwild-{frames_total}"
    prepared, features = root / "prepared", root / "features"
    done = root / "complete"  # holds the prepared format it was made in: an older one is made again
    if done.exists() and done.read_text() == INDEX_FORMAT:
        return prepared, features
    shutil.rmtree(root, ignore_errors=True)
    make_synthetic(root, n_test=0, n_folds=6, lengths=affwild_lengths(frames_total),
                   dtype={"iresnet": "float16", "vggish": "float16", "mfcc": "float32"}, progress=True)
    done.write_text(INDEX_FORMAT)
    return prepared, features


def _rate(step: Callable[[], Any], device: torch.device, per_call: int, min_seconds: float = MIN_SECONDS,
          warmup: int = 1) -> float:
    """Windows per second of ``step`` (one call = ``per_call`` windows), synchronised around the timed region."""
    for _ in range(warmup):
        step()
    _sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        step()
        n += 1
        if n >= 2 and time.perf_counter() - t0 >= min_seconds:
            break
    _sync(device)
    return per_call * n / (time.perf_counter() - t0)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def run(work: Path, device: str = "auto", frames: int | None = None, paper_size: bool = False,
        steps: int = BENCH_STEPS) -> dict:
    """Measure the training data path and step on fold 0 and print one JSON line (see the README, "Scale")."""
    from pipeline.stages import train as stage

    work = Path(work)
    raw = config.read_params() if config.DEFAULT_PARAMS.exists() else {}
    model_cfg = config.section("model", raw=raw)
    train_cfg = config.section("train", raw=raw)
    if paper_size:
        model_cfg = config.build(config.ModelConfig, {**config.as_dict(model_cfg), **PAPER_SIZE}, "model")
        train_cfg = config.build(config.TrainConfig, {**config.as_dict(train_cfg), "batch": PAPER_BATCH}, "train")
    if frames:
        prepared, features = synthetic_affwild(work, frames)
        source = f"synthetic Aff-Wild2 shapes, {frames} frames"
    else:
        prepared, features = Path("data/prepared"), Path("features")
        source = "data/prepared"
        if not ((prepared / "folds.json").exists() and all((features / f"{m}.zarr" / "zarr.json").exists() for m in model_cfg.modalities)):
            source = "synthetic demo size"
            if not (work / "prepared" / "folds.json").exists():
                make_synthetic(work)
            prepared, features = work / "prepared", work / "features"
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    stage.seed_everything(train_cfg.seed, dev)

    folds = load_folds(prepared / "folds.json")
    val, trn = sorted(folds[0]), sorted(t for f in folds[1:] for t in f)
    labels = read_labels(prepared, trn + val)
    t0 = time.perf_counter()
    bank = FeatureBank.build(features, list(model_cfg.modalities), trn + val, dev, train_cfg.bank, labels)
    _sync(dev)
    bank_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    norm = bank.fit_normaliser(trn)
    stats_s = time.perf_counter() - t0
    lengths = {t: int(bank.lengths[bank.index[t]]) for t in trn}
    plan = stage.epoch_batches(bank, lengths, train_cfg, [0, 0, 0], torch.Generator().manual_seed(0))
    zm = model_cfg.zero_missing
    b = train_cfg.batch

    it = iter(range(10**9))

    def gather() -> None:  # the ceiling: one bare indexing operation per modality, converted to float32
        w = plan[next(it) % len(plan)]
        rows = w.rows.reshape(-1)
        for m in bank.modalities:
            bank._take(m, rows.to(dev) if bank.placement[m] == "device" else rows).float()

    def data() -> None:  # the data path: what the model takes (normalised, masked, labels)
        bank.batch(plan[next(it) % len(plan)], norm, zm)

    gather_wps = _rate(gather, dev, b)
    data_wps = _rate(data, dev, b)

    model = FusionModel.from_config(model_cfg, bank.row_shapes, max_len=train_cfg.window).to(dev)
    optim = torch.optim.AdamW(model.parameters(), lr=train_cfg.lr, weight_decay=train_cfg.weight_decay)
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0)
    adtype = amp_dtype(dev)
    scaler = torch.amp.GradScaler("cuda", enabled=adtype == torch.float16)
    fixed = bank.batch(plan[0], norm, zm)  # device-resident inputs of the real shapes, reused

    def model_step() -> None:
        stage.train_epoch(model, [dict(fixed)], optim, sched, scaler, adtype, stage.StepTimes())

    model_wps = _rate(model_step, dev, b)
    on_host = any(bank.placement[m] != "device" for m in bank.modalities)
    times = stage.StepTimes()
    k = max(2, min(steps, len(plan)))

    def pipeline_steps() -> None:  # the real step: gather from the bank, then train (as train.run does)
        make = (bank.batch(w, norm, zm) for w in plan[:k])
        stage.train_epoch(model, read_ahead(make, stage.PREFETCH) if on_host else make, optim, sched, scaler,
                          adtype, times)

    pipe_wps = _rate(pipeline_steps, dev, k * b, warmup=0)
    model.eval()
    infer_trials = val[: max(1, len(val) // 4)]
    n_infer = len(inference_windows(bank, infer_trials, train_cfg.window, train_cfg.hop)[0])
    infer_wps = _rate(lambda: predict(model, bank, norm, infer_trials, train_cfg.window, train_cfg.hop, zm,
                                      autocast_dtype=adtype), dev, n_infer, warmup=0)

    frames_train = sum(lengths.values())
    frames_val = sum(int(bank.lengths[bank.index[t]]) for t in val)
    frames_total = frames_train + frames_val
    train_windows = sum(len(window_starts(n, train_cfg.window, train_cfg.hop)) for n in lengths.values())
    val_windows = len(inference_windows(bank, val, train_cfg.window, train_cfg.hop)[0])
    epoch_s = train_windows / pipe_wps + val_windows / infer_wps
    scale = AFFWILD2_FRAMES / frames_total
    per_fold_fixed = (bank_s + stats_s) * scale
    line = {
        "bench": "train",
        "data": source,
        "frames_total": frames_total,
        "device": str(dev),
        "bank": bank.describe(),
        "model": "paper-size" if paper_size else "params.yaml",
        "batch": b,
        "window": train_cfg.window,
        "gather_windows_per_s": round(gather_wps, 1),
        "data_windows_per_s": round(data_wps, 1),
        "data_over_gather": round(data_wps / gather_wps, 3),
        "model_windows_per_s": round(model_wps, 2),
        "pipeline_windows_per_s": round(pipe_wps, 2),
        "ratio": round(pipe_wps / model_wps, 3),
        "data_wait_share": round(times.wait_share, 4),
        "infer_windows_per_s": round(infer_wps, 2),
        "bank_build_s": round(bank_s, 2),
        "stats_s": round(stats_s, 2),
        "epoch_s": round(epoch_s, 1),
        "projected_affwild2_6fold_s": round(6 * (AFFWILD2_EPOCHS * epoch_s * scale + per_fold_fixed), 0),
        "peak_host_mb": round(_peak_rss_mb(), 1),
        "peak_gpu_mb": round(torch.cuda.max_memory_allocated(dev) / 2**20, 1) if dev.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }
    print(json.dumps(line), flush=True)
    return line


def _peak_rss_mb() -> float:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux
