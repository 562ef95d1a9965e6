"""The live feed: a source decoded in one thread, each frame's face found in another, in arrival order.

- :func:`read_source` (reader thread): :func:`pipeline.io.media.decode_live` -> decoded frames ``(arrival, time,
  rgb)`` into a bounded queue (``arrival``: ``time.monotonic()`` as the frame came out of the decoder), audio pieces
  into a :class:`~pipeline.analysis.audio.LiveTrack`;
- :class:`FaceStage` (faces thread): frames -> :class:`Arrived` (time from the first frame, the face crop), the face
  chosen by :class:`LiveFace`: the largest so far (area x duration) among those in the frame, once its track is
  ``faces.min_track`` seconds old.

Both threads stop at the source's end (handing on None) or after Ctrl-C (``stop``), the faces thread once it has
finished the frames already decoded.
"""

from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from pipeline.analysis.audio import LiveTrack
from pipeline.analysis.crops import face_crop
from pipeline.common.config import FacesConfig
from pipeline.faces.mtcnn import MTCNN
from pipeline.faces.tracker import IoUTracker
from pipeline.faces.video import FaceFollower
from pipeline.io.media import decode_live


@dataclass
class Arrived:
    """A decoded frame: its wall-clock arrival (``time.monotonic``), its time in seconds from the first frame, and
    its face crop (uint8 (S, S, 3); None: no face)."""

    arrival: float
    time: float
    crop: np.ndarray | None


class LiveFace:
    """The landmarks of the face to analyse in each frame of a live stream (see the module docstring)."""

    def __init__(self, cfg: FacesConfig, detector: MTCNN, fps: float) -> None:
        gap = max(0, int(round(cfg.max_gap * fps)))
        self.follower = FaceFollower(detector, cfg.detect_every, IoUTracker(iou_min=cfg.iou, max_gap=gap))
        self.min_frames, self.gap = max(1, int(round(cfg.min_track * fps))), gap
        self.size: dict[int, float] = {}  # track id -> sum of box areas so far
        self.frames: dict[int, int] = {}  # track id -> frames seen
        self.last: dict[int, int] = {}  # track id -> last frame seen
        self.i = -1

    def __call__(self, rgb: np.ndarray) -> np.ndarray | None:
        """(5, 2) landmarks of the chosen face in ``rgb``, or None."""
        self.i += 1
        faces, ids = self.follower.step(rgb)
        best, best_size = None, -1.0
        for k, tid in enumerate(int(t) for t in ids):
            b = faces.boxes[k]
            self.size[tid] = self.size.get(tid, 0.0) + float((b[2] - b[0]) * (b[3] - b[1]))
            self.frames[tid] = self.frames.get(tid, 0) + 1
            self.last[tid] = self.i
            if self.frames[tid] >= self.min_frames and self.size[tid] > best_size:
                best, best_size = faces.landmarks[k], self.size[tid]
        for tid in [t for t, f in self.last.items() if self.i - f > self.gap + 1]:  # tracks that cannot come back
            del self.size[tid], self.frames[tid], self.last[tid]
        return best


def _put(q: queue.Queue, item: Any, stop: threading.Event) -> bool:
    """Queue ``item`` unless the analysis has stopped (then False): a full queue never blocks the thread for good."""
    while not stop.is_set():
        try:
            q.put(item, timeout=0.1)
            return True
        except queue.Full:
            continue
    return False


def read_source(container: Any, track: LiveTrack | None, frames: queue.Queue, stop: threading.Event) -> None:
    """Reader thread: decoded frames ``(arrival, time, rgb)`` into ``frames``, audio into ``track``; then None (or
    the exception that ended it)."""
    try:
        for kind, a, b in decode_live(container):
            if kind == "video":
                if not _put(frames, (time.monotonic(), a, b), stop):
                    return
            elif track is not None:
                track.add(a, b)
        _put(frames, None, stop)
    except BaseException as e:  # noqa: BLE001 - handed to the main thread
        _put(frames, e, stop)
    finally:
        if track is not None:
            track.end()


class FaceStage:
    """Faces thread: decoded frames ``(arrival, time, rgb)`` -> :class:`Arrived` (time from the first frame on the
    stream's clock, or by arrival when frames carry no time; the face crop), in order, then the reader's end (None)
    or error. After Ctrl-C it finishes the frames already decoded, then ends."""

    def __init__(self, face: LiveFace, cfg: FacesConfig, size: int, stop: threading.Event) -> None:
        self.face, self.cfg, self.size, self.stop = face, cfg, size, stop
        self.first: float | None = None  # the first frame's time (stream clock, or arrival)
        self.t0: float | None = None  # the first frame's time on the stream's clock, when it has one

    def arrive(self, arrival: float, t: float | None, rgb: np.ndarray) -> Arrived:
        if self.first is None:
            self.first, self.t0 = (arrival if t is None else t), t
        lm = self.face(rgb)
        crop = face_crop(rgb, lm, self.cfg.jpeg_quality, self.size) if lm is not None else None
        return Arrived(arrival, (arrival if t is None else t) - self.first, crop)

    def run(self, src: queue.Queue, out: queue.Queue) -> None:
        try:
            while True:
                try:
                    item = src.get(timeout=0.1)
                except queue.Empty:
                    if self.stop.is_set():
                        out.put(None)
                        return
                    continue
                if item is None or isinstance(item, BaseException):
                    out.put(item)
                    return
                out.put(self.arrive(*item))
        except BaseException as e:  # noqa: BLE001 - handed to the main thread
            out.put(e)
