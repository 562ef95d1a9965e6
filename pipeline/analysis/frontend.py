"""The front end of a video file: two passes over its frames, arrays out (no torch; runs in worker processes).

1. :func:`plan_video`, the face pass: decode, detect, follow and track every face
   (:func:`pipeline.faces.video.follow_video`); keep per track its boxes and landmarks and the JPEG of its first
   face. Which track is whose trial is decided at the end, as for the ``crop`` stage: the main face is the largest
   track over the whole video (area x duration), so no frame can be cropped before the last one has been seen.
   Memory: 72 bytes per face and frame (:class:`~pipeline.faces.video.Track`), 4 kB per track.
2. :func:`crop_chunks`, the crop pass: decode again, crop each trial's face where its track has one
   (:func:`pipeline.analysis.crops.face_crop`), fill the other frames (:class:`~pipeline.analysis.crops.CropFill`),
   and hand over ``chunk`` frames at a time (:class:`FrameChunk`).

Decoding twice costs about 1.3 ms per 640 x 360 frame, against 6 ms for the face pass and 20 ms for the models.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from pipeline.common.config import FacesConfig, FramesConfig
from pipeline.common.errors import InputError
from pipeline.common.prefetch import read_ahead
from pipeline.faces.crops import assign_trials
from pipeline.faces.mtcnn import MTCNN, Faces
from pipeline.faces.video import Track, VideoFaces, follow_video, min_track_frames
from pipeline.io.media import VideoInfo, decode_frames
from pipeline.io.timebase import frame_times
from pipeline.analysis.crops import CropFill, decode_crop, face_crop, face_jpeg


@dataclass
class VideoHeader:
    """What the back end needs of a video before its frames: ``times`` float64 (N,) presentation seconds from the
    first frame (the CSV's ``time_s``), ``info`` its frame rate, frame times and audio (what ``prepare`` records),
    ``faces`` per trial bool (N,) the frames with that trial's face."""

    path: Path
    stem: str
    times: np.ndarray
    info: VideoInfo
    faces: dict[str, np.ndarray]
    faces_s: float = 0.0  # seconds of the face pass

    @property
    def n_frames(self) -> int:
        return len(self.times)

    def frame_times(self) -> np.ndarray:
        """(N,) seconds of each frame on the video timeline, as ``prepare``'s trials carry them (audio placement)."""
        return frame_times(np.arange(1, self.n_frames + 1), self.info.fps, self.info.timestamps)


@dataclass
class VideoPlan:
    """The face pass's result: the header, and per trial its track (None: no face) and the JPEG of its first face."""

    header: VideoHeader
    tracks: dict[str, Track | None]
    first: dict[str, bytes | None] = field(default_factory=dict)


@dataclass
class FrameChunk:
    """Frames ``lo .. hi - 1`` of one video: per trial its crops uint8 (k, S, S, 3), filled, and the face mask
    bool (k,)."""

    stem: str
    lo: int
    hi: int
    crops: dict[str, np.ndarray]
    face: dict[str, np.ndarray]


def choose_trials(faces: VideoFaces, stem: str, cfg: FacesConfig, all_faces: bool) -> dict[str, Track | None]:
    """``{trial: track}``: ``<stem>`` the main face, or with ``all_faces`` every track of at least
    ``faces.min_track`` seconds as ``<stem>_face<k>``, largest first (``<stem>`` without a face when none)."""
    if all_faces:
        ranked = faces.ranked(min_track_frames(cfg, faces.fps))
        return {f"{stem}_face{k}": t for k, t in enumerate(ranked, start=1)} or {stem: None}
    return assign_trials(faces, stem, [stem], cfg)


def plan_video(
    path: Path, stem: str, cfg: FacesConfig, detector: MTCNN, all_faces: bool,
    progress: Callable[[int], None] | None = None,
) -> VideoPlan:
    """The face pass over ``path`` (see the module docstring)."""
    import time

    t0 = time.perf_counter()
    first: dict[int, bytes] = {}

    def keep_first(i: int, rgb: np.ndarray, faces: Faces, ids: np.ndarray) -> None:
        for k, tid in enumerate(ids):
            if int(tid) not in first:
                first[int(tid)] = face_jpeg(rgb, faces.landmarks[k], cfg.jpeg_quality)

    faces = follow_video(path, cfg, detector, on_frame=keep_first, progress=progress)
    assert faces.info is not None
    trials = choose_trials(faces, stem, cfg, all_faces)
    masks = {}
    for name, track in trials.items():
        mask = np.zeros(faces.n_frames, dtype=bool)
        if track is not None:
            mask[np.asarray(track.frames, dtype=np.int64)] = True
        masks[name] = mask
    header = VideoHeader(Path(path), stem, faces.times, faces.info, masks, time.perf_counter() - t0)
    return VideoPlan(header, trials, {n: first[t.id] if t is not None else None for n, t in trials.items()})


class _TrialCrops:
    """One trial's crops for the frames of the current chunk."""

    def __init__(self, track: Track | None, first: bytes | None, frames: FramesConfig, chunk: int) -> None:
        self.track, self.next = track, 0  # the next of the track's frames (in frame order) to crop
        self.fill = CropFill(frames.missing, decode_crop(first, frames.size) if first is not None else None)
        self.crops = np.zeros((chunk, frames.size, frames.size, 3), dtype=np.uint8)
        self.face = np.zeros(chunk, dtype=bool)

    def landmarks(self, i: int) -> np.ndarray | None:
        """(5, 2) landmarks of the trial's face in frame ``i`` (frames come in order), or None."""
        t = self.track
        if t is None or self.next >= len(t.frames) or t.frames[self.next] != i:
            return None
        self.next += 1
        return t.landmarks[self.next - 1]

    def take(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The chunk's first ``k`` frames, filled; the buffers are reset for the next chunk."""
        crops, face = self.fill(self.crops[:k].copy(), self.face[:k].copy()), self.face[:k].copy()
        self.crops[:] = 0
        self.face[:] = False
        return crops, face


def crop_chunks(plan: VideoPlan, faces: FacesConfig, frames: FramesConfig, chunk: int) -> Iterator[FrameChunk]:
    """The crop pass (see the module docstring): ``chunk`` frames at a time, the last chunk shorter."""
    h = plan.header
    trials = {n: _TrialCrops(t, plan.first.get(n), frames, chunk) for n, t in plan.tracks.items()}
    lo, i = 0, -1
    for i, (_, rgb) in enumerate(read_ahead(decode_frames(h.path))):
        j = i - lo
        for tc in trials.values():
            lm = tc.landmarks(i)
            if lm is not None:
                tc.crops[j] = face_crop(rgb, lm, faces.jpeg_quality, frames.size)
                tc.face[j] = True
        if j + 1 == chunk:
            yield _chunk(h.stem, lo, i + 1, trials)
            lo = i + 1
    if i + 1 != h.n_frames:  # the same decoder counted them: a difference would misplace every row
        raise InputError(f"{h.path}: decoded {i + 1} frames in the crop pass but {h.n_frames} in the face pass")
    if lo < h.n_frames:
        yield _chunk(h.stem, lo, h.n_frames, trials)


def _chunk(stem: str, lo: int, hi: int, trials: dict[str, _TrialCrops]) -> FrameChunk:
    parts = {n: tc.take(hi - lo) for n, tc in trials.items()}
    return FrameChunk(stem, lo, hi, {n: c for n, (c, _) in parts.items()}, {n: f for n, (_, f) in parts.items()})
