"""``prepare``: a dataset in the Aff-Wild2 layout -> ``data/prepared/`` (format: pipeline/io/prepared.py).

Rules (DESIGN.md, paper section 3.2):
- Trials come from the annotation files (train, validation) and ``test_set.txt`` (test). A trial's video is found
  by stem at any depth under ``videos/`` (.mp4, .avi, .mov, .mkv, .webm, .m4v); ``<video>_left`` / ``<video>_right`` share ``<video>``.
  Trial and video names must be plain names (pipeline/io/names.py).
- Every video's frames are counted: by decoding for videos of test trials (their frames are 1 .. that count, and the
  submission needs exactly one row per decoded frame), by demuxing packets for the others (50-250 times faster; the
  count only bounds the annotation rows). Annotation rows past the video's last frame are dropped with a warning.
- Train/val trial frames are the annotation rows whose valence and arousal are both not -5.
- Each frame's crop ``cropped_aligned/<trial>/%05d.jpg`` is resized to ``frames.size``; a missing or unreadable
  crop is filled with the last available one (``frames.missing: last``; leading missing crops take the first
  available one) or with black (``zero``), and ``face`` records which rows had a real crop. Crops that are not JPEG,
  not RGB, not square or smaller than ``frames.size`` are read, converted and resized, with one warning per trial.
- Audio: each video's first audio stream as 16 kHz mono float32 WAV, placed in time by ``audio_offset`` (where its
  first sample sits on the video timeline); no audio stream -> no file, ``has_audio`` false.
- Frame times: the video's timeline starts at its first frame; a variable-rate video keeps its frames' timestamps.

Work is spread over ``jobs`` processes (videos, then chunks of crops); the main process writes HDF5 in order, so
memory holds a few chunks, never a trial, and hashes the rows as it writes them (``frames_sha256``). A previous
``index.json`` is removed before anything is written; outputs are written under temporary names and renamed at the
end, ``index.json`` last: a killed run never leaves a folder that looks finished.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO

import h5py
import numpy as np
from PIL import Image
from tqdm import tqdm

from pipeline.common.config import DataConfig, FramesConfig
from pipeline.common.errors import InputError
from pipeline.io.annotations import annotation_files, read_annotation, read_test_list
from pipeline.io.media import (
    decode_audio_track,
    find_videos,
    missing_video,
    probe_video,
    resolve_video,
)
from pipeline.io.names import check_name
from pipeline.io.prepared import (
    FramesDigest,
    PreparedIndex,
    Trial,
    Video,
    audio_sha256,
    index_to_json,
    write_labels,
    write_wav,
)
from pipeline.io.timebase import SAMPLE_RATE

CHUNK = 512  # crops per worker task


@dataclass(frozen=True)
class TrialPlan:
    name: str
    split: str
    video: str
    frames: np.ndarray | None  # None for test trials until the video is counted
    labels: np.ndarray | None
    source: Path  # annotation file or test_set.txt, for messages
    n_rows: int = 0  # annotation rows (= frames the annotators saw)


def plan_trials(root: Path, videos: dict[str, Path]) -> list[TrialPlan]:
    """Every trial of ``root`` with its video and, for annotated trials, frames and labels."""
    plans: list[TrialPlan] = []
    seen: dict[str, Path] = {}
    for split, files in annotation_files(root).items():
        for f in files:
            check_name(f.stem, f"{f}: trial name")
            if f.stem in seen:
                raise InputError(f"{f}: trial {f.stem!r} is also annotated in {seen[f.stem]}")
            seen[f.stem] = f
            video = resolve_video(f.stem, videos)
            if video is None:
                raise InputError(f"{f}: {missing_video(f.stem, root)}")
            ann = read_annotation(f)
            if not ann.n_rows:
                raise InputError(f"{f}: no rows after the header (an empty annotation file)")
            if not len(ann.frames):
                raise InputError(f"{f}: no annotated rows (every row has -5)")
            plans.append(TrialPlan(f.stem, split, video, ann.frames, ann.labels, f, ann.n_rows))
    for name in read_test_list(root):
        src = root / "test_set.txt"
        if name in seen:
            raise InputError(f"{src}: test trial {name!r} is also annotated in {seen[name]}")
        seen[name] = src
        video = resolve_video(name, videos)
        if video is None:
            raise InputError(f"{src}: {missing_video(name, root)}")
        plans.append(TrialPlan(name, "test", video, None, None, src))
    if not plans:
        raise InputError(f"{root}: no trials (no annotation files under annotations/VA_Estimation_Challenge and no test_set.txt)")
    return plans


def clip_to_video(plan: TrialPlan, n_frames: int, video_path: Path, counted_by: str) -> tuple[TrialPlan, str | None]:
    """``plan`` without the annotation rows past the video's last frame, and a warning when there were any."""
    if plan.frames is None or plan.n_rows <= n_frames:
        return plan, None
    keep = plan.frames <= n_frames
    if not keep.any():
        raise InputError(f"{plan.source}: every annotated row lies past the last frame of {video_path} ({n_frames} frames)")
    warning = (
        f"warning: {plan.source}: {plan.n_rows - n_frames} annotation row(s) past the last frame of {video_path} "
        f"({n_frames} frames, counted by {counted_by}); dropped"
    )
    return TrialPlan(plan.name, plan.split, plan.video, plan.frames[keep], plan.labels[keep], plan.source, n_frames), warning


