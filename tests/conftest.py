"""Shared fixtures: tiny prepared datasets built in tmp_path, and the real media folder."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import h5py
import numpy as np
import pytest

from pipeline.io.prepared import (
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

REALMEDIA = Path(__file__).resolve().parents[2] / "shared" / "realmedia"


@pytest.fixture(scope="session")
def realmedia() -> Path:
    """``../shared/realmedia``; tests using it are skipped cleanly when it is absent."""
    if not REALMEDIA.is_dir():
        pytest.skip(f"{REALMEDIA} not present")
    return REALMEDIA


def write_prepared(
    out: Path,
    trials: dict[str, dict],
    size: int = 16,
    seed: int = 0,
) -> PreparedIndex:
    """Write a small ``data/prepared`` folder that follows pipeline/io/prepared.py.

    ``trials`` maps a trial name to ``{"split": ..., "n": rows, "fps": ..., "video": ..., "audio": seconds or None,
    "offset": audio_offset seconds (default 0), "timestamps": Timestamps of a variable-rate video (default None)}``.
    Frames are random uint8, labels a smooth random walk in [-1, 1], audio a 220 Hz tone; digests as `prepare`
    records them.
    """
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True, exist_ok=True)
    (out / "audio").mkdir(exist_ok=True)
    videos: dict[str, Video] = {}
    rows: list[Trial] = []
    labels: dict[str, np.ndarray] = {}
    with h5py.File(out / "frames.h5", "w") as h5:
        for name, spec in trials.items():
            n, fps = int(spec["n"]), float(spec.get("fps", 25.0))
            video = spec.get("video", name)
            split = spec.get("split", "train")
            secs = spec.get("audio", n / fps)
            stamps = spec.get("timestamps")
            if video not in videos:
                audio, digest = None, None
                if secs:
                    t = np.arange(int(secs * SAMPLE_RATE)) / SAMPLE_RATE
                    samples = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
                    write_wav(out / "audio" / f"{video}.wav", samples)
                    audio, digest = f"audio/{video}.wav", audio_sha256(samples)
                videos[video] = Video(
                    video, f"videos/{video}.mp4", fps, n, bool(secs), audio, float(secs or 0.0),
                    float(spec.get("offset", 0.0)), digest, "decoding", stamps,
                )
            frames = rng.integers(0, 256, (n, size, size, 3), dtype=np.uint8)
            face = np.ones(n, dtype=bool)
            g = h5.create_group(name)
            g["frames"], g["face"] = frames, face
            rows.append(
                Trial(name, split, video, fps, n, bool(secs), tuple(range(1, n + 1)), frames_sha256(frames, face), stamps)
            )
            if split != "test":
                walk = np.cumsum(rng.normal(0, 0.05, (n, 2)), axis=0)
                labels[name] = np.tanh(walk).astype(np.float32)
    write_labels(out / "labels.h5", labels)
    index = PreparedIndex(out, size, SAMPLE_RATE, videos, tuple(rows))
    (out / "index.json").write_text(json.dumps(index_to_json(index, "last")))
    return index


@pytest.fixture
def make_prepared(tmp_path: Path) -> Callable[..., PreparedIndex]:
    """Factory: ``make_prepared({"t1": {"n": 50}, ...}, size=16)`` -> index of tmp_path/prepared."""

    def factory(trials: dict[str, dict], size: int = 16, seed: int = 0, out: Path | None = None) -> PreparedIndex:
        return write_prepared(out or tmp_path / "prepared", trials, size=size, seed=seed)

    return factory
