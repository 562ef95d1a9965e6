"""``python -m pipeline bench extract``: per extractor, the network alone versus the whole stage, one JSON line each.

- ``model_fps``: frames per second of ``Extractor.forward`` alone on batches already on the model's device, after
  warm-up, for at least 2 s (:func:`_model_fps`; for MFCC: the MFCC function on a track already in memory).
- ``pipeline_fps``: frames per second of ``pipeline.stages.extract.run`` from a prepared folder to a finished store
  (store deleted first; building the network and loading weights included), same device and batch, same run.
- ``ratio`` = pipeline_fps / model_fps; MFCC also reports ``realtime`` (seconds of audio per second).
- ``setup_s`` (index, network, store), ``first_batch_s`` (device warm-up) and ``steady_fps`` (the rest) come from
  the stage's own :class:`~pipeline.stages.extract.RunStats`: the fixed cost is shown, not hidden in the ratio.
- ``ceiling_fps``: the stage with a network that costs nothing (:func:`_ceiling_fps`): what reading, transfers and
  writing allow on this machine (on at least ``CEILING_FRAMES`` frames, repeating trials as below). A network
  faster than this is starved by the data path.

Besides the paper's three, ``--stand-ins tiny|base`` adds one random-init stand-in per foundation-model kind
(pipeline/bench/stand_ins.py, written into ``<work>/stand-ins``): ``wavlm`` (transformers-audio), ``vit``
(transformers-image, 224 px), ``timm_vit`` (timm-image, where timm imports), ``onnx_audio`` and ``onnx_image``;
``base`` gives WavLM-Base's and ViT-B/16's widths and depths (a real backbone's cost), ``tiny`` 2 layers of width
32 (the data path's cost). For the chunked audio kinds ``model_fps`` is the network on the chunk windows of the demo's
tracks (each computed once, as the stage computes them), per video frame.

Data: ``<work>/prepared`` is built once from a generated demo dataset (``demo`` + ``prepare`` stages; 8 videos of
``--seconds`` s). A dataset much shorter than the fixed start-up cost measures the start-up, not the pipeline (an
H100 got through 8 x 240 s of demo in one to three seconds); so when the demo holds less than ``--min-model-seconds``
of network time, the trials are repeated (``<work>/tiled<k>``: k copies, crops copied into a new ``frames.h5``; the
audio-only ``tiled<k>-audio`` links the demo's audio) until it does, as a real dataset (Aff-Wild2: ~2.9 M frames)
would. ``--long-minutes M`` also writes a prepared folder with one M-minute trial (25 fps, a tone, random crops; no
video is encoded) and measures the peak RSS of the stage in a child process per extractor, for at most
``RSS_LIMIT_S`` seconds each (the curve is flat once the first batches are through; the line says how far it got).
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from pipeline.bench.timing import calls_per_s
from pipeline.common.config import (
    AudioModelConfig,
    DataConfig,
    DemoConfig,
    FramesConfig,
    ImageModelConfig,
    IResNetConfig,
    MFCCConfig,
    VGGishConfig,
)
from pipeline.extractors import build
from pipeline.extractors.audio import AudioSource
from pipeline.io.prepared import (
    FrameReader,
    PreparedIndex,
    Trial,
    Video,
    index_to_json,
    load_index,
)
from pipeline.io.timebase import audio_mask, track_seconds
from pipeline.stages import extract as stage

CONFIGS = {"iresnet": IResNetConfig(), "vggish": VGGishConfig(), "mfcc": MFCCConfig()}
CHUNKED = ("transformers-audio", "onnx-audio")  # kinds whose network runs per chunk of the track
RSS_LIMIT_S = 120.0
CEILING_FRAMES = 50_000  # the null-network run needs this many frames to measure a rate, not its start-up


def _demo_prepared(work: Path, seconds: float) -> Path:
    prepared = work / "prepared"
    if (prepared / "index.json").exists():
        return prepared
    from pipeline.stages import demo, prepare

    demo.run(DemoConfig(n_videos=8, seconds=seconds), work / "demo")
    prepare.run(DataConfig(root=str(work / "demo")), FramesConfig(), prepared)
    return prepared


def _model_inputs(ex, size: int, rng: np.random.Generator, prepared: Path | None = None) -> list:
    """Random inputs of one batch (two sets), or for the chunked audio kinds the chunk windows of every video of
    ``prepared`` (the work the stage does on it), in the extractor's input form, on its device."""
    if ex.model_kind in CHUNKED:
        index = load_index(prepared)
        first = {t.video: t for t in reversed(index.trials)}  # one trial per video: its chunks, computed once
        xs = []
        for video, t in sorted(first.items()):
            v = index.videos[video]
            if v.has_audio:
                src = AudioSource(index.audio_path(video), key=video)
                times = track_seconds(t.times, v.audio_offset)
                xs.append(ex.audio_inputs(src, times[audio_mask(times, src.n_samples)]).to(ex.device))
        return xs
    if ex.kind == "frames":
        xs = [torch.from_numpy(rng.integers(0, 256, (ex.batch, size, size, 3), dtype=np.uint8)) for _ in range(2)]
    else:
        xs = [torch.from_numpy(rng.normal(size=(ex.batch, 1, 96, 64)).astype(np.float32)) for _ in range(2)]
    return [x.to(ex.device) for x in xs]


