"""``data/prepared/``: the contract between `prepare`/`split` and every later stage.

``index.json``::

    {"format": "va-pipeline-prepared/2", "frames_size": 48, "sample_rate": 16000, "missing": "last",
     "videos": {"<video>": {"path": "<relative to data.root>", "fps": 30.0, "n_frames": 480,
                            "counted_by": "packets" | "decoding", "timestamps": null,
                            "has_audio": true, "audio": "audio/<video>.wav", "audio_seconds": 16.0,
                            "audio_offset": 0.0, "audio_sha256": "<hex>"}},
     "trials": [{"name": "<trial>", "split": "train" | "val" | "test", "video": "<video>", "fps": 30.0,
                 "n_frames": N, "has_audio": true, "frames": [1, 2, 4, ...], "frames_sha256": "<hex>"}]}

Time (pipeline/io/timebase.py): a video's timeline starts at 0 = the presentation time of its first frame.

- ``frames``: the trial's 1-based video frame numbers, one per row of every per-trial array downstream;
  :attr:`Trial.times` gives their (N,) seconds on the video timeline.
- ``fps``: the video's frame rate; frame ``f`` is at ``(f - 1) / fps`` unless ``timestamps`` is set.
- ``timestamps``: null for a constant-rate video; for a variable-rate one the frames' real presentation times,
  run-length coded (:class:`~pipeline.io.timebase.Timestamps`: ``{"time_base": [1, 15360], "runs": [[512, 72], ...]}``),
  and ``fps`` is then their mean rate.
- ``n_frames`` of a video: its frame count, ``counted_by`` ``decoding`` (every frame decoded: videos of test trials,
  whose submission has one row per decoded frame) or ``packets`` (demuxed video packets, no decoding: the other
  videos; used to drop annotation rows past the video's end).
- ``audio_offset``: seconds on the video timeline at which the WAV's sample 0 is heard (positive: the track starts
  after the first frame; negative: before it). Frame time ``t`` reads WAV sample ``round((t - audio_offset) * 16000)``.
- ``audio_sha256`` / ``frames_sha256``: digests of what `prepare` wrote (the WAV's float32 samples; the trial's
  frames then its face mask, as stored), so a feature store's fingerprint follows content, not file dates.

``frames.h5``: one group per trial with ``frames`` uint8 (N, S, S, 3) RGB and ``face`` bool (N,) (True where a real
crop was read).

``labels.h5``: one group per train/val trial with ``labels`` float32 (N, 2) valence, arousal in [-1, 1]; kept apart
from frames.h5 (19 GB on Aff-Wild2) so that training and evaluation depend on a few megabytes.

``audio/<video>.wav``: 16 kHz mono float32, the decoded track; present only for videos with an audio stream.

``folds.json``: ``{"n_folds": 6, "scheme": ..., "seed": ..., "folds": [[trial, ...], ...]}``; fold k validates on
``folds[k]`` and trains on the others.
"""

from __future__ import annotations

import hashlib
import json
import struct
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Literal

import h5py
import numpy as np

from pipeline.common.errors import InputError
from pipeline.io.timebase import SAMPLE_RATE, Timestamps, frame_times

INDEX_FORMAT = "va-pipeline-prepared/2"
Split = Literal["train", "val", "test"]


@dataclass(frozen=True)
class Video:
    name: str
    path: str  # relative to data.root
    fps: float  # constant rate, or the mean rate when `timestamps` is set
    n_frames: int  # frame count, see `counted_by`
    has_audio: bool
    audio: str | None  # relative to the prepared folder
    audio_seconds: float
    audio_offset: float = 0.0  # seconds on the video timeline at which the WAV's sample 0 is heard
    audio_sha256: str | None = None  # sha256 of the WAV's float32 samples
    counted_by: Literal["decoding", "packets"] = "decoding"
    timestamps: Timestamps | None = None  # presentation times of a variable-rate video; None = constant rate


@dataclass(frozen=True)
class Trial:
    name: str
    split: Split
    video: str
    fps: float
    n_frames: int  # rows N of every per-trial array
    has_audio: bool
    frames: tuple[int, ...]  # 1-based video frame numbers, length N
    frames_sha256: str | None = None  # sha256 of the trial's frames and face mask in frames.h5
    timestamps: Timestamps | None = None  # the video's (not written per trial; load_index copies it here)

    @property
    def frame_numbers(self) -> np.ndarray:
        return np.asarray(self.frames, dtype=np.int64)

    @property
    def times(self) -> np.ndarray:
        """(N,) float64 seconds of each row's frame on the video timeline (0 = the video's first frame)."""
        return frame_times(self.frame_numbers, self.fps, self.timestamps)


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
        raise InputError(
            f"{path}: format {raw.get('format')!r}, expected {INDEX_FORMAT!r} (re-run `python -m pipeline prepare`)"
        )
    videos = {
        k: Video(name=k, **{**v, "timestamps": Timestamps.from_json(v.get("timestamps"))}) for k, v in raw["videos"].items()
    }
    trials = tuple(
        Trial(**{**t, "frames": tuple(t["frames"]), "timestamps": videos[t["video"]].timestamps}) for t in raw["trials"]
    )
    return PreparedIndex(prepared, int(raw["frames_size"]), int(raw["sample_rate"]), videos, trials)


