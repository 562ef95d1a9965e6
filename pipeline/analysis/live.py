"""``analyze --live SOURCE``: a camera, a network stream or a stream on stdin, one row per frame as it goes.

The feed (:mod:`pipeline.analysis.feed`) decodes the source in one thread and finds each frame's face in another,
as frames arrive; every ``hop`` seconds the main thread takes the frames whose audio is in (``audio_lag``
seconds of track past the frame: VGGish's example reaches 0.49 s ahead) through the same parts as a file
(crops filled, extractors, the fold models, smoothing) and writes their rows, each with ``latency_s``: wall seconds
from the frame's arrival to its row being written. A row is written at most one hop (plus ``audio_lag``, plus the
work) after its frame arrived.

How live differs from a file, on purpose (a file's result needs the whole video; a live row cannot wait for it):
- the temporal model sees rolling windows: each step runs every fold over the latest ``window`` frames (fewer at
  the start) and keeps the outputs of the frames new since the last step, so a frame's value comes from one window
  in which it is among the last, not from the average of the windows around it;
- the face is the largest face so far (area x duration) among those in the frame, once its track is
  ``faces.min_track`` seconds old; frames before the first face are black (no later face to fill them with), and a
  window without any face has its visual features zeroed, as a trial without a face is;
- MFCC's ``top_db`` floor is relative to the loudest part of the audio heard before the first MFCC rows (about the
  first second), not of the whole track;
- smoothing (``postprocess``) delays each row by ``max(window) + 1`` frames (it needs that many after it).

Ctrl-C (SIGINT) stops reading; the frames already decoded are analysed, their rows written, and the CSV closed: it
is complete up to the last frame that arrived. A second Ctrl-C stops at once.
"""

from __future__ import annotations

import queue
import signal
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from pipeline.common.config import FacesConfig, FramesConfig, PostprocessConfig
from pipeline.extractors import Extractor
from pipeline.faces.mtcnn import MTCNN
from pipeline.io.media import open_live
from pipeline.io.timebase import SAMPLE_RATE
from pipeline.analysis.audio import LiveTrack
from pipeline.analysis.crops import CropFill
from pipeline.analysis.feed import Arrived, FaceStage, LiveFace, read_source
from pipeline.analysis.features import AudioRows, frame_rows
from pipeline.analysis.predictor import Fold, RollingWindows
from pipeline.analysis.smoother import StreamingSmoother
from pipeline.analysis.writer import CsvRows

QUEUE_FRAMES = 256  # decoded frames waiting for their face (a slow analysis backs the source up, memory stays flat)
MAX_AUDIO_WAIT_S = 2.0  # wall seconds past the hop a frame waits for audio that does not come


@dataclass(frozen=True)
class LiveOptions:
    hop_s: float  # seconds between model runs
    audio_lag_s: float  # seconds of audio past a frame before it is analysed
    providers: tuple[Any, ...]  # onnxruntime providers of the face detector


