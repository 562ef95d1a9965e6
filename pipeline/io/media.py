"""Video and audio decoding with PyAV (FFmpeg's libraries in the wheel, no system ffmpeg needed).

- :func:`probe_video` opens a file and returns its frame rate, frame count, the presentation times of its frames
  (stored only when the rate is not constant), where its first frame sits on the container's clock, and whether it
  has an audio stream. Frames are counted by demuxing packets (fast: no decoding) or, when asked, by decoding every
  frame (exact: what a decoder delivers; test videos need that, their submission has one row per decoded frame).
- :func:`decode_audio_track` decodes the first audio stream to mono float32 at 16 kHz, from any rate, layout and
  codec, and says when its first sample is heard (the stream's own start, after the decoder has dropped encoder
  priming); :func:`decode_audio` returns the samples alone.
- :func:`decode_frames` / :class:`VideoDecoder` yield every decoded frame as RGB with its presentation time (faces,
  ``crop``, ``analyze`` and the tests decode video with it: one decoder, whose frame count is ``prepare``'s, and
  whose :attr:`VideoDecoder.info` after a pass equals :func:`probe_video`'s); :func:`stream_rate` reads the frame
  rate and the container's frame-count estimate without decoding.
- :class:`AudioDecoder` yields the audio track piece by piece (bounded memory), :class:`MonoTrack` turns decoded
  audio frames of a file or a live stream into those pieces; :func:`decode_audio_track` joins them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

import av
import numpy as np

from pipeline.common.errors import InputError
from pipeline.io.names import check_name
from pipeline.io.timebase import SAMPLE_RATE, Timestamps, timestamps_from_pts

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v")  # Aff-Wild2 ships .mp4 and .avi
RATE_MISMATCH = 0.01  # relative difference between stated and timestamp frame rates that earns a warning
# A hole (or overlap) in the audio's timestamps longer than this is filled with silence (or dropped): a quarter of a
# frame at 25 fps; shorter ones are timestamp rounding. The comparison is with all samples so far, so drift that
# accumulates is corrected once it reaches it.
GAP_TOLERANCE_S = 0.01


@dataclass(frozen=True)
class VideoInfo:
    path: Path
    fps: float  # frames per second: the constant rate, or the mean rate of a variable-rate video
    n_frames: int  # frames counted as `counted_by` says
    counted_by: Literal["decoding", "packets"]
    has_audio: bool
    start: float  # seconds: presentation time of the first frame on the container's clock (the video timeline's 0)
    timestamps: Timestamps | None = None  # presentation times when the rate is not constant, else None
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class AudioTrack:
    samples: np.ndarray  # float32 (n,) mono at 16 kHz
    start: float  # seconds on the container's clock at which samples[0] is heard
    warnings: tuple[str, ...] = ()


def _open(path: Path) -> av.container.InputContainer:
    try:
        return av.open(str(path))
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(f"{path}: cannot open video: {e}") from None


def _demux_pts(c: av.container.InputContainer, vs: av.video.stream.VideoStream) -> tuple[list[int | None], int, bool]:
    """Presentation timestamps of the video packets a decoder would show, the number of packets read, and whether a
    frame decoded.

    Empty packets (the demuxer's end marker, AVI's dropped-frame placeholders) and packets an edit list discards are
    not frames. The first packets are also decoded until a frame comes out: an annotated trial needs a usable video."""
    pts: list[int | None] = []
    n_read, decoded = 0, False
    for pkt in c.demux(vs):
        if not pkt.size:
            continue
        n_read += 1
        if not decoded:
            decoded = bool(vs.decode(pkt))
        if not pkt.is_discard:
            pts.append(pkt.pts if pkt.pts is not None else pkt.dts)
    if not decoded and n_read:
        decoded = bool(vs.decode(None))  # flush: a decoder with delay may hold the first frame back
    return pts, n_read, decoded


def probe_video(path: str | Path, count_frames: bool = False) -> VideoInfo:
    """Frame rate, frame count, frame times and audio presence of ``path``.

    ``count_frames=False`` counts the video packets (about 50 000 per second here, against 200-900 decoded frames);
    ``True`` decodes every frame and counts what the decoder delivers. Either way the first frame is decoded, so an
    undecodable stream is an :class:`InputError`, as are a file without a video stream or without frames. A count
    below what the container lists (a truncated file) and a stated frame rate that disagrees with the frames'
    timestamps are warnings (``VideoInfo.warnings``); the timestamps win."""
    path = Path(path)
    with _open(path) as c:
        if not c.streams.video:
            raise InputError(f"{path}: no video stream")
        vs = c.streams.video[0]
        rate = vs.average_rate or vs.guessed_rate or vs.base_rate
        stated = float(rate) if rate and float(rate) > 0 else None
        listed = int(vs.frames or 0)
        tb = vs.time_base
        has_audio = bool(c.streams.audio)
        vs.thread_type = "AUTO"
        try:
            if count_frames:
                pts: list[int | None] = [f.pts for f in c.decode(vs)]
                n_read, decoded = len(pts), bool(pts)
            else:
                pts, n_read, decoded = _demux_pts(c, vs)
        except av.error.FFmpegError as e:
            raise InputError(f"{path}: cannot decode video: {e}") from None
    return _video_info(path, pts, n_read, decoded, listed, stated, tb, has_audio, "decoding" if count_frames else "packets")


def _video_info(
    path: Path, pts: list[int | None], n_read: int, decoded: bool, listed: int, stated: float | None,
    tb: Fraction | None, has_audio: bool, counted_by: Literal["decoding", "packets"],
) -> VideoInfo:
    """The :class:`VideoInfo` of a video whose frames (``pts``, in ``tb`` ticks) were counted as ``counted_by`` says;
    ``n_read`` packets or frames were read, ``listed`` frames the container lists, ``stated`` its frame rate."""
    warnings: list[str] = []
    if not pts or not decoded:
        raise InputError(f"{path}: no decodable video frames")
    if listed and n_read < listed:
        warnings.append(
            f"warning: {path}: the container lists {listed} frames but {n_read} could be read "
            f"(a truncated file?); counting {len(pts)}"
        )
    if any(p is None for p in pts) or tb is None:  # no timestamps at all: the stated rate is all there is
        if stated is None:
            raise InputError(f"{path}: video stream has neither timestamps nor a frame rate")
        return VideoInfo(path, stated, len(pts), counted_by, has_audio, 0.0, None, tuple(warnings))
    try:
        fps, timestamps = timestamps_from_pts(pts, Fraction(tb), stated)
    except ValueError:
        raise InputError(f"{path}: video stream has no frame rate") from None
    if timestamps is None and stated and abs(fps - stated) > RATE_MISMATCH * fps:
        warnings.append(
            f"warning: {path}: the container states {stated:.3f} fps, the frames' timestamps {fps:.3f} fps; "
            "using the timestamps"
        )
    start = float(min(pts) * tb)
    return VideoInfo(path, fps, len(pts), counted_by, has_audio, start, timestamps, tuple(warnings))


class _TrackAssembler:
    """Resampled chunks -> one track whose sample k is heard at ``start + k / sample_rate``: a chunk whose timestamp
    lies more than :data:`GAP_TOLERANCE_S` after the samples so far (packets missing from the file) is preceded by
    silence; one that overlaps them by as much loses the overlap. Without timestamps chunks are simply joined."""

    def __init__(self, sample_rate: int) -> None:
        self.rate = sample_rate
        self.n = 0  # samples so far
        self.first: int | None = None  # timestamp (in samples) of sample 0
        self.filled = self.dropped = 0  # samples of silence inserted, samples dropped

    def add(self, frame: av.AudioFrame) -> list[np.ndarray]:
        """The float32 pieces ``frame`` appends to the track, in order (silence first where there is a hole)."""
        out: list[np.ndarray] = []
        x = frame.to_ndarray().mean(axis=0)  # (channels, n) -> (n,): the channels' mean
        if frame.pts is not None and frame.time_base == Fraction(1, self.rate):
            if self.first is None:
                self.first = frame.pts
            gap = frame.pts - (self.first + self.n)
            if gap > GAP_TOLERANCE_S * self.rate:
                out.append(np.zeros(gap, dtype=np.float32))
                self.n += gap
                self.filled += gap
            elif -gap > GAP_TOLERANCE_S * self.rate:
                self.dropped += min(-gap, len(x))
                x = x[-gap:]
        out.append(x.astype(np.float32, copy=False))
        self.n += len(x)
        return out


class MonoTrack:
    """Decoded audio frames of one stream -> its mono float32 track at ``sample_rate``, piece by piece, in time.

    Channels are averaged (not FFmpeg's downmix, which scales a stereo pair by 1/sqrt(2) each); the rate is
    converted by FFmpeg's resampler, whose output keeps the input's timestamps. ``start`` is the first decoded
    frame's timestamp in seconds (None until one comes with a timestamp). Holes in the timestamps (missing packets)
    are filled with silence, overlaps dropped (:class:`_TrackAssembler`): later samples stay at their time. Files
    (:class:`AudioDecoder`) and live streams (``analyze --live``) feed it alike."""

    def __init__(self, sample_rate: int = SAMPLE_RATE) -> None:
        self.rate = sample_rate
        self._resampler = av.AudioResampler(format="fltp", rate=sample_rate)  # planar: (channels, n) per frame
        self._track = _TrackAssembler(sample_rate)
        self.start: float | None = None

    def push(self, frame: av.AudioFrame | None) -> list[np.ndarray]:
        """The pieces (float32 (k,)) ``frame`` adds to the track; ``None`` flushes the resampler's delay line."""
        if frame is not None and self.start is None and frame.pts is not None and frame.time_base is not None:
            self.start = float(frame.pts * frame.time_base)
        return [x for out in self._resampler.resample(frame) for x in self._track.add(out)]

    @property
    def n_samples(self) -> int:
        return self._track.n

    def warnings(self, where: str | Path) -> tuple[str, ...]:
        """The warning to print when timestamps had holes or overlaps (``where``: the file or source)."""
        t = self._track
        if not (t.filled or t.dropped):
            return ()
        return (
            f"warning: {where}: the audio's timestamps have holes or overlaps: {t.filled / self.rate:.3f} s of "
            f"silence inserted, {t.dropped / self.rate:.3f} s of overlap dropped, to keep it in time",
        )


class AudioDecoder:
    """The first audio stream of a file as the pieces of its :class:`MonoTrack`, in order, one pass per
    iteration (each ``iter()`` decodes from the start again). After a complete pass: ``present`` (the file has an
    audio stream), ``start`` (seconds on the container's clock at which the first sample is heard), ``n_samples``
    and ``warnings``. FFmpeg has already applied the container's edit list and dropped AAC encoder priming, so a
    track muxed to start at 0 starts at 0 (tests/io/test_media.py)."""

    def __init__(self, path: str | Path, sample_rate: int = SAMPLE_RATE) -> None:
        self.path = Path(path)
        self.rate = sample_rate
        self.present = False
        self.start = 0.0
        self.n_samples = 0
        self.warnings: tuple[str, ...] = ()

    def __iter__(self) -> Iterator[np.ndarray]:
        with _open(self.path) as c:
            self.present = bool(c.streams.audio)
            if not self.present:
                return
            stream = c.streams.audio[0]
            track = MonoTrack(self.rate)
            try:
                for frame in c.decode(stream):
                    yield from track.push(frame)
                yield from track.push(None)
            except av.error.FFmpegError as e:
                raise InputError(f"{self.path}: cannot decode audio: {e}") from None
            start = track.start
            if start is None:  # no frame timestamps: the stream's own start, else the container's zero
                start = float(stream.start_time * stream.time_base) if stream.start_time is not None else 0.0
        self.start, self.n_samples, self.warnings = start, track.n_samples, track.warnings(self.path)


def decode_audio_track(path: str | Path, sample_rate: int = SAMPLE_RATE) -> AudioTrack | None:
    """The first audio stream of ``path`` as float32 (n_samples,) mono at ``sample_rate`` Hz with the time of its
    first sample (:class:`AudioDecoder`, all pieces joined); None if the file has no audio stream."""
    dec = AudioDecoder(path, sample_rate)
    pieces = list(dec)
    if not dec.present:
        return None
    samples = np.concatenate(pieces).astype(np.float32, copy=False) if pieces else np.zeros(0, np.float32)
    return AudioTrack(samples, dec.start, dec.warnings)


def decode_audio(path: str | Path, sample_rate: int = SAMPLE_RATE) -> np.ndarray | None:
    """The samples of :func:`decode_audio_track` (float32 (n,) mono), or None without an audio stream."""
    track = decode_audio_track(path, sample_rate)
    return None if track is None else track.samples


def open_video(path: str | Path) -> av.container.InputContainer:
    """The opened container of ``path``; a file FFmpeg cannot open or one without a video stream is an
    :class:`InputError`."""
    c = _open(Path(path))
    if not c.streams.video:
        c.close()
        raise InputError(f"{path}: no video stream")
    return c


class VideoDecoder:
    """Every decoded frame of the first video stream of ``path`` as ``(presentation time in seconds or None, uint8
    (H, W, 3) RGB)``, in order; each ``iter()`` decodes from the start again. After a complete pass, :attr:`info` is
    what ``probe_video(path, count_frames=True)`` gives (the same frames, counted the same way), so a caller that
    decodes every frame anyway does not decode the video a second time to count it."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._info: VideoInfo | None = None

    def __iter__(self) -> Iterator[tuple[float | None, np.ndarray]]:
        with open_video(self.path) as c:
            vs = c.streams.video[0]
            vs.thread_type = "AUTO"
            rate = vs.average_rate or vs.guessed_rate or vs.base_rate
            stated = float(rate) if rate and float(rate) > 0 else None
            pts: list[int | None] = []
            try:
                for frame in c.decode(vs):
                    pts.append(frame.pts)
                    yield frame.time, frame.to_ndarray(format="rgb24")
            except av.error.FFmpegError as e:
                raise InputError(f"{self.path}: cannot decode video: {e}") from None
            self._info = _video_info(
                self.path, pts, len(pts), bool(pts), int(vs.frames or 0), stated, vs.time_base, bool(c.streams.audio),
                "decoding",
            )

    @property
    def info(self) -> VideoInfo:
        """Frame rate, count, times and audio presence of the frames decoded (after a complete pass)."""
        if self._info is None:
            raise RuntimeError(f"{self.path}: decode every frame before asking for the video's info")
        return self._info


def decode_frames(path: str | Path) -> Iterator[tuple[float | None, np.ndarray]]:
    """``(presentation time in seconds or None, uint8 (H, W, 3) RGB)`` for every decoded frame of the first video
    stream, in order (the decoding behind ``prepare``'s exact frame count; :class:`VideoDecoder`)."""
    yield from VideoDecoder(path)


# Probing a live source reads this much before the first frame comes out (FFmpeg's defaults: 5 MB and 5 s)
LIVE_PROBE = {"probesize": "1000000", "analyzeduration": "2000000"}


def open_live(source: str) -> av.container.InputContainer:
    """A live source opened for :func:`decode_live`: ``-`` (a stream piped on stdin, e.g. MPEG-TS or Matroska), a
    camera index (``/dev/video<k>`` through v4l2 on Linux, AVFoundation's device ``k`` on macOS), or a URL or path
    FFmpeg opens (``rtsp://``, ``http://``, ``udp://``, a FIFO). A source that cannot be opened, or has no video
    stream, is an :class:`InputError` naming it."""
    import sys as _sys

    name, fmt = source, None
    if source == "-":
        name = "pipe:0"
    elif source.isdigit():
        if _sys.platform.startswith("linux"):
            name, fmt = f"/dev/video{source}", "v4l2"
        elif _sys.platform == "darwin":
            fmt = "avfoundation"
        else:
            raise InputError(f"camera {source}: camera indices work on Linux and macOS; give the device's URL instead")
    timeout = None if source == "-" else (10.0, 30.0)  # a network source that stalls this long has ended
    try:
        c = av.open(name, format=fmt, container_options=LIVE_PROBE, timeout=timeout)
    except (av.error.FFmpegError, OSError) as e:
        raise InputError(f"{source}: cannot open the live source: {e}") from None
    if not c.streams.video:
        c.close()
        raise InputError(f"{source}: the live source has no video stream")
    return c


def decode_live(c: av.container.InputContainer, sample_rate: int = SAMPLE_RATE) -> Iterator[tuple[str, Any, Any]]:
    """The decoded content of a live container, in arrival order: ``("video", time in seconds on the stream's clock
    or None, uint8 (H, W, 3) RGB)`` per frame and ``("audio", pieces, start)`` per audio frame (the float32 mono
    pieces it adds to the track at ``sample_rate``, :class:`MonoTrack`; ``start`` the track's first timestamp in
    seconds, None until known). Frames are decoded as they come (no frame threading, which would hold some back)."""
    vs = c.streams.video[0]
    streams = [vs, *c.streams.audio[:1]]
    track = MonoTrack(sample_rate) if len(streams) > 1 else None
    try:
        for packet in c.demux(streams):
            for frame in packet.decode():
                if packet.stream is vs:
                    yield "video", frame.time, frame.to_ndarray(format="rgb24")
                elif track is not None:
                    yield "audio", track.push(frame), track.start
        if track is not None:
            yield "audio", track.push(None), track.start
    except av.error.FFmpegError as e:
        raise InputError(f"{c.name}: cannot decode the live source: {e}") from None


def stream_rate(path: str | Path) -> tuple[float, int]:
    """(frames per second, the container's frame-count estimate; 0 when unknown), without decoding."""
    with open_video(path) as c:
        vs = c.streams.video[0]
        rate = float(vs.average_rate or vs.guessed_rate or vs.base_rate or 0) or 25.0
        n = vs.frames or (int(c.duration / 1e6 * rate) if c.duration else 0)
    return rate, int(n)


def find_videos(videos_dir: Path) -> dict[str, Path]:
    """``{stem: path}`` of every video (:data:`VIDEO_SUFFIXES`) at any depth under ``videos_dir``; a stem found twice, or one that could
    not be a file name of its own (``.``, ``..``), is an error."""
    found: dict[str, Path] = {}
    if not videos_dir.is_dir():
        return found
    for p in sorted(videos_dir.rglob("*")):
        if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
            check_name(p.stem, f"{p}: video name")
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



def resolve_video(trial: str, videos: dict[str, Path]) -> str | None:
    """The video stem of ``trial``: its own name if such a video exists, else without ``_left``/``_right``."""
    if trial in videos:
        return trial
    stem = video_for_trial(trial)
    return stem if stem in videos else None


def missing_video(trial: str, root: Path) -> str:
    """The end of the message for a trial whose video is not found."""
    return f"no video {video_for_trial(trial)}{{{','.join(VIDEO_SUFFIXES)}}} under {root / 'videos'}"