def index_to_json(index: PreparedIndex, missing: str) -> dict:
    """The JSON form of ``index`` (inverse of :func:`load_index`)."""

    def video(v: Video) -> dict:
        d = {f: x for f, x in asdict(v).items() if f not in ("name", "timestamps")}
        return {**d, "timestamps": v.timestamps.to_json() if v.timestamps else None}

    def trial(t: Trial) -> dict:
        return {**{f: x for f, x in asdict(t).items() if f != "timestamps"}, "frames": list(t.frames)}

    return {
        "format": INDEX_FORMAT,
        "frames_size": index.frames_size,
        "sample_rate": index.sample_rate,
        "missing": missing,
        "videos": {k: video(x) for k, x in sorted(index.videos.items())},
        "trials": [trial(t) for t in index.trials],
    }


# -------------------------------------------------------------------------------------------------- digests
class FramesDigest:
    """sha256 of a trial's stored rows, fed in row order (any chunking), then its face mask: ``frames_sha256``."""

    def __init__(self) -> None:
        self._h = hashlib.sha256()

    def update(self, rows: np.ndarray) -> None:
        self._h.update(np.ascontiguousarray(rows, dtype=np.uint8).data)

    def hexdigest(self, face: np.ndarray) -> str:
        h = self._h.copy()
        h.update(np.ascontiguousarray(face, dtype=bool).data)
        return h.hexdigest()


def frames_sha256(frames: np.ndarray, face: np.ndarray) -> str:
    """``frames_sha256`` of a whole trial: uint8 (N, S, S, 3) frames and bool (N,) face mask."""
    d = FramesDigest()
    d.update(frames)
    return d.hexdigest(face)


def audio_sha256(samples: np.ndarray) -> str:
    """``audio_sha256``: sha256 of float32 little-endian samples (what the FLOAT WAV stores)."""
    return hashlib.sha256(np.ascontiguousarray(samples, dtype="<f4").data).hexdigest()


# ------------------------------------------------------------------------------------------------- reading
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


def write_labels(path: str | Path, labels: Mapping[str, np.ndarray]) -> None:
    """Write ``labels.h5`` at ``path``: one group per trial with ``labels`` float32 (N, 2)."""
    with h5py.File(path, "w") as h5:
        for name, y in labels.items():
            h5.create_group(name).create_dataset("labels", data=np.asarray(y, dtype=np.float32), track_times=False)


def read_labels(prepared: str | Path, trials: list[str]) -> dict[str, np.ndarray]:
    """(N, 2) float32 valence-arousal labels per trial from ``labels.h5``."""
    path = Path(prepared) / "labels.h5"
    out = {}
    try:
        h5 = h5py.File(path, "r")
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run `python -m pipeline prepare` first)") from None
    with h5:
        for t in trials:
            if t not in h5:
                raise InputError(f"{path}: trial {t!r} has no labels but is in a training fold")
            out[t] = np.asarray(h5[t]["labels"][()], dtype=np.float32)
    return out


def write_wav(path: str | Path, samples: np.ndarray, sample_rate: int = SAMPLE_RATE) -> None:
    """Write float32 mono ``samples`` as a WAV file (IEEE float, ``fmt``, ``fact`` and ``data`` chunks), byte for
    byte the same for the same samples. libsndfile adds a PEAK chunk holding the time of writing to float WAVs, so
    every `prepare` run changed the audio files and DVC re-ran the audio stages."""
    data = np.ascontiguousarray(samples, dtype="<f4").tobytes()
    if len(data) > 2**32 - 64:
        raise InputError(f"{path}: {len(samples) / sample_rate / 3600:.1f} h of audio does not fit a WAV file")
    fmt = struct.pack("<HHIIHH", 3, 1, sample_rate, sample_rate * 4, 4, 32)  # IEEE float, mono, 4 bytes per frame
    chunks = [(b"fmt ", fmt), (b"fact", struct.pack("<I", len(samples))), (b"data", data)]
    body = b"WAVE" + b"".join(tag + struct.pack("<I", len(x)) + x for tag, x in chunks)
    with open(path, "wb") as f:
        f.write(b"RIFF" + struct.pack("<I", len(body)) + body)


def load_folds(path: str | Path) -> list[list[str]]:
    """``folds.json`` -> list of folds, each a list of trial names."""
    path = Path(path)
    try:
        return [list(f) for f in json.loads(path.read_text())["folds"]]
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run `python -m pipeline split` first)") from None