# ------------------------------------------------------------------------------------------ worker tasks
@dataclass
class VideoResult:
    name: str
    video: Video | None = None
    warnings: tuple[str, ...] = ()
    error: str | None = None


def _video_task(args: tuple[str, Path, str, bool, Path]) -> VideoResult:
    """Probe one video (count its frames, read their times) and write its audio."""
    name, path, rel, decode, audio_dir = args
    try:
        info = probe_video(path, count_frames=decode)
        track = decode_audio_track(path) if info.has_audio else None
    except InputError as e:
        return VideoResult(name, error=str(e))
    audio, seconds, offset, digest = None, 0.0, 0.0, None
    if track is not None:
        write_wav(audio_dir / f"{name}.wav", track.samples)
        audio, seconds = f"audio/{name}.wav", len(track.samples) / SAMPLE_RATE
        offset, digest = track.start - info.start, audio_sha256(track.samples)
    video = Video(
        name, rel, info.fps, info.n_frames, track is not None, audio, seconds, offset, digest, info.counted_by,
        info.timestamps,
    )
    return VideoResult(name, video, info.warnings + (track.warnings if track is not None else ()))


@dataclass
class CropIssues:
    """Per trial: how many crops needed each kind of repair, and the first file of each kind."""

    first: dict[str, tuple[Path, str]] = field(default_factory=dict)
    count: dict[str, int] = field(default_factory=dict)

    def add(self, kind: str, path: Path, detail: str) -> None:
        self.first.setdefault(kind, (path, detail))
        self.count[kind] = self.count.get(kind, 0) + 1

    def merge(self, other: "CropIssues") -> None:
        for kind, (path, detail) in other.first.items():
            self.first.setdefault(kind, (path, detail))
            self.count[kind] = self.count.get(kind, 0) + other.count[kind]

    def lines(self) -> list[str]:
        out = []
        for kind, (path, detail) in self.first.items():
            n = self.count[kind]
            more = f" ({n - 1} more like it in {path.parent.name})" if n > 1 else ""
            out.append(f"warning: {path}: {detail}{more}")
        return out


def load_crop(path: Path | BinaryIO, size: int, issues: CropIssues | None = None) -> np.ndarray | None:
    """A crop as uint8 (size, size, 3) RGB, or None when the file is missing; raises OSError if unreadable. A crop
    that is not a JPEG, not RGB, not square or smaller than ``size`` is still read (converted, resized) and noted
    in ``issues``. ``path`` may be an open binary file (``analyze`` passes the JPEG bytes in memory)."""
    try:
        img = Image.open(path)
    except FileNotFoundError:
        return None
    with img:
        if issues is not None:
            if img.format != "JPEG":
                issues.add("format", path, f"not a JPEG ({img.format}), read anyway")
            if img.mode != "RGB":
                issues.add("mode", path, f"{img.mode} crop, not RGB: converted")
            w, h = img.size
            if w != h or w < size:
                issues.add("size", path, f"{w}x{h} crop (expected square, >= {size} px): resized to {size}x{size}")
        img.draft("RGB", (size, size))  # JPEG decodes at 1/2, 1/4 or 1/8 scale when that is still >= size
        img = img.convert("RGB")
        if img.size != (size, size):
            img = img.resize((size, size), Image.BILINEAR)
        return np.asarray(img, dtype=np.uint8)


