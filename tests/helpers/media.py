"""Small generated videos with known timing, for the media and prepare tests (PyAV encoders, no system ffmpeg)."""

from __future__ import annotations

from fractions import Fraction
from pathlib import Path

import av
import numpy as np

CLICK_S = 0.02  # length of a click: a burst of noise


def clicks(seconds: float, sr: int, at: list[float], start: float = 0.0) -> np.ndarray:
    """(n,) float32 silence of ``seconds`` with a click at each container time in ``at`` (the track starts at
    ``start`` on the container's clock)."""
    x = np.zeros(int(round(seconds * sr)), np.float32)
    rng = np.random.default_rng(0)
    for t in at:
        k = int(round((t - start) * sr))
        x[k : k + int(CLICK_S * sr)] = rng.uniform(-0.9, 0.9, len(x[k : k + int(CLICK_S * sr)]))
    return x


def write_av(
    path: Path,
    *,
    fps: int = 25,
    n_frames: int = 50,
    audio: np.ndarray | None = None,
    sr: int = 44_100,
    layout: str = "stereo",
    acodec: str = "aac",
    vcodec: str = "libx264",
    audio_start: float = 0.0,
    video_start: float = 0.0,
    frame_times: np.ndarray | None = None,
    options: dict[str, str] | None = None,
    images: list[np.ndarray] | None = None,
) -> Path:
    """Encode ``n_frames`` frames (frame i is flat grey 8 i, the row i of a colour bar code) and ``audio``.

    ``images``: uint8 (H, W, 3) RGB frames to encode instead (``n_frames`` is their number; x264 at high quality).

    ``video_start`` / ``audio_start``: container time (s) of the first frame / first audio sample. ``frame_times``:
    each frame's time (s), for a variable frame rate (stream time base 1/600 s); default ``video_start + i / fps``.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with av.open(str(path), "w", options=options or {}) as c:
        quality = {"preset": "ultrafast", "crf": "20"} if images is not None else None
        vs = c.add_stream(vcodec, rate=fps, options=quality)
        h, w = images[0].shape[:2] if images is not None else (48, 64)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv420p"
        n_frames = len(images) if images is not None else n_frames
        tb = Fraction(1, 600) if frame_times is not None else Fraction(1, fps)
        vs.codec_context.time_base = tb
        if frame_times is not None:
            vs.time_base = tb
        times = frame_times if frame_times is not None else video_start + np.arange(n_frames) / fps
        as_ = c.add_stream(acodec, rate=sr, layout=layout) if audio is not None else None
        for i, t in enumerate(times):
            rgb = images[i] if images is not None else np.full((48, 64, 3), 8 * i % 256, np.uint8)
            fr = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            fr.pts, fr.time_base = int(round(t / tb)), tb
            for p in vs.encode(fr):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if as_ is not None:
            ch = 2 if layout == "stereo" else 1
            fmt = as_.codec_context.format.name
            step = as_.codec_context.frame_size or 1024
            a0 = int(round(audio_start * sr))
            for s in range(0, len(audio), step):
                chunk = np.repeat(audio[None, s : s + step], ch, axis=0).astype(np.float32)
                if fmt == "s16":
                    chunk = (chunk * 32767).astype(np.int16).T.reshape(1, -1)
                f = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=layout)
                f.sample_rate, f.pts, f.time_base = sr, a0 + s, Fraction(1, sr)
                for p in as_.encode(f):
                    c.mux(p)
            for p in as_.encode():
                c.mux(p)
    return path


def write_audio_only(path: Path, seconds: float = 1.0, sr: int = 16_000) -> Path:
    """An .mp4 holding one second of silent AAC audio and no video stream."""
    with av.open(str(path), "w") as c:
        s = c.add_stream("aac", rate=sr, layout="mono")
        for k in range(0, int(seconds * sr), 1024):
            f = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            f.sample_rate, f.pts, f.time_base = sr, k, Fraction(1, sr)
            for pkt in s.encode(f):
                c.mux(pkt)
        for pkt in s.encode():
            c.mux(pkt)
    return path


def first_click(samples: np.ndarray, sr: int = 16_000) -> float:
    """Seconds (from sample 0) at which the first click starts: the first sample above half the peak."""
    return float(np.flatnonzero(np.abs(samples) > 0.5 * np.abs(samples).max())[0]) / sr


def read_wav(path: Path) -> np.ndarray:
    """A prepared WAV as float32 (n_samples,), read through the pipeline's own reader (16 kHz mono or an error)."""
    from pipeline.extractors.audio import AudioSource

    src = AudioSource(path)
    try:
        return src.read(0, src.n_samples)
    finally:
        src.close()
