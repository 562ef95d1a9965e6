"""``prepare``: a dataset in the Aff-Wild2 layout -> ``data/prepared/`` (format: pipeline/io/prepared.py).

Rules (DESIGN.md, paper section 3.2):
- Trials come from the annotation files (train, validation) and ``test_set.txt`` (test). A trial's video is found
  by stem at any depth under ``videos/`` (.mp4 or .avi); ``<video>_left`` / ``<video>_right`` share ``<video>``.
- Train/val trial frames are the annotation rows whose valence and arousal are both not -5; test trial frames are
  1 .. the video's frame count, counted by decoding.
- Each frame's crop ``cropped_aligned/<trial>/%05d.jpg`` is resized to ``frames.size``; a missing or unreadable
  crop is filled with the last available one (``frames.missing: last``; leading missing crops take the first
  available one) or with black (``zero``), and ``face`` records which rows had a real crop.
- Audio: each video's first audio stream as 16 kHz mono float32 WAV; no audio stream -> no file, ``has_audio``
  false.

Work is spread over ``jobs`` processes (videos, then chunks of crops); the main process writes HDF5 in order, so
memory holds a few chunks, never a trial. Outputs are written under temporary names and renamed at the end, with
``index.json`` last: an interrupted run never leaves files that look finished.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import soundfile as sf
from PIL import Image
from tqdm import tqdm

from pipeline.config import DataConfig, FramesConfig
from pipeline.errors import InputError
from pipeline.io.annotations import annotation_files, read_annotation, read_test_list
from pipeline.io.media import decode_audio, find_videos, probe_video, video_for_trial
from pipeline.io.prepared import PreparedIndex, Trial, Video, index_to_json
from pipeline.timebase import SAMPLE_RATE

CHUNK = 512  # crops per worker task


@dataclass(frozen=True)
class TrialPlan:
    name: str
    split: str
    video: str
    frames: np.ndarray | None  # None for test trials until the video is counted
    labels: np.ndarray | None
    source: Path  # annotation file or test_set.txt, for error messages


def resolve_video(trial: str, videos: dict[str, Path]) -> str | None:
    """The video stem of ``trial``: its own name if such a video exists, else without ``_left``/``_right``."""
    if trial in videos:
        return trial
    stem = video_for_trial(trial)
    return stem if stem in videos else None


def plan_trials(root: Path, videos: dict[str, Path]) -> list[TrialPlan]:
    """Every trial of ``root`` with its video and, for annotated trials, frames and labels."""
    plans: list[TrialPlan] = []
    seen: dict[str, Path] = {}
    for split, files in annotation_files(root).items():
        for f in files:
            if f.stem in seen:
                raise InputError(f"{f}: trial {f.stem!r} is also annotated in {seen[f.stem]}")
            seen[f.stem] = f
            video = resolve_video(f.stem, videos)
            if video is None:
                raise InputError(f"{f}: no video {video_for_trial(f.stem)}.mp4 or .avi under {root / 'videos'}")
            ann = read_annotation(f)
            if not len(ann.frames):
                raise InputError(f"{f}: no annotated rows (every row has -5)")
            plans.append(TrialPlan(f.stem, split, video, ann.frames, ann.labels, f))
    for name in read_test_list(root):
        src = root / "test_set.txt"
        if name in seen:
            raise InputError(f"{src}: test trial {name!r} is also annotated in {seen[name]}")
        seen[name] = src
        video = resolve_video(name, videos)
        if video is None:
            raise InputError(f"{src}: no video {video_for_trial(name)}.mp4 or .avi under {root / 'videos'}")
        plans.append(TrialPlan(name, "test", video, None, None, src))
    if not plans:
        raise InputError(f"{root}: no trials (no annotation files under annotations/VA_Estimation_Challenge and no test_set.txt)")
    return plans


# ------------------------------------------------------------------------------------------ worker tasks
def _video_task(args: tuple[str, Path, bool, Path]) -> tuple[str, float, int | None, bool, float, str | None]:
    """Probe one video and write its audio; returns (video, fps, n_frames, has_audio, audio_seconds, error)."""
    name, path, count, audio_dir = args
    try:
        info = probe_video(path, count_frames=count)
        audio = decode_audio(path) if info.has_audio else None
    except InputError as e:
        return name, 0.0, None, False, 0.0, str(e)
    seconds = 0.0
    if audio is not None:
        sf.write(audio_dir / f"{name}.wav", audio, SAMPLE_RATE, subtype="FLOAT")
        seconds = len(audio) / SAMPLE_RATE
    return name, info.fps, info.n_frames, audio is not None, seconds, None


def load_crop(path: Path, size: int) -> np.ndarray | None:
    """A crop as uint8 (size, size, 3) RGB, or None when the file is missing; raises OSError if unreadable."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        return None
    with img:
        img.draft("RGB", (size, size))  # JPEG decodes at 1/2, 1/4 or 1/8 scale when that is still >= size
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _crop_task(args: tuple[Path, np.ndarray, int]) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Load crops for ``frames``: (n, S, S, 3) uint8 with zeros where missing, (n,) face mask, warnings."""
    folder, frames, size = args
    out = np.zeros((len(frames), size, size, 3), dtype=np.uint8)
    face = np.zeros(len(frames), dtype=bool)
    warnings: list[str] = []
    for i, f in enumerate(frames):
        path = folder / f"{int(f):05d}.jpg"
        try:
            crop = load_crop(path, size)
        except (OSError, ValueError, SyntaxError) as e:
            warnings.append(f"warning: {path}: unreadable crop, counted as missing ({e})")
            continue
        if crop is not None:
            out[i], face[i] = crop, True
    return out, face, warnings


def fill_missing(frames: np.ndarray, face: np.ndarray, previous: np.ndarray | None, mode: str) -> np.ndarray | None:
    """Fill rows of ``frames`` (n, S, S, 3) where ``face`` is False, in place.

    ``last``: the most recent real crop, ``previous`` carrying it over from the preceding chunk; rows before any real
    crop are left for :func:`backfill_leading`. ``zero``: black (already the case). Returns the last real crop
    seen so far (for the next chunk)."""
    if mode == "zero":
        return previous
    real = np.flatnonzero(face)
    if len(real):
        # index of the most recent real row at or before each row; -1 before the first one
        last_idx = np.maximum.accumulate(np.where(face, np.arange(len(face)), -1))
        fill = ~face & (last_idx >= 0)
        frames[fill] = frames[last_idx[fill]]
        lead = ~face & (last_idx < 0)
        if previous is not None:
            frames[lead] = previous
        return frames[real[-1]].copy()
    if previous is not None:
        frames[:] = previous
    return previous


def backfill_leading(ds: h5py.Dataset, face: np.ndarray) -> None:
    """``last`` mode, a trial whose first crops are missing: those rows take the first real crop."""
    real = np.flatnonzero(face)
    if len(real) and real[0] > 0:
        ds[: real[0]] = np.broadcast_to(ds[real[0]], (real[0], *ds.shape[1:]))


# ----------------------------------------------------------------------------------------------- stage
def run(data: DataConfig, frames: FramesConfig, out: Path, jobs: int = 0) -> PreparedIndex:
    """Prepare ``data.root`` into ``out`` (index.json, frames.h5, audio/)."""
    start = time.perf_counter()
    root = Path(data.root)
    if not root.is_dir():
        raise InputError(f"{root}: data.root does not exist or is not a folder")
    videos_found = find_videos(root / "videos")
    plans = plan_trials(root, videos_found)
    jobs = jobs or len(os.sched_getaffinity(0))
    out.mkdir(parents=True, exist_ok=True)
    tmp_audio, tmp_h5 = out / "audio.tmp", out / "frames.h5.tmp"
    shutil.rmtree(tmp_audio, ignore_errors=True)
    tmp_audio.mkdir()
    counted = {p.video for p in plans if p.split == "test"}
    used = sorted({p.video for p in plans})
    ctx = mp.get_context("forkserver" if sys.platform == "linux" else "spawn")
    with ctx.Pool(jobs) as pool:
        videos: dict[str, Video] = {}
        tasks = [(v, videos_found[v], v in counted, tmp_audio) for v in used]
        for name, fps, n, has_audio, secs, err in tqdm(
            pool.imap_unordered(_video_task, tasks), total=len(tasks), desc="videos", unit="video"
        ):
            if err:
                raise InputError(err)
            rel = videos_found[name].relative_to(root).as_posix()
            audio = f"audio/{name}.wav" if has_audio else None
            videos[name] = Video(name, rel, fps, n or 0, has_audio, audio, secs)
        trials = []
        for p in plans:
            v = videos[p.video]
            fr = p.frames if p.frames is not None else np.arange(1, v.n_frames + 1, dtype=np.int64)
            trials.append(Trial(p.name, p.split, p.video, v.fps, len(fr), v.has_audio, tuple(int(x) for x in fr)))
        _write_frames(pool, root, plans, trials, frames, tmp_h5)
    n_total = sum(t.n_frames for t in trials)
    # rename: audio and frames first, index.json last (its presence means the folder is complete)
    shutil.rmtree(out / "audio", ignore_errors=True)
    tmp_audio.rename(out / "audio")
    tmp_h5.replace(out / "frames.h5")
    index = PreparedIndex(out, frames.size, SAMPLE_RATE, videos, tuple(trials))
    tmp_index = out / "index.json.tmp"
    tmp_index.write_text(json.dumps(index_to_json(index, frames.missing)))
    tmp_index.replace(out / "index.json")
    secs = time.perf_counter() - start
    print(json.dumps({
        "prepare": str(out), "trials": len(trials), "videos": len(videos), "frames": n_total,
        "seconds": round(secs, 2), "frames_per_s": round(n_total / secs, 1), "jobs": jobs,
    }))
    return index


def _chunks(plans: list[TrialPlan], trials: list[Trial], root: Path, size: int) -> Iterator[tuple[Path, np.ndarray, int]]:
    for p, t in zip(plans, trials):
        fr = t.frame_numbers
        for s in range(0, len(fr), CHUNK):
            yield root / "cropped_aligned" / p.name, fr[s : s + CHUNK], size


def _write_frames(pool, root: Path, plans: list[TrialPlan], trials: list[Trial], cfg: FramesConfig, path: Path) -> None:
    """Write frames.h5 (to ``path``) from crop chunks decoded by ``pool``, in trial order."""
    s = cfg.size
    results = pool.imap(_crop_task, _chunks(plans, trials, root, s))
    bar = tqdm(total=sum(t.n_frames for t in trials), desc="crops", unit="frame")
    with h5py.File(path, "w") as h5:
        h5.attrs["size"], h5.attrs["missing"] = s, cfg.missing
        for p, t in zip(plans, trials):
            g = h5.create_group(t.name)
            ds = g.create_dataset(
                "frames", shape=(t.n_frames, s, s, 3), dtype=np.uint8,
                # uncompressed: LZF decoding capped the extractor's reader at ~12k frames/s, below a GPU's rate
                chunks=(min(t.n_frames, 256), s, s, 3),
            )
            face = np.zeros(t.n_frames, dtype=bool)
            previous = None
            for start in range(0, t.n_frames, CHUNK):
                crops, mask, warnings = next(results)
                for w in warnings:
                    tqdm.write(w, file=sys.stderr)
                previous = fill_missing(crops, mask, previous, cfg.missing)
                ds[start : start + len(crops)] = crops
                face[start : start + len(crops)] = mask
                bar.update(len(crops))
            if cfg.missing == "last":
                backfill_leading(ds, face)
            if not face.any():
                tqdm.write(f"warning: {root / 'cropped_aligned' / t.name}: no crops at all; frames are black", file=sys.stderr)
            g["face"] = face
            if p.labels is not None:
                g["labels"] = p.labels
    bar.close()
