"""``python -m pipeline bench train``: training throughput, the share of step time spent waiting for data, and
peak memory, as one JSON line.

It trains fold 0 with the params in ``params.yaml`` (model and train sections) for a bounded number of steps on
``data/prepared`` + ``features`` when both exist, else on a demo-sized synthetic set it builds under ``work`` (so
it runs from a fresh clone). :func:`make_synthetic` is also what the tests train on.
"""

from __future__ import annotations

import json
import resource
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d

from pipeline import config
from pipeline.devices import resolve_device
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import PreparedIndex, Trial, Video, index_to_json, write_labels
from pipeline.timebase import SAMPLE_RATE

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
    dtype: str = "float16",
    noise: float = 1.0,
) -> tuple[Path, Path]:
    """Write ``root/prepared`` (index.json, frames.h5, labels.h5, folds.json) and ``root/features/<name>.zarr`` stores.

    Labels are smooth latent valence/arousal in (-1, 1); the visual map carries valence (and some arousal) through
    fixed random directions, vggish and mfcc carry arousal, each with Gaussian noise of std ``noise`` and a
    per-trial offset (what normalisation and temporal context must see past). Trial lengths vary around
    ``frames``; one trial has its first frames without a face and one test trial has no audio. Stores are labelled
    random-init. Returns ``(prepared, features)``.
    """
    rng = np.random.default_rng(seed)
    shapes = dict(ROW_SHAPES if row_shapes is None else row_shapes)
    prepared, features = Path(root) / "prepared", Path(root) / "features"
    prepared.mkdir(parents=True, exist_ok=True)
    features.mkdir(parents=True, exist_ok=True)
    names = [f"syn{i:02d}" for i in range(n_trials + n_test)]
    lengths = {t: int(frames + rng.integers(-frames // 5, frames // 5 + 1)) for t in names}
    split = {t: ("test" if i >= n_trials else ("val" if i >= n_trials - 2 else "train")) for i, t in enumerate(names)}
    fps = {t: (30.0 if i % 2 == 0 else 25.0) for i, t in enumerate(names)}

    latent, labels = {}, {}
    for t in names:
        z = gaussian_filter1d(rng.normal(size=(lengths[t] + 12, 2)), sigma=25, axis=0)
        z = np.tanh(1.3 * z / z.std(0))
        latent[t] = z[12:]  # what the features show now
        labels[t] = z[:-12].astype(np.float32)  # labels lag the signal by 12 frames, as raters do
    directions = {m: rng.normal(size=(2, int(np.prod(s)))) / np.sqrt(np.prod(s)) * 4 for m, s in shapes.items()}
    weight = {"iresnet": (1.0, 0.4), "vggish": (0.2, 1.0), "mfcc": (0.0, 1.0)}

    videos, trials = {}, []
    with h5py.File(prepared / "frames.h5", "w") as h5:
        for t in names:
            n = lengths[t]
            videos[t] = Video(t, f"videos/{t}.mp4", fps[t], n, t != names[-1], f"audio/{t}.wav", n / fps[t])
            trials.append(Trial(t, split[t], t, fps[t], n, t != names[-1], tuple(range(1, n + 1))))
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

    for m, shape in shapes.items():
        store = FeatureStore.open_or_create(
            features / f"{m}.zarr",
            extractor=m,
            row_shape=shape,
            dtype=dtype,
            trials=lengths,
            fps=fps,
            fingerprint={"synthetic": seed, "noise": noise},
            attrs={"weights": "random-init"},
            n_buckets=2,
        )
        wv, wa = weight.get(m, (0.5, 0.5))
        for t in store.pending():
            n = lengths[t]
            signal = (wv * latent[t][:, :1]) * directions[m][0] + (wa * latent[t][:, 1:]) * directions[m][1]
            offset = rng.normal(size=signal.shape[1]) * 0.5
            rows = signal + offset + rng.normal(size=signal.shape) * noise
            mask = np.ones(n, bool)
            if m == "iresnet" and t == names[0]:
                mask[:10] = False
                rows[:10] = 0
            if m != "iresnet" and t == names[-1]:  # the silent test video
                mask[:] = False
                rows[:] = 0
            store.append(t, 0, rows.reshape(n, *shape).astype(dtype), mask)
        store.flush()
    return prepared, features


def peak_memory_mb(device: torch.device) -> float:
    """Peak memory of this run: CUDA allocator peak on GPU, the process's max RSS on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def run(work: Path, device: str = "auto", steps: int = BENCH_STEPS) -> dict:
    """Train fold 0 for ``steps`` optimiser steps and print one JSON line of throughput figures."""
    from pipeline.stages import train as stage

    work = Path(work)
    raw = config.read_params() if config.DEFAULT_PARAMS.exists() else {}
    model_cfg = config.section("model", raw=raw)
    train_cfg = config.section("train", raw=raw)
    prepared, features = Path("data/prepared"), Path("features")
    have = (prepared / "folds.json").exists() and all((features / f"{m}.zarr" / "zarr.json").exists() for m in model_cfg.modalities)
    source = "data/prepared"
    if not have:
        source = "synthetic"
        if not (work / "prepared" / "folds.json").exists():
            make_synthetic(work)
        prepared, features = work / "prepared", work / "features"
    dev = resolve_device(device)
    if dev.type == "cuda":
        torch.cuda.reset_peak_memory_stats(dev)
    t0 = time.perf_counter()
    out = stage.run(
        0,
        model_cfg,
        train_cfg,
        prepared,
        features,
        work / "models" / "fold0",
        work / "metrics" / "fold0.json",
        None,  # no per-epoch curves: the benchmark measures training, not logging
        device=device,
        max_steps=steps,
    )
    times = out["timing"]
    line = {
        "bench": "train",
        "data": source,
        "device": str(dev),
        "steps": times.steps,
        "batch": train_cfg.batch,
        "window": train_cfg.window,
        "windows_per_s": round(times.windows / times.step_s, 2),
        "frames_per_s": round(times.windows * train_cfg.window / times.step_s, 1),
        "step_ms": round(1000 * times.step_s / max(times.steps, 1), 1),
        "data_wait_share": round(times.wait_share, 4),
        "preloaded": out["preloaded"],
        "peak_memory_mb": round(peak_memory_mb(dev), 1),
        "threads": torch.get_num_threads(),
        "seconds": round(time.perf_counter() - t0, 2),
    }
    print(json.dumps(line), flush=True)
    return line