def _model_fps(name: str, ex, size: int, min_seconds: float = 2.0, min_batches: int = 3,
               prepared: Path | None = None) -> float:
    """The network alone: random inputs already on the model's device (two sets, alternated; chunked audio: all the
    data's chunk windows per call, its cache cleared first), outputs left there, one synchronisation every few
    calls; warm-up calls first; at least ``min_batches`` calls and ``min_seconds``."""
    rng = np.random.default_rng(0)
    if ex.model_kind == "mfcc":
        audio = AudioSource(samples=(rng.normal(size=16000 * 60) * 0.1).astype(np.float32))
        times = np.arange(ex.batch) / 25.0
        ex.audio_inputs(audio, times)  # warm-up; also caches the track's top_db reference, as the stage does
        t0 = time.perf_counter()
        for _ in range(min_batches):
            ex.audio_inputs(audio, times)
        return min_batches * ex.batch / (time.perf_counter() - t0)
    xs = _model_inputs(ex, size, rng, prepared)
    every = 4 if ex.device.type == "cuda" else 1  # synchronise every few batches: a bounded queue, honest clock
    with torch.inference_mode():
        if ex.model_kind in CHUNKED:  # one call: every chunk of the data once, as the stage computes them
            rows = sum(len(x) for x in xs)

            def call() -> None:
                ex.module.cache.clear()
                for x in xs:
                    ex.forward(x)

            return rows * calls_per_s(call, ex.device, min_seconds, min_batches, warmup=1, sync_every=every)
        calls = iter(range(10**12))
        # warm-up on both inputs (oneDNN / cuDNN primitive selection, lazy CUDA module loading), then alternate them
        rate = calls_per_s(lambda: ex.forward(xs[next(calls) % 2]), ex.device, min_seconds, min_batches, warmup=2,
                           sync_every=every)
    return rate * ex.batch


