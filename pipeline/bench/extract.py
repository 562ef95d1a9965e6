"""``python -m pipeline bench extract``: per extractor, the network alone versus the whole stage, one JSON line each.

- ``model_fps``: frames per second of ``Extractor.forward`` on a batch already in memory (for MFCC: the MFCC
  function on a track already in memory), after one warm-up batch.
- ``pipeline_fps``: frames per second of ``pipeline.stages.extract.run`` from ``<work>/prepared`` to a finished
  store (store deleted first; building the network and loading weights included), same device and batch, same run.
- ``ratio`` = pipeline_fps / model_fps; MFCC also reports ``realtime`` (seconds of audio per second).

Data: ``<work>/prepared`` is built once from a generated demo dataset (``demo`` + ``prepare`` stages; 8 videos of
``--seconds`` s). ``--long-minutes M`` also writes a prepared folder with one M-minute trial (25 fps, a tone, random
crops; no video is encoded) and measures the peak RSS of the stage in a child process per extractor, for at most
``RSS_LIMIT_S`` seconds each (the curve is flat once the first batches are through; the line says how far it got).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from pipeline.config import DataConfig, DemoConfig, FramesConfig, IResNetConfig, MFCCConfig, VGGishConfig
from pipeline.extractors import build
from pipeline.extractors.audio import AudioSource
from pipeline.io.prepared import load_index
from pipeline.stages import extract as stage

CONFIGS = {"iresnet": IResNetConfig(), "vggish": VGGishConfig(), "mfcc": MFCCConfig()}
RSS_LIMIT_S = 120.0


def _demo_prepared(work: Path, seconds: float) -> Path:
    prepared = work / "prepared"
    if (prepared / "index.json").exists():
        return prepared
    from pipeline.stages import demo, prepare

    demo.run(DemoConfig(n_videos=8, seconds=seconds), work / "demo")
    prepare.run(DataConfig(root=str(work / "demo")), FramesConfig(), prepared)
    return prepared


def _model_fps(name: str, ex, size: int, batches: int = 3) -> float:
    rng = np.random.default_rng(0)
    if name == "mfcc":
        audio = AudioSource(samples=(rng.normal(size=16000 * 60) * 0.1).astype(np.float32))
        times = np.arange(ex.batch) / 25.0
        ex.audio_inputs(audio, times)  # warm-up; also caches the track's top_db reference, as the stage does
        t0 = time.perf_counter()
        for _ in range(batches):
            ex.audio_inputs(audio, times)
        return batches * ex.batch / (time.perf_counter() - t0)
    if name == "iresnet":
        x = torch.from_numpy(rng.integers(0, 256, (ex.batch, size, size, 3), dtype=np.uint8))
    else:
        x = torch.from_numpy(rng.normal(size=(ex.batch, 1, 96, 64)).astype(np.float32))
    if ex.device.type == "cuda":
        x = x.pin_memory()
    with torch.inference_mode():
        ex.forward(x).float().cpu()  # warm-up (oneDNN / cuDNN primitive selection)
        t0 = time.perf_counter()
        for _ in range(batches):
            ex.forward(x).float().cpu()
    return batches * ex.batch / (time.perf_counter() - t0)


def _long_prepared(work: Path, minutes: float) -> Path:
    """One trial of ``minutes`` at 25 fps with audio, written directly in the prepared format."""
    import h5py
    import soundfile as sf

    out = work / f"long{minutes:g}"
    if (out / "index.json").exists():
        return out
    out.mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)
    n, fps, size = int(minutes * 60 * 25), 25.0, 48
    rng = np.random.default_rng(0)
    with sf.SoundFile(out / "audio" / "long.wav", "w", 16000, 1, subtype="FLOAT") as f:
        for s in range(0, int(minutes * 60)):
            t = s + np.arange(16000) / 16000
            f.write((0.3 * np.sin(2 * np.pi * 220 * t) + 0.01 * rng.normal(size=16000)).astype(np.float32))
    with h5py.File(out / "frames.h5", "w") as h5:
        g = h5.create_group("long")
        d = g.create_dataset("frames", (n, size, size, 3), dtype=np.uint8, chunks=(256, size, size, 3))
        for i in range(0, n, 4096):
            d[i : i + 4096] = rng.integers(0, 256, (min(4096, n - i), size, size, 3), dtype=np.uint8)
        g["face"] = np.ones(n, bool)
    index = {
        "format": "va-pipeline-prepared/1", "frames_size": size, "sample_rate": 16000, "missing": "last",
        "videos": {"long": {"path": "videos/long.mp4", "fps": fps, "n_frames": n, "has_audio": True,
                            "audio": "audio/long.wav", "audio_seconds": minutes * 60}},
        "trials": [{"name": "long", "split": "test", "video": "long", "fps": fps, "n_frames": n, "has_audio": True,
                    "frames": list(range(1, n + 1))}],
    }
    (out / "index.json").write_text(json.dumps(index))
    return out


def peak_rss(name: str, prepared: Path, out: Path, device: str, limit_s: float) -> dict:
    """Run the stage in a child process, sampling its RSS (VmRSS) every 0.2 s; stop it after ``limit_s``."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, "-m", "pipeline", "extract", name, "--prepared", str(prepared), "--out", str(out), "--device", device]
    env = {**os.environ, "TQDM_DISABLE": "1"}
    t0 = time.perf_counter()
    p = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    peak = 0
    while p.poll() is None:
        try:
            for line in Path(f"/proc/{p.pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):  # the kernel's own high-water mark of resident memory
                    peak = max(peak, int(line.split()[1]) * 1024)
        except OSError:
            pass
        if time.perf_counter() - t0 > limit_s:
            p.terminate()
            p.wait()
            break
        time.sleep(0.2)
    done = None
    try:
        from pipeline.io.features import FeatureStore

        s = FeatureStore.open(out, require_complete=False)
        done = sum(min(s.flushed(b), stop) - start for b, start, stop in s.layout.values() if s.flushed(b) > start)
        total = sum(stop - start for _, start, stop in s.layout.values())
    except Exception:  # noqa: BLE001
        total = None
    return {
        "measure": "peak_rss", "extractor": name, "data": prepared.name, "peak_rss_mib": round(peak / 2**20, 1),
        "frames_done": done, "frames_total": total, "seconds": round(time.perf_counter() - t0, 1),
        "completed": p.returncode == 0,
    }


def run(work: Path, device: str = "auto", long_minutes: float = 0.0, seconds: float = 8.0, only: tuple[str, ...] = ()) -> None:
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    prepared = _demo_prepared(work, seconds)
    index = load_index(prepared)
    for name, cfg in CONFIGS.items():
        if only and name not in only:
            continue
        ex = build(name, cfg, index.frames_size, device)
        model_fps = _model_fps(name, ex, index.frames_size)
        out = work / f"{name}.zarr"
        shutil.rmtree(out, ignore_errors=True)
        frames = sum(t.n_frames for t in index.trials)
        t0 = time.perf_counter()
        stage.run(name, cfg, prepared, out, device=device, progress=False)
        pipeline_fps = frames / (time.perf_counter() - t0)
        line = {
            "extractor": name, "device": str(ex.device), "batch": ex.batch, "model_fps": round(model_fps, 1),
            "pipeline_fps": round(pipeline_fps, 1), "ratio": round(pipeline_fps / model_fps, 3), "frames": frames,
        }
        if name == "mfcc":
            audio_s = sum(t.n_frames / t.fps for t in index.trials if t.has_audio)
            line["realtime"] = round(audio_s * pipeline_fps / frames, 1)
        print(json.dumps(line), flush=True)
    if long_minutes > 0:
        for data in (prepared, _long_prepared(work, long_minutes)):
            for name in CONFIGS:
                if only and name not in only:
                    continue
                print(json.dumps(peak_rss(name, data, work / f"rss_{name}.zarr", device, RSS_LIMIT_S)), flush=True)