class LiveChain:
    """Frames with their crops in, rows out: fill, features, rolling windows, smoothing, CSV with latency."""

    def __init__(self, extractors: dict[str, Extractor], folds: list[Fold], frames: FramesConfig,
                 post: PostprocessConfig, device: torch.device, track: LiveTrack | None, csv: CsvRows) -> None:
        self.extractors, self.device, self.track, self.csv = extractors, device, track, csv
        self.size, self.fill = frames.size, CropFill(frames.missing)
        self.windows = RollingWindows(folds)
        self.step_max = min(f.window for f in folds)  # frames one rolling step may add
        self.smoother = StreamingSmoother(post)
        self.audio = {m: AudioRows(ex, track) for m, ex in extractors.items() if ex.kind == "audio" and track is not None}
        self.t0: float | None = None  # the first frame's time on the stream's clock
        self.done = 0  # frames analysed
        self.unwritten: deque[Arrived] = deque()  # analysed, waiting for the smoother
        self.latency: list[float] = []
        self.faces = 0

    def track_times(self, times: np.ndarray) -> np.ndarray | None:
        """Frame times (seconds from the first frame) on the track's timeline; None while the track's start is
        unknown (no audio yet)."""
        if self.track is None or self.track.start is None or self.t0 is None:
            return None
        return times - (self.track.start - self.t0)

    def ready(self, pending: deque[Arrived], lag_s: float, now: float) -> int:
        """How many of the oldest ``pending`` frames have their audio (``lag_s`` past them), or have waited for it
        long enough, or need none."""
        if self.track is None or self.track.ended or not self.audio:
            return len(pending)
        have = self.track.n_samples / SAMPLE_RATE
        n = 0
        for f in pending:
            tt = self.track_times(np.array([f.time]))
            if (tt is None or tt[0] + lag_s > have) and now - f.arrival < MAX_AUDIO_WAIT_S + lag_s:
                break
            n += 1
        return n

    def process(self, frames: list[Arrived]) -> None:
        """Analyse ``frames`` (the next ones, in order) and write the rows that became final."""
        for s in range(0, len(frames), self.step_max):
            part = frames[s : s + self.step_max]
            rows, present = self._features(part)
            self.windows.push(rows, present)
            self._write(self.smoother.push(self.windows.step(self.device)), part)

    def _features(self, part: list[Arrived]) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
        k = len(part)
        face = np.array([f.crop is not None for f in part])
        crops = np.zeros((k, self.size, self.size, 3), np.uint8)
        for i, f in enumerate(part):
            if f.crop is not None:
                crops[i] = f.crop
        crops = self.fill(crops, face)
        rows, present = {}, {}
        times = np.array([f.time for f in part])
        for m, ex in self.extractors.items():
            if ex.kind == "frames":
                rows[m], present[m] = frame_rows(ex, crops), face
            elif m in self.audio and (tt := self.track_times(times)) is not None:
                rows[m], present[m] = self.audio[m](self.done, tt, self.track.n_samples)  # type: ignore[union-attr]
            else:  # no audio (yet): zeros, not heard
                rows[m], present[m] = np.zeros((k, *ex.row_shape), dtype=ex.dtype), np.zeros(k, bool)
        self.done += k
        self.faces += int(face.sum())
        return rows, present

    def _write(self, values: np.ndarray, part: list[Arrived]) -> None:
        self.unwritten.extend(part)
        out = [self.unwritten.popleft() for _ in range(len(values))]
        now = time.monotonic()
        latency = np.array([now - f.arrival for f in out])
        self.csv.write(np.array([f.time for f in out]), values, np.array([f.crop is not None for f in out]), latency)
        self.latency.extend(latency.tolist())

    def finish(self) -> None:
        """Write the rows the smoother still holds (the stream has ended)."""
        self._write(self.smoother.finish(), [])


def _sigint_flag() -> tuple[threading.Event, Callable[[], None]]:
    """An event set by the first Ctrl-C (the second one interrupts), and the function that restores the handler."""
    stop = threading.Event()
    previous = signal.getsignal(signal.SIGINT)

    def handler(signum: int, frame: Any) -> None:
        if stop.is_set():
            raise KeyboardInterrupt
        stop.set()

    signal.signal(signal.SIGINT, handler)
    return stop, lambda: signal.signal(signal.SIGINT, previous)


@torch.inference_mode()
def warm_up(extractors: dict[str, Extractor], folds: list[Fold], detector: MTCNN, size: int, device: torch.device) -> None:
    """One small batch through every network before the source is read: the first rows do not pay for kernel
    selection and memory pools."""
    detector.detect(np.zeros((120, 160, 3), np.uint8))
    silence = LiveTrack("warm-up")
    silence.add([np.zeros(SAMPLE_RATE, np.float32)], 0.0)
    rows = {}
    for m, ex in extractors.items():
        if ex.kind == "frames":
            rows[m] = frame_rows(ex, np.zeros((2, size, size, 3), np.uint8))
        else:
            rows[m] = AudioRows(ex, silence)(0, np.array([0.5, 0.54]))[0]
    rolling = RollingWindows(folds)
    rolling.push(rows, {m: np.ones(2, bool) for m in rows})
    rolling.step(device)


