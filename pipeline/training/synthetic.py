"""Synthetic data in the pipeline's own formats, for the tests and ``bench train``: ``data/prepared`` folders
(pipeline/io/prepared.py) and, for training, feature stores in Aff-Wild2's shapes whose rows carry the labels.

:func:`write_folder` is the one writer of a prepared folder here. What goes into it is decided by
:func:`write_prepared` (tiny folders from a per-trial spec: random frames, a 220 Hz tone, random-walk labels; the
tests' ``make_prepared`` fixture) and :func:`make_synthetic` (a labelled set with folds and feature stores a model
can learn from; the tests that train and ``bench train``). :func:`synthetic_affwild` is ``make_synthetic`` at
Aff-Wild2's size and trial lengths.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import h5py
import numpy as np
import torch
from scipy.ndimage import gaussian_filter1d
from tqdm import tqdm

from pipeline.common.provenance import RANDOM_INIT
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import (
    INDEX_FORMAT,
    PreparedIndex,
    Trial,
    Video,
    audio_sha256,
    frames_sha256,
    index_to_json,
    write_labels,
    write_wav,
)
from pipeline.io.timebase import SAMPLE_RATE

ROW_SHAPES = {"iresnet": (512, 3, 3), "vggish": (128,), "mfcc": (39,)}  # Aff-Wild2's feature rows
AFFECT_WEIGHTS = {"iresnet": (1.0, 0.4), "vggish": (0.2, 1.0), "mfcc": (0.0, 1.0)}  # (valence, arousal) per modality
LABEL_LAG = 12  # frames the labels trail what the features show, as raters do
TRIAL_MIN, TRIAL_MAX = 300, 25_000  # Aff-Wild2's shortest and longest trials, in frames


# ------------------------------------------------------------------------------------------- the writer
@dataclass(frozen=True)
class TrialData:
    """One trial of a prepared folder: its ``index.json`` record and its rows."""

    record: Trial
    frames: np.ndarray  # (N, S, S, 3) uint8 face crops
    face: np.ndarray  # (N,) bool, a face was found at that frame
    labels: np.ndarray | None  # (N, 2) float32 valence, arousal; None: not labelled (a test trial)


def write_folder(
    out: Path,
    size: int,
    videos: Mapping[str, Video],
    trials: Sequence[TrialData],
    audio: Mapping[str, np.ndarray] | None = None,
    digests: bool = True,
) -> PreparedIndex:
    """Write the prepared folder ``out``: ``audio/<video>.wav`` for each ``audio`` entry ({video: (S,) float32
    samples at SAMPLE_RATE}; the folder is made when ``audio`` is given, even empty), ``frames.h5``, ``labels.h5``
    (the labelled trials) and ``index.json`` (``size``: the crops' side in pixels). ``digests``: record each WAV's
    ``audio_sha256`` and each trial's ``frames_sha256`` as ``prepare`` does. Returns the index written."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    videos = dict(videos)
    if audio is not None:
        (out / "audio").mkdir(exist_ok=True)
        for v, samples in audio.items():
            write_wav(out / "audio" / f"{v}.wav", samples)
            if digests:
                videos[v] = replace(videos[v], audio_sha256=audio_sha256(samples))
    records = []
    with h5py.File(out / "frames.h5", "w") as h5:
        for t in trials:
            g = h5.create_group(t.record.name)
            g["frames"], g["face"] = t.frames, t.face
            records.append(replace(t.record, frames_sha256=frames_sha256(t.frames, t.face)) if digests else t.record)
    write_labels(out / "labels.h5", {t.record.name: t.labels for t in trials if t.labels is not None})
    index = PreparedIndex(out, size, SAMPLE_RATE, videos, tuple(records))
    (out / "index.json").write_text(json.dumps(index_to_json(index, "last")))
    return index


# ---------------------------------------------------------------------------------- tiny folders from a spec
def write_prepared(out: Path, trials: dict[str, dict], size: int = 16, seed: int = 0) -> PreparedIndex:
    """Write a small ``data/prepared`` folder that follows pipeline/io/prepared.py.

    ``trials`` maps a trial name to ``{"split": ..., "n": rows, "fps": ..., "video": ..., "audio": seconds or None,
    "offset": audio_offset seconds (default 0), "timestamps": Timestamps of a variable-rate video (default None)}``.
    Frames are random uint8, labels a smooth random walk in [-1, 1], audio a 220 Hz tone; digests as `prepare`
    records them.
    """
    rng = np.random.default_rng(seed)
    videos: dict[str, Video] = {}
    audio: dict[str, np.ndarray] = {}
    rows: list[TrialData] = []
    for name, spec in trials.items():
        n, fps = int(spec["n"]), float(spec.get("fps", 25.0))
        video = spec.get("video", name)
        split = spec.get("split", "train")
        secs = spec.get("audio", n / fps)
        stamps = spec.get("timestamps")
        if video not in videos:  # a video shared by trials takes the first one's frame count and rate
            if secs:
                t = np.arange(int(secs * SAMPLE_RATE)) / SAMPLE_RATE
                audio[video] = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
            videos[video] = Video(
                video, f"videos/{video}.mp4", fps, n, bool(secs), f"audio/{video}.wav" if secs else None,
                float(secs or 0.0), float(spec.get("offset", 0.0)), None, "decoding", stamps,
            )
        frames = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
        labels = None
        if split != "test":
            labels = np.tanh(np.cumsum(rng.normal(0, 0.05, (n, 2)), axis=0)).astype(np.float32)
        record = Trial(name, split, video, fps, n, bool(secs), tuple(range(1, n + 1)), None, stamps)
        rows.append(TrialData(record, frames, np.ones(n, dtype=bool), labels))
    return write_folder(out, size, videos, rows, audio)


# --------------------------------------------------------------------------- a learnable set with stores
@dataclass(frozen=True)
class Cohort:
    """The trials of a :func:`make_synthetic` set: names, frames, split, frame rate, and the latent affect the
    features show ``{trial: (N, 2)}`` with the labels that trail it by :data:`LABEL_LAG` frames."""

    names: list[str]
    length: dict[str, int]
    split: dict[str, str]
    fps: dict[str, float]
    latent: dict[str, np.ndarray]  # (N, 2) float64 in (-1, 1)
    labels: dict[str, np.ndarray]  # (N, 2) float32 in (-1, 1)

    @property
    def silent(self) -> str:
        """The trial whose video has no audio."""
        return self.names[-1]


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
    rng = np.random.default_rng(seed)  # one stream, drawn in this order: lengths, latents, directions, stores
    shapes = dict(ROW_SHAPES if row_shapes is None else row_shapes)
    dtypes = {m: dtype if isinstance(dtype, str) else dtype[m] for m in shapes}
    prepared, features = Path(root) / "prepared", Path(root) / "features"
    if lengths is not None:
        n_trials = len(lengths) - n_test
    cohort = _cohort(n_trials, n_test, frames, lengths, rng)
    directions = {m: rng.normal(size=(2, int(np.prod(s)))) / np.sqrt(np.prod(s)) * 4 for m, s in shapes.items()}
    _write_cohort(prepared, cohort, n_folds, seed)
    features.mkdir(parents=True, exist_ok=True)
    gen = torch.Generator().manual_seed(seed)
    bar = tqdm(total=sum(cohort.length.values()) * len(shapes), unit="row", desc="synthetic stores", disable=not progress)
    for m, shape in shapes.items():
        store = FeatureStore.open_or_create(
            features / f"{m}.zarr", extractor=m, row_shape=shape, dtype=dtypes[m], trials=cohort.length,
            fps=cohort.fps, fingerprint={"synthetic": seed, "noise": noise}, attrs={"weights": RANDOM_INIT},
            n_buckets=2 if len(cohort.names) < 64 else 16,
        )
        dirs = torch.from_numpy(directions[m]).float()  # (2, D)
        for t in store.pending():
            rows, mask = _rows(m, t, cohort, dirs, noise, rng, gen)
            store.append(t, 0, rows.reshape(len(rows), *shape).astype(dtypes[m]), mask)
            bar.update(len(rows))
        store.flush()
    bar.close()
    return prepared, features


def _cohort(n_trials: int, n_test: int, frames: int, lengths: list[int] | None, rng: np.random.Generator) -> Cohort:
    """``n_trials`` labelled trials (the last two of them validation) and ``n_test`` test trials, ``syn00`` ...;
    lengths drawn around ``frames`` unless given, alternately 30 and 25 fps; latent affect and labels."""
    total = n_trials + n_test
    width = max(2, len(str(total - 1)))
    names = [f"syn{i:0{width}d}" for i in range(total)]
    if lengths is None:
        lengths = [int(frames + rng.integers(-frames // 5, frames // 5 + 1)) for _ in names]
    length = dict(zip(names, (int(n) for n in lengths)))
    split = {t: ("test" if i >= n_trials else ("val" if i >= n_trials - 2 else "train")) for i, t in enumerate(names)}
    fps = {t: (30.0 if i % 2 == 0 else 25.0) for i, t in enumerate(names)}
    latent, labels = {}, {}
    for t in names:
        z = gaussian_filter1d(rng.normal(size=(length[t] + LABEL_LAG, 2)), sigma=25, axis=0)
        z = np.tanh(1.3 * z / z.std(0))
        latent[t] = z[LABEL_LAG:]  # what the features show now
        labels[t] = z[:-LABEL_LAG].astype(np.float32)  # what the raters say about it, LABEL_LAG frames late
    return Cohort(names, length, split, fps, latent, labels)


def _write_cohort(prepared: Path, c: Cohort, n_folds: int, seed: int) -> None:
    """``prepared`` for cohort ``c``: black 8 x 8 crops (the stores carry the signal), no face in the first 10
    frames of the first trial, no audio for :attr:`Cohort.silent` (no WAV files, no digests: nothing that trains
    reads them), and ``folds.json``: the labelled trials dealt into ``n_folds`` folds in name order."""
    videos: dict[str, Video] = {}
    rows: list[TrialData] = []
    for t in c.names:
        n, fps, has_audio = c.length[t], c.fps[t], t != c.silent
        videos[t] = Video(t, f"videos/{t}.mp4", fps, n, has_audio, f"audio/{t}.wav", n / fps)
        face = np.ones(n, bool)
        if t == c.names[0]:
            face[:10] = False
        record = Trial(t, c.split[t], t, fps, n, has_audio, tuple(range(1, n + 1)))
        rows.append(TrialData(record, np.zeros((n, 8, 8, 3), np.uint8), face,
                              None if c.split[t] == "test" else c.labels[t]))
    write_folder(prepared, 8, videos, rows, digests=False)
    labelled = [t for t in c.names if c.split[t] != "test"]
    folds = [labelled[k::n_folds] for k in range(n_folds)]
    (prepared / "folds.json").write_text(json.dumps({"n_folds": n_folds, "scheme": "random", "seed": seed, "folds": folds}))


def _rows(m: str, t: str, c: Cohort, dirs: torch.Tensor, noise: float, rng: np.random.Generator,
          gen: torch.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Modality ``m``'s rows of trial ``t``, (N, D) float32 flat, and its mask (N,) bool: the latent affect along
    ``dirs`` (2, D) weighted by :data:`AFFECT_WEIGHTS`, a per-trial offset (from ``rng``) and noise (from ``gen``);
    rows without input (no face, no audio) are 0 and masked out."""
    n = c.length[t]
    wv, wa = AFFECT_WEIGHTS.get(m, (0.5, 0.5))
    lat = torch.from_numpy(c.latent[t]).float()  # (n, 2)
    signal = (wv * lat[:, :1]) * dirs[0] + (wa * lat[:, 1:]) * dirs[1]  # (n, 1) * (D,) -> (n, D)
    offset = torch.from_numpy(rng.normal(size=signal.shape[1])).float() * 0.5
    rows = (signal + offset).add_(torch.randn(signal.shape, generator=gen), alpha=noise).numpy()
    mask = np.ones(n, bool)
    if m == "iresnet" and t == c.names[0]:
        mask[:10] = False
        rows[:10] = 0
    if m != "iresnet" and t == c.silent:  # the video without audio
        mask[:] = False
        rows[:] = 0
    return rows, mask


# ------------------------------------------------------------------------------------- Aff-Wild2's size
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
