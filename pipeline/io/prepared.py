"""``data/prepared/``: the contract between `prepare`/`split` and every later stage.

``index.json``::

    {"format": "va-pipeline-prepared/1", "frames_size": 48, "sample_rate": 16000, "missing": "last",
     "videos": {"<video>": {"path": "<relative to data.root>", "fps": 30.0, "n_frames": 480,
                            "has_audio": true, "audio": "audio/<video>.wav", "audio_seconds": 16.0}},
     "trials": [{"name": "<trial>", "split": "train" | "val" | "test", "video": "<video>", "fps": 30.0,
                 "n_frames": N, "has_audio": true, "frames": [1, 2, 4, ...]}]}

``frames`` are the trial's 1-based video frame numbers, one per row of every per-trial array downstream.

``frames.h5``: one group per trial with ``frames`` uint8 (N, S, S, 3) RGB, ``face`` bool (N,) (True where a real
crop was read) and, for train/val trials, ``labels`` float32 (N, 2) valence, arousal in [-1, 1].

``audio/<video>.wav``: 16 kHz mono float32, present only for videos with an audio stream.

``folds.json``: ``{"n_folds": 6, "scheme": ..., "seed": ..., "folds": [[trial, ...], ...]}``; fold k validates on
``folds[k]`` and trains on the others.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np
import soundfile as sf

from pipeline.errors import InputError

INDEX_FORMAT = "va-pipeline-prepared/1"
Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class Video:
    name: str
    path: str  # relative to data.root
    fps: float
    n_frames: int  # decoded frame count
    has_audio: bool
    audio: str | None  # relative to the prepared folder
    audio_seconds: float


@dataclass(frozen=True)
class Trial:
    name: str
    split: Split
    video: str
    fps: float
    n_frames: int  # rows N of every per-trial array
    has_audio: bool
    frames: tuple[int, ...]  # 1-based video frame numbers, length N

    @property
    def frame_numbers(self) -> np.ndarray:
        return np.asarray(self.frames, dtype=np.int64)


@dataclass(frozen=True)
class PreparedIndex:
    root: Path  # the prepared folder
    frames_size: int
    sample_rate: int
    videos: dict[str, Video]
    trials: tuple[Trial, ...]

    def trial(self, name: str) -> Trial:
        for t in self.trials:
            if t.name == name:
                return t
        raise InputError(f"{self.root / 'index.json'}: no trial {name!r}")

    def by_split(self, *splits: Split) -> list[Trial]:
        return [t for t in self.trials if t.split in splits]

    def audio_path(self, video: str) -> Path | None:
        v = self.videos[video]
        return self.root / v.audio if v.audio else None


def load_index(prepared: str | Path) -> PreparedIndex:
    """Read ``<prepared>/index.json``."""
    prepared = Path(prepared)
    path = prepared / "index.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run `python -m pipeline prepare` first)") from None
    if raw.get("format") != INDEX_FORMAT:
        raise InputError(f"{path}: unknown format {raw.get('format')!r}, expected {INDEX_FORMAT!r}")
    videos = {k: Video(name=k, **v) for k, v in raw["videos"].items()}
    trials = tuple(Trial(**{**t, "frames": tuple(t["frames"])}) for t in raw["trials"])
    return PreparedIndex(prepared, int(raw["frames_size"]), int(raw["sample_rate"]), videos, trials)


def index_to_json(index: PreparedIndex, missing: str) -> dict:
    """The JSON form of ``index`` (inverse of :func:`load_index`)."""
    from dataclasses import asdict

    return {
        "format": INDEX_FORMAT,
        "frames_size": index.frames_size,
        "sample_rate": index.sample_rate,
        "missing": missing,
        "videos": {k: {f: v for f, v in asdict(x).items() if f != "name"} for k, x in sorted(index.videos.items())},
        "trials": [{**asdict(t), "frames": list(t.frames)} for t in index.trials],
    }


class FrameReader:
    """Read-only access to ``frames.h5``; use as a context manager."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        try:
            self._h5 = h5py.File(self.path, "r")
        except FileNotFoundError:
            raise InputError(f"{self.path}: not found (run `python -m pipeline prepare` first)") from None
        self._last: tuple[str, h5py.Dataset | None] = ("", None)

    def __enter__(self) -> "FrameReader":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._h5.close()

    def _group(self, trial: str) -> h5py.Group:
        try:
            return self._h5[trial]
        except KeyError:
            raise InputError(f"{self.path}: no trial {trial!r}") from None

    def frames(self, trial: str, start: int = 0, stop: int | None = None, out: np.ndarray | None = None) -> np.ndarray:
        """uint8 (n, S, S, 3) RGB crops, rows ``start:stop`` of the trial; read straight into ``out`` when given
        (e.g. a pinned buffer), saving a copy."""
        if self._last[0] != trial:  # callers read a trial in consecutive pieces; an h5py lookup costs ~0.1 ms
            self._last = (trial, self._group(trial)["frames"])
        ds = self._last[1]
        if out is None:
            return ds[start:stop]
        stop = ds.shape[0] if stop is None else stop
        ds.read_direct(out, np.s_[start:stop])
        return out

    def face(self, trial: str) -> np.ndarray:
        """bool (N,): True where the row is a real crop, False where it was filled."""
        return self._group(trial)["face"][()]

    def labels(self, trial: str) -> np.ndarray | None:
        """float32 (N, 2) valence, arousal; None for test trials."""
        g = self._group(trial)
        return g["labels"][()] if "labels" in g else None


def read_labels(prepared: str | Path, trials: list[str]) -> dict[str, np.ndarray]:
    """(N, 2) float32 valence-arousal labels per trial from ``frames.h5``."""
    out = {}
    prepared = Path(prepared)
    with FrameReader(prepared / "frames.h5") as reader:
        for t in trials:
            y = reader.labels(t)
            if y is None:
                raise InputError(f"{prepared / 'frames.h5'}: trial {t!r} has no labels but is in a training fold")
            out[t] = np.asarray(y, dtype=np.float32)
    return out


def read_audio(path: str | Path) -> np.ndarray:
    """A prepared WAV as float32 (n_samples,) mono at 16 kHz."""
    data, sr = sf.read(str(path), dtype="float32", always_2d=False)
    if sr != 16_000 or data.ndim != 1:
        raise InputError(f"{path}: expected 16 kHz mono, got {sr} Hz with shape {data.shape}")
    return data


def load_folds(path: str | Path) -> list[list[str]]:
    """``folds.json`` -> list of folds, each a list of trial names."""
    path = Path(path)
    try:
        return [list(f) for f in json.loads(path.read_text())["folds"]]
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run `python -m pipeline split` first)") from None