def analyze_live(
    source: str, csv_target: str, extractors: dict[str, Extractor], folds: list[Fold], faces: FacesConfig,
    frames: FramesConfig, post: PostprocessConfig, device: torch.device, opts: LiveOptions,
) -> dict[str, Any]:
    """Analyse ``source`` until it ends or Ctrl-C; rows to ``csv_target`` (``-``: stdout). Returns the summary:
    frames, faces, seconds, frames/s, latency percentiles, how it stopped."""
    detector = MTCNN(faces.min_face, faces.thresholds, faces.backend, threads=1, providers=opts.providers)
    warm_up(extractors, folds, detector, frames.size, device)
    print(f"live: ready, reading {source}", file=sys.stderr, flush=True)  # what a feeding process may wait for
    container = open_live(source)
    audio = bool(container.streams.audio) and any(ex.kind == "audio" for ex in extractors.values())
    track = LiveTrack(key=f"live:{source}") if audio else None
    fps = float(container.streams.video[0].average_rate or 25.0)
    stop, restore = _sigint_flag()
    stage = FaceStage(LiveFace(faces, detector, fps), faces, frames.size, stop)
    decoded: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    arrived: queue.Queue = queue.Queue(maxsize=QUEUE_FRAMES)
    threads = [threading.Thread(target=read_source, args=(container, track, decoded, stop), daemon=True),
               threading.Thread(target=stage.run, args=(decoded, arrived), daemon=True)]
    csv = CsvRows.live_target(csv_target)
    chain = LiveChain(extractors, folds, frames, post, device, track, csv)
    start = time.monotonic()
    try:
        for t in threads:
            t.start()
        _loop(chain, stage, arrived, opts)
        interrupted = stop.is_set()
    finally:
        restore()
        stop.set()
        csv.close()
        for t in threads:
            t.join(timeout=1.0)
        if not threads[0].is_alive():  # a reader still blocked on its source keeps the container (the process ends it)
            container.close()
    secs = time.monotonic() - start
    lat = np.array(chain.latency) if chain.latency else np.zeros(1)
    return {"live": source, "frames": chain.done, "faces": chain.faces, "seconds": round(secs, 2),
            "frames_per_s": round(chain.done / max(secs, 1e-9), 1),
            "stopped": "interrupt" if interrupted else "end", "hop_s": opts.hop_s, "audio_lag_s": opts.audio_lag_s,
            "latency_s": {f"p{p}": round(float(np.percentile(lat, p)), 3) for p in (50, 90, 99)} | {"max": round(float(lat.max()), 3)}}


def _loop(chain: LiveChain, stage: FaceStage, arrived: queue.Queue, opts: LiveOptions) -> None:
    """Collect the frames with their faces; every hop, analyse those whose audio is in; at the end (or after
    Ctrl-C, once the frames already decoded have their faces) analyse the rest and flush the smoother."""
    pending: deque[Arrived] = deque()
    next_step = time.monotonic() + opts.hop_s
    while True:
        try:
            item = arrived.get(timeout=max(0.0, next_step - time.monotonic()))
        except queue.Empty:
            item = False
        if item is None:
            break
        if isinstance(item, BaseException):
            raise item
        if item is not False:
            pending.append(item)
            chain.t0 = stage.t0
            continue
        ready = chain.ready(pending, opts.audio_lag_s, time.monotonic())
        chain.process([pending.popleft() for _ in range(ready)])
        next_step = max(next_step + opts.hop_s, time.monotonic())
    chain.process(list(pending))
    chain.finish()