def _crop_task(args: tuple[Path, np.ndarray, int]) -> tuple[np.ndarray, np.ndarray, CropIssues]:
    """Load crops for ``frames``: (n, S, S, 3) uint8 with zeros where missing, (n,) face mask, what was repaired."""
    folder, frames, size = args
    out = np.zeros((len(frames), size, size, 3), dtype=np.uint8)
    face = np.zeros(len(frames), dtype=bool)
    issues = CropIssues()
    for i, f in enumerate(frames):
        path = folder / f"{int(f):05d}.jpg"
        try:
            crop = load_crop(path, size, issues)
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
            issues.add("unreadable", path, f"unreadable crop, counted as missing ({e})")
            continue
        if crop is not None:
            out[i], face[i] = crop, True
    return out, face, issues


def fill_missing(frames: np.ndarray, face: np.ndarray, previous: np.ndarray | None, mode: str) -> np.ndarray | None:
    """Fill rows of ``frames`` (n, S, S, 3) where ``face`` is False, in place.

    ``last``: the most recent real crop, ``previous`` carrying it over from the preceding chunk; rows before any real
    crop of the trial are left as they are (:class:`TrialWriter` gives them the first real crop). ``zero``: black
    (already the case). Returns the last real crop seen so far (for the next chunk)."""
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


class TrialWriter:
    """Streams one trial's crop chunks into its HDF5 dataset, in order: fills missing crops and hashes the rows as
    they are finally stored (``frames_sha256``). In ``last`` mode the rows before the trial's first real crop wait
    (unwritten, unhashed) until that crop arrives, then take it; without any real crop they stay black."""

    def __init__(self, ds: h5py.Dataset, mode: str) -> None:
        self.ds, self.mode = ds, mode
        self.face = np.zeros(ds.shape[0], dtype=bool)
        self.digest = FramesDigest()
        self.previous: np.ndarray | None = None  # the last real crop so far
        self.waiting = 0  # leading rows not yet written ("last" mode, no real crop yet)

    def _fill_waiting(self, crop: np.ndarray) -> None:
        for s in range(0, self.waiting, CHUNK):
            block = np.broadcast_to(crop, (min(CHUNK, self.waiting - s), *crop.shape))
            self.ds[s : s + len(block)] = block
            self.digest.update(block)
        self.waiting = 0

    def add(self, start: int, crops: np.ndarray, face: np.ndarray) -> None:
        """Rows ``start : start + len(crops)``: crops (zeros where missing) and their face mask."""
        self.face[start : start + len(crops)] = face
        seen_before = self.previous is not None
        self.previous = fill_missing(crops, face, self.previous, self.mode)
        if self.mode == "last" and not seen_before:
            if self.previous is None:  # no real crop yet: these rows wait for the first one
                self.waiting += len(crops)
                return
            first = int(np.argmax(face))
            crops[:first] = crops[first]
            self._fill_waiting(crops[first])
        self.ds[start : start + len(crops)] = crops
        self.digest.update(crops)

    def finish(self) -> str:
        """Write what still waits (black: the trial has no real crop) and return ``frames_sha256``."""
        if self.waiting:
            self._fill_waiting(np.zeros(self.ds.shape[1:], dtype=np.uint8))
        return self.digest.hexdigest(self.face)


