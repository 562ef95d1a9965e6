"""``python -m pipeline bench analyze``: frames per second of face detection + alignment and of the whole
``analyze`` command on one real video, one JSON line.

- ``decode_fps``: decoding alone (PyAV, RGB frames), for reference.
- ``faces_fps``: detection, tracking and alignment (no decoding, no JPEG writing), with ``faces.detect_every`` as in
  params, and ``faces_fps_every_frame`` with the full cascade on every frame; ``found`` / ``found_every_frame`` are
  the shares of frames with a face, and ``eye_px`` / ``eye_iod`` the mean distance between the eyes the two modes
  give on the same frames (pixels, and over the inter-ocular distance): whether following between detections is
  "equal and faster".
- ``faces_fps_opencv`` (or ``_onnxruntime``): the same with the other runtime for the ONNX nets.
- ``analyze_fps``: ``python -m pipeline analyze VIDEO`` as a user runs it (a new process: imports, networks built,
  faces, prepare, extract, predict, CSV and PNG), decoded frames over wall-clock seconds; ``analyze_s`` the seconds
  and ``phases_s`` where they went (the command's own closing line; imports and start-up are the difference);
  ``analyze_cpu_s`` its CPU seconds, user + system, all threads and processes (on a shared machine wall-clock time
  includes waiting for the others; on ``cpus`` idle cores it cannot go below ``analyze_cpu_s / cpus``).

Models: ``--models`` (whose recorded extractors must match params) or, by default, small fusion models trained for
one epoch on synthetic features (:func:`make_models`, random-init extractors): speed does not depend on what the
models learned, and the line says which was used.
"""

from __future__ import annotations

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
                shift = int(round(k * period / p.time_base))
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


def _children_cpu() -> float:
    """User + system CPU seconds of finished child processes (on a shared machine, wall-clock time also counts the
    others' work; CPU time does not)."""
    import resource

    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


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


def run(video: Path, work: Path, models: Path | None = None, params: Path = config.DEFAULT_PARAMS) -> dict:
    video, work = Path(video), Path(work)
    if not video.is_file():
        raise InputError(f"{video}: no such video (pass --video; the default is a recording from ../shared/realmedia)")
    work.mkdir(parents=True, exist_ok=True)
    cfg = config.section("faces", params)
    fps, _ = stream_rate(video)

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

    label = "given"
    if models is None:
        params = random_init_params(params, work / "params-random-init.yaml")
        models, label = make_models(work / "synthetic", params), "synthetic, one epoch, random-init extractors"
    out = work / "results"
    cmd = [sys.executable, "-m", "pipeline", "analyze", str(video), "--models", str(models), "--out", str(out),
           "--params", str(params), "--device", "cpu"]
    t0, cpu0 = time.perf_counter(), _children_cpu()
    p = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "TQDM_DISABLE": "1"})
    secs, cpu = time.perf_counter() - t0, _children_cpu() - cpu0
    if p.returncode != 0:
        raise InputError(f"analyze failed on {video}: {p.stderr.strip().splitlines()[-1] if p.stderr.strip() else p.returncode}")
    line = {
        "bench": "analyze",
        "video": video.name,
        "size": f"{w}x{h}",
        "fps": round(fps, 3),
        "frames": len(frames),
        "decode_fps": round(decode_fps, 1),
        "faces_fps": round(fast, 1),
        "detect_every": cfg.detect_every,
        "faces_fps_every_frame": round(full, 1),
        "found": round(float(np.mean([m is not None for m in marks])), 4),
        "found_every_frame": round(float(np.mean([m is not None for m in marks_full])), 4),
        "eye_px": round(float(np.mean(eye)), 2) if eye else None,
        "eye_iod": round(float(np.mean(np.array(eye) / np.array(iod))), 4) if eye else None,
        "backend": cfg.backend,
        f"faces_fps_{other}": round(other_fps, 1),
        "analyze_fps": round(len(frames) / secs, 1),
        "analyze_s": round(secs, 2),
        "analyze_cpu_s": round(cpu, 2),
        "phases_s": json.loads(p.stdout.strip().splitlines()[-1]).get("phases_s"),
        "models": label,
        "cpus": len(os.sched_getaffinity(0)),
    }
    print(json.dumps(line))
    return line