def stand_in_configs(work: Path, size: str) -> dict[str, object]:
    """One random-init stand-in per foundation-model kind (see the module docstring), written once into
    ``<work>/stand-ins/<size>``; ``timm_vit`` only where timm imports."""
    from pipeline.bench import stand_ins as S

    root = work / "stand-ins" / size
    made = root / "done"
    if not made.exists():
        shutil.rmtree(root, ignore_errors=True)
        S.transformers_audio(root / "wavlm", size=size)
        S.transformers_image(root / "vit", image_size=224, patch=16, size=size)
        S.onnx_audio(root / "onnx-audio")
        S.onnx_image(root / "onnx-image")
        made.touch()
    cfgs: dict[str, object] = {
        "wavlm": AudioModelConfig(kind="transformers-audio", model=str(root / "wavlm"), batch=256),
        "vit": ImageModelConfig(kind="transformers-image", model=str(root / "vit"), batch=64),
        "onnx_audio": AudioModelConfig(kind="onnx-audio", model=str(root / "onnx-audio" / "model.onnx"), batch=256),
        "onnx_image": ImageModelConfig(kind="onnx-image", model=str(root / "onnx-image" / "model.onnx"), batch=256),
    }
    try:
        if not (root / "timm").exists():
            S.timm_image(root / "timm")
        cfgs["timm_vit"] = ImageModelConfig(kind="timm-image", model=str(root / "timm"), batch=256)
    except Exception as e:  # noqa: BLE001 - timm does not import beside this torch (docs/features.md)
        print(json.dumps({"extractor": "timm_vit", "skipped": f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"}))
    return cfgs



def _n_frames(prepared: Path) -> int:
    return sum(t.n_frames for t in load_index(prepared).trials)


def _ceiling_fps(ex, data: Path, out: Path, workers: int = 0) -> float:
    """The stage with a network that costs nothing (zeros of the row shape and store dtype, made on the model's
    device): reading, transfers to and from the device, and writing alone. The most the stage could do with an
    infinitely fast network on this machine; network building is not included."""
    shape, dev, dtype = ex.row_shape, ex.device, getattr(torch, ex.dtype)
    null = replace(ex, module=lambda x: torch.zeros((len(x), *shape), device=dev, dtype=dtype))
    shutil.rmtree(out, ignore_errors=True)
    t0 = time.perf_counter()
    stage.run(ex.name, None, data, out, extractor=null, progress=False, workers=workers)
    fps = _n_frames(data) / (time.perf_counter() - t0)
    shutil.rmtree(out, ignore_errors=True)
    return round(fps, 1)


def _tiled_prepared(src: Path, work: Path, n_frames: int, frames: bool) -> Path:
    """``src``'s trials repeated k times (``<trial>~<j>``) to hold at least ``n_frames`` rows; with ``frames`` the
    crops are copied into a new ``frames.h5`` (same chunking as ``prepare``, same videos), otherwise the folder is
    audio-only (index and audio, for the audio extractors; copy ``j`` of video ``v`` is video ``v~j``)."""
    import h5py

    index = load_index(src)
    k = math.ceil(n_frames / sum(t.n_frames for t in index.trials))
    out = work / f"tiled{k}{'' if frames else '-audio'}"
    if (out / "index.json").exists():
        return out
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    if frames:
        (tmp / "audio").symlink_to((src / "audio").resolve(), target_is_directory=True)
        trials = tuple(replace(t, name=f"{t.name}~{j:03d}") for j in range(k) for t in index.trials)
    else:  # each copy its own video (a link to the same WAV): no extractor cache sees a copy as seen before
        index, trials = _distinct_videos(index, src, tmp, k)
    if frames:
        with FrameReader(src / "frames.h5") as r, h5py.File(tmp / "frames.h5", "w") as h5:
            for t in index.trials:
                x, face, s = r.frames(t.name), r.face(t.name), index.frames_size
                for j in range(k):
                    g = h5.create_group(f"{t.name}~{j:03d}")
                    g.create_dataset("frames", data=x, chunks=(min(len(x), 256), s, s, 3))
                    g["face"] = face
    missing = json.loads((src / "index.json").read_text())["missing"]
    (tmp / "index.json").write_text(json.dumps(index_to_json(replace(index, trials=trials), missing)))
    tmp.rename(out)
    return out


def _distinct_videos(index: PreparedIndex, src: Path, tmp: Path, k: int) -> tuple[PreparedIndex, tuple[Trial, ...]]:
    """``k`` copies of every trial, copy ``j`` of video ``v`` being video ``v~j`` whose WAV links ``src``'s."""
    (tmp / "audio").mkdir()
    videos = {}
    for j in range(k):
        for name, v in index.videos.items():
            audio = None
            if v.has_audio:
                audio = f"audio/{name}~{j:03d}.wav"
                (tmp / audio).symlink_to(index.audio_path(name).resolve())
            videos[f"{name}~{j:03d}"] = replace(v, name=f"{name}~{j:03d}", audio=audio)
    trials = tuple(replace(t, name=f"{t.name}~{j:03d}", video=f"{t.video}~{j:03d}") for j in range(k) for t in index.trials)
    return replace(index, videos=videos), trials


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
    video = Video("long", "videos/long.mp4", fps, n, True, "audio/long.wav", minutes * 60)
    trial = Trial("long", "test", "long", fps, n, True, tuple(range(1, n + 1)))
    index = PreparedIndex(out, size, 16000, {"long": video}, (trial,))
    (out / "index.json").write_text(json.dumps(index_to_json(index, "last")))
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


def run(
    work: Path,
    device: str = "auto",
    long_minutes: float = 0.0,
    seconds: float = 8.0,
    only: tuple[str, ...] = (),
    min_model_seconds: float = 20.0,
    workers: int = 0,
    stand_ins: str = "none",
) -> None:
    """Print one JSON line per extractor (the paper's three, and with ``stand_ins`` tiny or base the foundation-model
    kinds' stand-ins); ``only``: these names alone."""
    work = Path(work)
    work.mkdir(parents=True, exist_ok=True)
    prepared = _demo_prepared(work, seconds)
    index = load_index(prepared)
    configs = {**CONFIGS, **(stand_in_configs(work, stand_ins) if stand_ins != "none" else {})}
    for name, cfg in configs.items():
        if only and name not in only:
            continue
        ex = build(name, cfg, index.frames_size, device)
        model_fps = _model_fps(name, ex, index.frames_size, prepared=prepared)
        data = prepared
        if name != "mfcc" and model_fps * min_model_seconds > _n_frames(prepared):
            data = _tiled_prepared(prepared, work, int(model_fps * min_model_seconds), frames=ex.kind == "frames")
        frames = _n_frames(data)
        dev, batch = str(ex.device), ex.batch
        out = work / f"{name}.zarr"
        ceiling = None
        if ex.module is not None:
            cdata = data
            if frames < CEILING_FRAMES:
                cdata = _tiled_prepared(prepared, work, CEILING_FRAMES, frames=ex.kind == "frames")
            ceiling = _ceiling_fps(ex, cdata, out, workers)
        del ex
        shutil.rmtree(out, ignore_errors=True)
        t0 = time.perf_counter()
        stats = stage.run(name, cfg, data, out, device=device, progress=False, workers=workers)
        wall = time.perf_counter() - t0
        shutil.rmtree(out, ignore_errors=True)
        pipeline_fps = frames / wall
        steady = stats.total_s - stats.setup_s - stats.first_batch_s
        line = {
            "extractor": name, "kind": getattr(cfg, "kind", name), "device": dev, "batch": batch, "model_fps": round(model_fps, 1),
            "pipeline_fps": round(pipeline_fps, 1), "ratio": round(pipeline_fps / model_fps, 3), "frames": frames,
            "data": data.name, "setup_s": round(stats.setup_s, 2), "first_batch_s": round(stats.first_batch_s, 2),
            "steady_fps": round((frames - min(batch, frames)) / steady, 1) if steady > 0 else None,
            "wait_input_s": round(stats.wait_input_s, 2), "wait_output_s": round(stats.wait_output_s, 2),
            "ceiling_fps": ceiling, "workers": workers,
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