# ----------------------------------------------------------------------------------------------- stage
def run(data: DataConfig, frames: FramesConfig, out: Path, jobs: int = 0) -> PreparedIndex:
    """Prepare ``data.root`` into ``out`` (index.json, frames.h5, labels.h5, audio/)."""
    start = time.perf_counter()
    root = Path(data.root)
    if not root.is_dir():
        raise InputError(f"{root}: data.root does not exist or is not a folder")
    videos_found = find_videos(root / "videos")
    plans = plan_trials(root, videos_found)
    jobs = jobs or len(os.sched_getaffinity(0))
    out.mkdir(parents=True, exist_ok=True)
    (out / "index.json").unlink(missing_ok=True)  # from here on the folder is incomplete until index.json is back
    tmp_audio, tmp_h5, tmp_labels = out / "audio.tmp", out / "frames.h5.tmp", out / "labels.h5.tmp"
    shutil.rmtree(tmp_audio, ignore_errors=True)
    tmp_audio.mkdir()
    decoded = {p.video for p in plans if p.split == "test"}
    used = sorted({p.video for p in plans})
    ctx = mp.get_context("forkserver" if sys.platform == "linux" else "spawn")
    with ctx.Pool(jobs) as pool:
        videos: dict[str, Video] = {}
        tasks = [(v, videos_found[v], videos_found[v].relative_to(root).as_posix(), v in decoded, tmp_audio) for v in used]
        for r in tqdm(pool.imap_unordered(_video_task, tasks), total=len(tasks), desc="videos", unit="video"):
            if r.error:
                raise InputError(r.error)
            for w in r.warnings:
                tqdm.write(w, file=sys.stderr)
            videos[r.name] = r.video
        trials = []
        for i, p in enumerate(plans):
            v = videos[p.video]
            p, warning = clip_to_video(p, v.n_frames, videos_found[p.video], v.counted_by)
            if warning:
                tqdm.write(warning, file=sys.stderr)
            plans[i] = p
            fr = p.frames if p.frames is not None else np.arange(1, v.n_frames + 1, dtype=np.int64)
            trials.append(
                Trial(p.name, p.split, p.video, v.fps, len(fr), v.has_audio, tuple(int(x) for x in fr), None, v.timestamps)
            )
        digests = _write_frames(pool, root, plans, trials, frames, tmp_h5)
    trials = [replace(t, frames_sha256=d) for t, d in zip(trials, digests)]
    write_labels(tmp_labels, {p.name: p.labels for p in plans if p.labels is not None})
    n_total = sum(t.n_frames for t in trials)
    # rename: audio, frames and labels first, index.json last (its presence means the folder is complete)
    shutil.rmtree(out / "audio", ignore_errors=True)
    tmp_audio.rename(out / "audio")
    tmp_h5.replace(out / "frames.h5")
    tmp_labels.replace(out / "labels.h5")
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


def _write_frames(pool, root: Path, plans: list[TrialPlan], trials: list[Trial], cfg: FramesConfig, path: Path) -> list[str]:
    """Write frames.h5 (to ``path``) from crop chunks decoded by ``pool``, in trial order; returns each trial's
    ``frames_sha256``."""
    s = cfg.size
    results = pool.imap(_crop_task, _chunks(plans, trials, root, s))
    bar = tqdm(total=sum(t.n_frames for t in trials), desc="crops", unit="frame")
    digests = []
    with h5py.File(path, "w") as h5:
        h5.attrs["size"], h5.attrs["missing"] = s, cfg.missing
        for t in trials:
            g = h5.create_group(t.name)
            ds = g.create_dataset(
                "frames", shape=(t.n_frames, s, s, 3), dtype=np.uint8, track_times=False,
                # uncompressed: LZF decoding capped the extractor's reader at ~12k frames/s, below a GPU's rate
                chunks=(min(t.n_frames, 256), s, s, 3),
            )
            writer = TrialWriter(ds, cfg.missing)
            issues = CropIssues()
            for start in range(0, t.n_frames, CHUNK):
                crops, mask, chunk_issues = next(results)
                writer.add(start, crops, mask)
                issues.merge(chunk_issues)
                bar.update(len(crops))
            digests.append(writer.finish())
            g.create_dataset("face", data=writer.face, track_times=False)
            for line in issues.lines():
                tqdm.write(line, file=sys.stderr)
            if not writer.face.any():
                folder = root / "cropped_aligned" / t.name
                why = "no such folder" if not folder.is_dir() else "no crop for any of its frames"
                tqdm.write(f"warning: {folder}: {why}; the trial's frames are black, face all False", file=sys.stderr)
    bar.close()
    return digests
