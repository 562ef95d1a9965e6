"""Video and audio decoding with PyAV (FFmpeg's libraries in the wheel, no system ffmpeg needed).

- :func:`probe_video` opens a file and returns its frame rate, whether it has an audio stream and, when asked, the
  frame count found by decoding every frame (container metadata is often wrong or absent, e.g. in .avi or VFR files).
- :func:`decode_audio` decodes the first audio stream to mono float32 at 16 kHz, from any rate, layout and codec.
- :func:`iter_video_frames` yields RGB frames (used by the demo and by tests).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np

from pipeline.errors import InputError
from pipeline.timebase import SAMPLE_RATE

VIDEO_SUFFIXES = (".mp4", ".avi")


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float
    n_frames: int | None  # decoded frame count, or None when not counted
    has_audio: bool


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(f"{path}: cannot open video: {e}") from None


def probe_video(path: str | Path, count_frames: bool = False) -> VideoInfo:
    """Frame rate (frames per second) and audio presence of ``path``; with ``count_frames`` also the number of
    frames, counted by decoding them all. A file without a decodable video stream is an :class:`InputError`."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.video:
            raise InputError(f"{path}: no video stream")
        vs = c.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        if not rate or float(rate) <= 0:
            raise InputError(f"{path}: video stream has no frame rate")
        has_audio = bool(c.streams.audio)
        n = None
        vs.thread_type = "AUTO"
        try:
            if count_frames:
                n = sum(1 for _ in c.decode(vs))
            else:  # still prove that a frame decodes: an annotated trial needs a usable video
                next(iter(c.decode(vs)))
        except StopIteration:
            raise InputError(f"{path}: video stream has no frames") from None
        except av.error.FFmpegError as e:
            raise InputError(f"{path}: cannot decode video: {e}") from None
        if count_frames and not n:
            raise InputError(f"{path}: video stream has no frames")
    return VideoInfo(path, float(rate), n, has_audio)


def decode_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """The first audio stream of ``path`` as float32 (n_samples,) mono at ``sample_rate`` Hz; None if the file has
    no audio stream. Channels are averaged (not FFmpeg's downmix, which scales a stereo pair by 1/sqrt(2) each);
    the rate is converted by FFmpeg's resampler."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.audio:
            return None
        stream = c.streams.audio[0]
        resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # planar: (channels, n) per frame
        chunks: list[np.ndarray] = []
        try:
            for frame in c.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(out.to_ndarray().mean(axis=0))
            for out in resampler.resample(None):  # flush the resampler's delay line
                chunks.append(out.to_ndarray().mean(axis=0))
        except av.error.FFmpegError as e:
            raise InputError(f"{path}: cannot decode audio: {e}") from None
    if not chunks:
        return np.zeros(0, dtype=np.float32)
    return np.concatenate(chunks).astype(np.float32, copy=False)


def iter_video_frames(path: str | Path) -> Iterator[np.ndarray]:
    """Decoded frames of ``path`` as uint8 (H, W, 3) RGB arrays, in presentation order."""
    path = Path(path)
    with _open(path) as c:
        vs = c.streams.video[0]
        vs.thread_type = "AUTO"
        for frame in c.decode(vs):
            yield frame.to_ndarray(format="rgb24")


def find_videos(videos_dir: Path) -> dict[str, Path]:
    """``{stem: path}`` of every .mp4/.avi at any depth under ``videos_dir``; a stem found twice is an error."""
    found: dict[str, Path] = {}
    if not videos_dir.is_dir():
        return found
    for p in sorted(videos_dir.rglob("*")):
        if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            if p.stem in found:
                raise InputError(f"{p}: video name {p.stem!r} also used by {found[p.stem]}")
            found[p.stem] = p
    return found


def video_for_trial(trial: str) -> str:
    """Aff-Wild2 rule: trials ``<video>_left`` / ``<video>_right`` (two annotated people) share ``<video>``."""
    for suffix in ("_left", "_right"):
        if trial.endswith(suffix):
            return trial[: -len(suffix)]
    return trial
