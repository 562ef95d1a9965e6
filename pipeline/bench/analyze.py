"""``python -m pipeline bench analyze``: speed and memory of ``analyze`` on real video, one JSON line.

- ``faces``: detection, tracking and alignment on the decoded frames of ``--video`` (no decoding, no JPEG):
  ``faces_fps`` with ``faces.detect_every`` as in params, ``faces_fps_every_frame`` with the full cascade on every
  frame, ``found`` / ``found_every_frame`` the shares of frames with a face, ``eye_px`` / ``eye_iod`` how far apart the
  two modes put the eyes (pixels, and over the inter-ocular distance), ``faces_fps_opencv`` (or ``_onnxruntime``)
  the other runtime for the ONNX nets; ``decode_fps`` decoding alone.
- ``analyze``: ``python -m pipeline analyze VIDEO`` as a user runs it (a new process: imports, networks, both
  passes, models, CSV and PNG) on ``--video`` and on videos of ``--minutes`` made by looping it (packets copied,
  no re-encoding: :func:`remux`): per run ``fps`` (decoded frames over wall-clock seconds), ``seconds``,
  ``cpu_s`` (user + system of the whole process tree), ``peak_rss_mb`` (the largest sum of the resident memory of
  the command and its worker processes, sampled every 50 ms) and ``main_rss_mb`` (the command's own peak).
  ``ratios``: frames/s and peak RSS of the longest run over the shortest (targets: frames/s within 10 %, memory at
  most 1.2 x).
- ``live``: ``--video`` remuxed to MPEG-TS and written into ``analyze --live -`` at its own frame rate (once the
  command says it is ready, as a camera would be opened); ``latency_s`` percentiles of the rows' ``latency_s``
  (wall seconds from a frame's arrival to its row), and ``fps`` (rows over the stream's seconds).
- ``networks``: the raw models on the same machine in the same run: frames/s of each extractor the models read
  (one row per video frame; frames kinds on random crops, audio kinds on a random track, inputs and forward, batches
  of ``ex.batch``) and of the face nets (``faces_fps``); ``bound_fps`` = the rate of all of them one after the other
  on one frame (1 / sum of 1 / rate), and ``ratio`` = the whole command's frames/s over that bound, per run (the
  short video's includes the command's start-up; the longest run's is the steady state).

Models: ``--models`` (whose recorded extractors must match params) or, by default, small fusion models trained for
one epoch on synthetic features (:func:`make_models`, random-init extractors): speed does not depend on what the
models learned, and the line says which was used.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from pipeline.common import config
from pipeline.common.errors import InputError
from pipeline.faces.align import align_face
from pipeline.faces.mtcnn import MTCNN
from pipeline.faces.tracker import IoUTracker
from pipeline.faces.video import FaceFollower
from pipeline.io.media import decode_frames, stream_rate

DEFAULT_VIDEO = Path("../shared/realmedia/videos/pyfeat_WolfgangLanger_Pexels.mp4")  # 640 x 360, 23.976 fps, 472 frames


# ------------------------------------------------------------------------------------------- test media
def remux(src: Path, out: Any, fmt: str | None = None, loops: int = 1, pace: float | None = None) -> int:
    """Copy the first video and audio streams of ``src`` into ``out`` (a path, or a writable binary file such as a
    pipe, with ``fmt``) without re-encoding, ``loops`` times one after the other (each copy shifted by the video's
    duration), optionally at ``pace`` times real time (each packet written when its time has come: a live
    source). Returns the packets written. Looping makes long test videos; pacing into a pipe stands in for a camera
    or a network stream."""
    import av

    with av.open(str(src)) as ic, av.open(out if not isinstance(out, Path) else str(out), "w", format=fmt) as oc:
        ins = [ic.streams.video[0], *ic.streams.audio[:1]]
        outs = {s.index: oc.add_stream_from_template(s) for s in ins}
        packets = [p for p in ic.demux(ins) if p.dts is not None and p.size]
        vs = ins[0]
        period = max(float((p.pts + (p.duration or 0)) * p.time_base) for p in packets if p.stream is vs)
        t0, n = time.monotonic(), 0
        for k in range(loops):
            for p in packets:
                shift = round(k * period / p.time_base)
                if pace:
                    wait = t0 + (float(p.dts * p.time_base) + k * period) / pace - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                q = av.Packet(bytes(p))
                q.pts, q.dts, q.time_base = p.pts + shift, p.dts + shift, p.time_base
                q.duration, q.is_keyframe, q.stream = p.duration, p.is_keyframe, outs[p.stream.index]
                oc.mux(q)
                n += 1
    return n


def make_models(root: Path, params: Path = config.DEFAULT_PARAMS, folds: int = 2) -> Path:
    """``root/models/fold<k>/model.pt`` for ``folds`` folds: the params' fusion model trained one epoch on synthetic
    features of the real row shapes, with the extractor records of params ``features`` (so ``analyze`` accepts them).
    Returns the models folder."""
    import torch

    from pipeline.commands.analyze import extractor_record
    from pipeline.extractors import build
    from pipeline.stages import train
    from pipeline.training.synthetic import make_synthetic

    raw = config.read_params(params)
    model_cfg = config.section("model", params, raw)
    features_cfg = config.section("features", params, raw)
    size = config.section("frames", params, raw).size
    extractors = {m: build(m, getattr(features_cfg, m), size, "cpu") for m in model_cfg.modalities}
    shapes = {m: tuple(ex.row_shape) for m, ex in extractors.items()}
    records = {m: extractor_record(ex) for m, ex in extractors.items()}
    prepared, features = make_synthetic(root, n_trials=4, n_test=1, frames=120, n_folds=folds, row_shapes=shapes)
    train_cfg = config.TrainConfig(window=64, hop=32, batch=4, epochs=1, warmup_epochs=0)
    models = root / "models"
    for k in range(folds):
        d = models / f"fold{k}"
        train.run(k, model_cfg, train_cfg, prepared, features, d, root / "metrics" / f"fold{k}.json", None, device="cpu")
        ckpt = torch.load(d / "model.pt", map_location="cpu", weights_only=True)
        ckpt["features"] = records  # what the training stage records from the stores it read
        torch.save(ckpt, d / "model.pt")
    return models


def faces_rate(
    frames: list[np.ndarray], cfg: config.FacesConfig, detect_every: int, backend: str | None = None
) -> tuple[float, list]:
    """(frames/s of detection + tracking + alignment, per frame the main face's (5, 2) landmarks or None)."""
    detector = MTCNN(cfg.min_face, cfg.thresholds, backend or cfg.backend, threads=1)
    follower = FaceFollower(detector, detect_every, IoUTracker(cfg.iou))
    follower.step(frames[0])  # warm-up: the first inference builds the sessions' kernels
    follower = FaceFollower(detector, detect_every, IoUTracker(cfg.iou))
    marks = []
    t0 = time.perf_counter()
    for f in frames:
        faces, _ = follower.step(f)
        for lm in faces.landmarks:
            align_face(f, lm)
        marks.append(faces.landmarks[0] if len(faces) else None)
    return len(frames) / (time.perf_counter() - t0), marks


def random_init_params(params: Path, dst: Path) -> Path:
    """A copy of ``params`` at ``dst`` whose extractors have no weights files: the synthetic models stand in for any
    backbone (speed does not depend on the weights), so the benchmark runs before `dvc repro` made one."""
    raw = config.read_params(params)
    for name in ("iresnet", "vggish"):
        section = raw.setdefault("features", {}).setdefault(name, {}) or {}
        section.update({"weights": None, "sha256": None})
        if name == "vggish":
            section.update({"pca": False, "pca_weights": None, "pca_sha256": None})
        raw["features"][name] = section
    dst.write_text(yaml.safe_dump(raw, sort_keys=False))
    return dst


def faces_figures(video: Path, cfg: config.FacesConfig) -> dict[str, Any]:
    """The ``faces`` figures (see the module docstring)."""
    t0 = time.perf_counter()
    frames = [rgb for _, rgb in decode_frames(video)]
    decode_fps = len(frames) / (time.perf_counter() - t0)
    h, w = frames[0].shape[:2]
    fast, marks = faces_rate(frames, cfg, cfg.detect_every)
    full, marks_full = faces_rate(frames, cfg, 1)
    other = "opencv" if cfg.backend == "onnxruntime" else "onnxruntime"
    other_fps, _ = faces_rate(frames, cfg, cfg.detect_every, other)
    both = [(a, b) for a, b in zip(marks, marks_full) if a is not None and b is not None]
    eye = [np.linalg.norm(a[:2] - b[:2], axis=1).mean() for a, b in both]
    iod = [np.linalg.norm(b[0] - b[1]) for _, b in both]
    return {
        "size": f"{w}x{h}", "frames": len(frames), "decode_fps": round(decode_fps, 1), "faces_fps": round(fast, 1),
        "detect_every": cfg.detect_every, "faces_fps_every_frame": round(full, 1),
        "found": round(float(np.mean([m is not None for m in marks])), 4),
        "found_every_frame": round(float(np.mean([m is not None for m in marks_full])), 4),
        "eye_px": round(float(np.mean(eye)), 2) if eye else None,
        "eye_iod": round(float(np.mean(np.array(eye) / np.array(iod))), 4) if eye else None,
        "backend": cfg.backend, f"faces_fps_{other}": round(other_fps, 1),
    }


def extractor_fps(ex: Any, size: int, rng: np.random.Generator, min_seconds: float) -> float:
    """Rows per second of one extractor alone: ``frames`` kinds on a batch of random ``size`` px crops, ``audio``
    kinds at a batch of frame times on a random track (inputs and forward, as the streaming chain calls them)."""
    from pipeline.analysis.features import audio_inputs_rows, frame_rows
    from pipeline.bench.timing import calls_per_s
    from pipeline.extractors.audio import AudioSource
    from pipeline.io.timebase import SAMPLE_RATE

    if ex.kind == "frames":
        crops = rng.integers(0, 256, (ex.batch, size, size, 3), dtype=np.uint8)
        return ex.batch * calls_per_s(lambda: frame_rows(ex, crops), ex.device, min_seconds)
    seconds = max(ex.batch / 25.0, 1.0) + 2.0  # the batch's frames at 25 fps, and some track either side
    src = AudioSource(samples=(rng.standard_normal(int(seconds * SAMPLE_RATE)) * 0.1).astype(np.float32), key="bench")
    times = np.linspace(1.0, seconds - 1.0, ex.batch)
    return ex.batch * calls_per_s(lambda: audio_inputs_rows(ex, src, times), ex.device, min_seconds)


def networks_figures(params: Path, faces_fps: float | None, device: str = "cpu", min_seconds: float = 3.0) -> dict[str, Any]:
    """Frames/s of each extractor the models read, alone (see the module docstring), and their bound with the faces."""
    from pipeline.extractors import build

    raw = config.read_params(params)
    size = config.section("frames", params, raw).size
    features = config.section("features", params, raw)
    rng = np.random.default_rng(0)
    rates = {m: extractor_fps(build(m, features[m], size, device), size, rng, min_seconds)
             for m in config.section("model", params, raw).modalities}
    per_frame = sum(1.0 / r for r in rates.values()) + (1.0 / faces_fps if faces_fps else 0.0)
    return {"fps": {m: round(r, 1) for m, r in rates.items()}, "faces_fps": faces_fps,
            "bound_fps": round(1.0 / per_frame, 1)}


def tree_rss(proc: Any) -> int:
    """Bytes resident in ``proc`` (a psutil.Process) and all its descendants now."""
    import psutil

    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        try:
            total += p.memory_info().rss
        except psutil.Error:  # ended between the listing and the reading
            pass
    return total


def timed_run(cmd: list[str], stdin: Any = None) -> dict[str, Any]:
    """Run ``cmd`` (stdout captured), sampling its process tree's memory every 50 ms: seconds, CPU seconds of the
    tree, peak tree RSS and the command's own peak RSS (MB), and its last stdout line."""
    import tempfile

    import psutil

    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out_f, tempfile.TemporaryFile("w+") as err_f:
        p = psutil.Popen(cmd, stdin=stdin, stdout=out_f, stderr=err_f, env={**os.environ, "TQDM_DISABLE": "1"})
        peak = main_peak = 0
        cpu: dict[int, float] = {}  # per process of the tree: the latest user + system seconds seen
        while p.poll() is None:
            try:
                peak, main_peak = max(peak, tree_rss(p)), max(main_peak, p.memory_info().rss)
            except psutil.Error:  # it has just ended
                break
            for q in [p, *p.children(recursive=True)]:
                try:
                    t = q.cpu_times()
                    cpu[q.pid] = t.user + t.system
                except psutil.Error:
                    pass
            time.sleep(0.05)
        p.wait()
        out_f.seek(0)
        err_f.seek(0)
        out, err = out_f.read(), err_f.read()
    if p.returncode != 0:
        raise InputError(f"{' '.join(cmd[:4])} failed: {err.strip().splitlines()[-1] if err.strip() else p.returncode}")
    return {"seconds": time.perf_counter() - t0, "cpu_s": round(sum(cpu.values()), 1), "peak_rss_mb": round(peak / 2**20),
            "main_rss_mb": round(main_peak / 2**20), "summary": json.loads(out.strip().splitlines()[-1])}


def analyze_figures(video: Path, minutes: tuple[float, ...], work: Path, base_cmd: list[str]) -> dict[str, Any]:
    """The ``analyze`` figures: the video itself, then each length of ``minutes`` made by looping it."""
    from pipeline.io.media import probe_video

    period = probe_video(video).n_frames / probe_video(video).fps
    runs = {}
    for m in (0.0, *minutes):
        src = video
        if m:
            src = work / f"{video.stem}-{m:g}min.mp4"
            if not src.exists():
                remux(video, src, loops=max(1, round(m * 60 / period)))
        r = timed_run([*base_cmd, str(src), "--out", str(work / "results")])
        n = r["summary"]["frames"]
        runs[f"{m:g}min" if m else "video"] = {
            "frames": n, "fps": round(n / r["seconds"], 1), "seconds": round(r["seconds"], 1), "cpu_s": r["cpu_s"],
            "peak_rss_mb": r["peak_rss_mb"], "main_rss_mb": r["main_rss_mb"],
        }
    if len(minutes) >= 2:
        lo, hi = runs[f"{min(minutes):g}min"], runs[f"{max(minutes):g}min"]
        runs["ratios"] = {"fps": round(hi["fps"] / lo["fps"], 3), "peak_rss": round(hi["peak_rss_mb"] / lo["peak_rss_mb"], 3)}
    return runs


def live_figures(video: Path, work: Path, base_cmd: list[str], hop: float) -> dict[str, Any]:
    """The ``live`` figures: ``video`` written into ``analyze --live -`` at its frame rate."""
    import threading

    csv_path, err_path = work / "live.csv", work / "live.err"
    proc = subprocess.Popen([*base_cmd, "--live", "-", "--csv", str(csv_path), "--hop", str(hop)], stdin=subprocess.PIPE,
                            stdout=subprocess.DEVNULL, stderr=open(err_path, "w"), env={**os.environ, "TQDM_DISABLE": "1"})

    def feed() -> None:
        while proc.poll() is None and "live: ready" not in err_path.read_text():
            time.sleep(0.05)
        try:
            remux(video, proc.stdin, fmt="mpegts", pace=1.0)
        finally:
            proc.stdin.close()

    feeder = threading.Thread(target=feed, daemon=True)
    feeder.start()
    proc.wait()
    feeder.join()
    if proc.returncode != 0:
        raise InputError(f"analyze --live failed: {err_path.read_text().strip().splitlines()[-1]}")
    rows = np.loadtxt(csv_path, delimiter=",", skiprows=1, ndmin=2)
    lat = rows[:, 5]
    stream_s = float(rows[-1, 1] - rows[0, 1]) + float(np.median(np.diff(rows[:, 1])))
    return {"frames": len(rows), "hop_s": hop, "stream_s": round(stream_s, 2),
            "latency_s": {f"p{q}": round(float(np.percentile(lat, q)), 3) for q in (50, 90, 99)} | {"max": round(float(lat.max()), 3)},
            "summary": json.loads(err_path.read_text().strip().splitlines()[-1])}


def run(
    video: Path, work: Path, models: Path | None = None, params: Path = config.DEFAULT_PARAMS,
    minutes: tuple[float, ...] = (1.0, 10.0), faces: bool = True, live: bool = True, jobs: int = 1, hop: float = 0.5,
    device: str = "cpu",
) -> dict:
    """Measure what the module docstring lists and print it as one JSON line."""
    video, work = Path(video), Path(work)
    if not video.is_file():
        raise InputError(f"{video}: no such video (pass --video; the default is a recording from ../shared/realmedia)")
    work.mkdir(parents=True, exist_ok=True)
    line: dict[str, Any] = {"bench": "analyze", "video": video.name, "fps": round(stream_rate(video)[0], 3)}
    if faces:
        line["faces"] = faces_figures(video, config.section("faces", params))
    label = "given"
    if models is None:
        params = random_init_params(params, work / "params-random-init.yaml")
        with contextlib.redirect_stdout(sys.stderr):  # training's progress lines: stdout holds the one JSON line
            models = make_models(work / "synthetic", params)
        label = "synthetic, one epoch, random-init extractors"
    base = [sys.executable, "-m", "pipeline", "analyze", "--models", str(models), "--params", str(params), "--device", device]
    line["analyze"] = analyze_figures(video, tuple(minutes), work, [*base, "--jobs", str(jobs)])
    faces_fps = line["faces"]["faces_fps"] if faces else None
    line["networks"] = networks_figures(params, faces_fps, device)
    line["networks"]["ratio"] = {run: round(r["fps"] / line["networks"]["bound_fps"], 3)
                                 for run, r in line["analyze"].items() if "fps" in r and run != "ratios"}
    if live:
        line["live"] = live_figures(video, work, base, hop)
    line.update(models=label, device=device, cpus=len(os.sched_getaffinity(0)))
    print(json.dumps(line))
    return line
