"""One pass over a video: decode, detect, track. Arrays only; :mod:`pipeline.faces.crops` writes the crops.

Per frame (:class:`FaceFollower`): the full MTCNN cascade runs every ``detect_every`` frames, and on every frame
where no face is being followed; in between, O-net alone looks again where each face was in the previous frame
(:meth:`~pipeline.faces.mtcnn.MTCNN.refine`, about a tenth of a full detection's cost) and keeps the faces whose
score stays above the O-net threshold. An :class:`~pipeline.faces.tracker.IoUTracker` gives every face a track id.
``detect_every: 1`` runs the full cascade on every frame; ``python -m pipeline bench analyze`` compares the two on
real videos (faces found, landmark distance, time).

A track's size is the sum of its boxes' areas over its frames (area x duration): the main face is the largest
track, and with two people the two largest are the left and the right one (by mean box centre).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.config import FacesConfig
from pipeline.common.errors import InputError
from pipeline.common.prefetch import read_ahead
from pipeline.faces.mtcnn import MTCNN, Faces, nms
from pipeline.faces.tracker import IoUTracker
from pipeline.io.media import VideoDecoder, VideoInfo, stream_rate


class Track:
    """One face over time: 0-based frame indices int64 (n,), boxes float32 (n, 4), scores float32 (n,), landmarks
    float32 (n, 5, 2). Held in arrays that grow by doubling (72 bytes per frame, not a Python object per value), so
    the tracks of an hour-long video stay a few megabytes."""

    def __init__(self, id: int) -> None:
        self.id = id
        self._n = 0
        self._frames = np.zeros(64, np.int64)
        self._boxes = np.zeros((64, 4), np.float32)
        self._scores = np.zeros(64, np.float32)
        self._landmarks = np.zeros((64, 5, 2), np.float32)

    def add(self, frame: int, box: np.ndarray, score: float, landmarks: np.ndarray) -> None:
        if self._n == len(self._frames):
            grow = lambda a: np.concatenate([a, np.zeros_like(a)])  # noqa: E731
            self._frames, self._boxes = grow(self._frames), grow(self._boxes)
            self._scores, self._landmarks = grow(self._scores), grow(self._landmarks)
        i = self._n
        self._frames[i], self._boxes[i], self._scores[i], self._landmarks[i] = frame, box, score, landmarks
        self._n += 1

    @property
    def frames(self) -> np.ndarray:
        return self._frames[: self._n]

    @property
    def boxes(self) -> np.ndarray:
        return self._boxes[: self._n]

    @property
    def scores(self) -> np.ndarray:
        return self._scores[: self._n]

    @property
    def landmarks(self) -> np.ndarray:
        return self._landmarks[: self._n]

    @property
    def size(self) -> float:
        """Area x duration: the sum over its frames of the box area, in pixels x frames."""
        b = self.boxes.astype(np.float64)
        return float(((b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])).sum())

    @property
    def centre_x(self) -> float:
        """Mean horizontal centre of its boxes, in pixels."""
        b = self.boxes.astype(np.float64)
        return float(((b[:, 0] + b[:, 2]) / 2).mean())


@dataclass
class VideoFaces:
    """What one pass found: ``times`` float64 (n_frames,) presentation time of each decoded frame in seconds from
    the first frame; ``tracks`` by id."""

    path: Path
    width: int
    height: int
    fps: float
    times: np.ndarray
    tracks: dict[int, Track]
    detect_s: float = 0.0  # seconds spent in detection, refinement and tracking (not decoding, not writing)
    info: VideoInfo | None = None  # what probe_video(count_frames=True) says of the same frames

    @property
    def n_frames(self) -> int:
        return len(self.times)

    def ranked(self, min_frames: int = 1) -> list[Track]:
        """Tracks with at least ``min_frames`` frames, largest (area x duration) first."""
        keep = [t for t in self.tracks.values() if len(t.frames) >= min_frames]
        return sorted(keep, key=lambda t: (-t.size, t.id))


def min_track_frames(cfg: FacesConfig, fps: float) -> int:
    """``faces.min_track`` seconds in frames (at least 1)."""
    return max(1, int(round(cfg.min_track * fps)))


def main_tracks(faces: VideoFaces, n: int, min_frames: int) -> list[Track]:
    """The ``n`` largest tracks, ordered left to right by mean box centre (fewer if fewer were found)."""
    return sorted(faces.ranked(min_frames)[:n], key=lambda t: t.centre_x)


# ------------------------------------------------------------------------------------------------- tracking
class FaceFollower:
    """Per-frame faces with track ids: full detection every ``detect_every`` frames (and whenever nothing is being
    followed), O-net refinement of the previous frame's faces in between. One instance per video."""

    def __init__(self, detector: MTCNN, detect_every: int, tracker: IoUTracker) -> None:
        self.detector = detector
        self.detect_every = max(1, detect_every)
        self.tracker = tracker
        self.frame = -1

    def step(self, image: np.ndarray) -> tuple[Faces, np.ndarray]:
        """Faces of the next frame and their track ids (N,)."""
        self.frame += 1
        _, prev = self.tracker.recent()
        if self.frame % self.detect_every == 0 or not len(prev):
            faces = self.detector.detect(image)
        else:
            faces = self.detector.refine(image, prev)
            faces = faces.take(np.flatnonzero(faces.scores > self.detector.thresholds[2]))
            # two followed faces that converged on one: keep the better (as the cascade's last NMS would)
            faces = faces.take(nms(faces.boxes, faces.scores, 0.7, "min"))
        return faces, self.tracker.update(faces.boxes)


def follow_video(
    path: Path,
    cfg: FacesConfig,
    detector: MTCNN,
    on_frame: Callable[[int, np.ndarray, Faces, np.ndarray], None] | None = None,
    progress: Callable[[int], None] | None = None,
) -> VideoFaces:
    """Decode ``path`` and follow its faces; ``on_frame(i, rgb, faces, ids)`` sees every frame (the crop writer),
    ``progress(n)`` is told of frames done now and then."""
    import time

    fps, _ = stream_rate(path)
    tracker = IoUTracker(iou_min=cfg.iou, max_gap=max(0, int(round(cfg.max_gap * fps))))
    follower = FaceFollower(detector, cfg.detect_every, tracker)
    tracks: dict[int, Track] = {}
    times: list[float | None] = []
    width = height = 0
    spent, pending = 0.0, 0
    decoder = VideoDecoder(path)
    for i, (t, rgb) in enumerate(read_ahead(decoder)):
        height, width = rgb.shape[:2]
        times.append(t)
        t0 = time.perf_counter()
        faces, ids = follower.step(rgb)
        spent += time.perf_counter() - t0
        for k, tid in enumerate(ids):
            tracks.setdefault(int(tid), Track(int(tid))).add(i, faces.boxes[k], float(faces.scores[k]), faces.landmarks[k])
        if on_frame is not None:
            on_frame(i, rgb, faces, ids)
        pending += 1
        if progress is not None and pending >= 50:
            progress(pending)
            pending = 0
    if progress is not None and pending:
        progress(pending)
    if not times:
        raise InputError(f"{path}: video stream has no frames")
    return VideoFaces(path, width, height, fps, presentation_times(times, fps), tracks, spent, decoder.info)


def presentation_times(times: list[float | None], fps: float) -> np.ndarray:
    """Seconds from the first frame: the decoder's presentation times where every frame has one, else the frame
    index over the stream's rate."""
    if any(t is None for t in times):
        return np.arange(len(times), dtype=np.float64) / fps
    t = np.asarray(times, dtype=np.float64)
    return t - t[0]
