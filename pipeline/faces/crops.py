"""The crop writer: a video in, ``cropped_aligned/<trial>/%05d.jpg`` out, as Aff-Wild2 cuts them.

Used by the ``crop`` stage and by ``analyze`` (one implementation). One decoding pass
(:func:`pipeline.faces.video.follow_video`) writes the aligned 112 x 112 crop of every face of every track to a
work folder (``track<id>/%05d.jpg``, the 1-based frame number); once the video is done, the chosen tracks are
renamed to their trial names in the destination and the rest is deleted. A trial folder therefore appears complete
or not at all, and a frame without that face has no file (``prepare`` fills it, as for Aff-Wild2's own gaps).

Which track becomes which trial (:func:`assign_trials`): a trial named like the video gets the main face (largest
area x duration); ``<video>_left`` / ``<video>_right`` get the left and right of the two largest tracks (with one
track only, the side its mean centre is on).
"""

from __future__ import annotations

import shutil
from collections.abc import Callable, Iterable
from pathlib import Path

import cv2
import numpy as np

from pipeline.common.config import FacesConfig
from pipeline.common.errors import InputError
from pipeline.faces.align import TEMPLATE_SIZE, align_face
from pipeline.faces.mtcnn import MTCNN, Faces
from pipeline.faces.video import (
    Track,
    VideoFaces,
    follow_video,
    main_tracks,
    min_track_frames,
)

LEFT, RIGHT = "_left", "_right"


def crop_name(frame_index: int) -> str:
    """Aff-Wild2's crop file name of 0-based decoded frame ``frame_index``: 1-based, 5 digits."""
    return f"{frame_index + 1:05d}.jpg"


def encode_crop(crop: np.ndarray, quality: int) -> bytes:
    """An aligned crop uint8 (S, S, 3) RGB as the JPEG bytes the writer stores (OpenCV's encoder at ``quality``):
    ``analyze`` decodes the same bytes in memory, so its model sees what training saw."""
    ok, buf = cv2.imencode(".jpg", cv2.cvtColor(crop, cv2.COLOR_RGB2BGR), [cv2.IMWRITE_JPEG_QUALITY, quality])
    if not ok:
        raise InputError(f"cannot encode a {crop.shape} crop as JPEG")
    return buf.tobytes()


def crop_video(
    path: Path,
    cfg: FacesConfig,
    detector: MTCNN,
    work: Path,
    progress: Callable[[int], None] | None = None,
) -> VideoFaces:
    """Follow the faces of ``path`` and write every track's aligned crops to ``work/track<id>/``."""
    work.mkdir(parents=True, exist_ok=True)
    made: set[int] = set()

    def write(i: int, rgb: np.ndarray, faces: Faces, ids: np.ndarray) -> None:
        for k, tid in enumerate(ids):
            folder = work / f"track{int(tid)}"
            if tid not in made:
                folder.mkdir(exist_ok=True)
                made.add(int(tid))
            crop = align_face(rgb, faces.landmarks[k], TEMPLATE_SIZE)
            target = folder / crop_name(i)
            try:
                target.write_bytes(encode_crop(crop, cfg.jpeg_quality))
            except OSError as e:
                raise InputError(f"{target}: cannot write the crop ({e.strerror or e})") from None

    return follow_video(path, cfg, detector, on_frame=write, progress=progress)


def assign_trials(faces: VideoFaces, video: str, trials: Iterable[str], cfg: FacesConfig) -> dict[str, Track | None]:
    """``{trial: track or None}`` for the trials of one video (see the module docstring)."""
    trials = list(trials)
    min_frames = min_track_frames(cfg, faces.fps)
    out: dict[str, Track | None] = {}
    sides = [t for t in trials if t in (video + LEFT, video + RIGHT)]
    if sides:
        pair = main_tracks(faces, 2, min_frames)
        if len(pair) == 1:
            on_left = pair[0].centre_x < faces.width / 2
            pair = [pair[0], None] if on_left else [None, pair[0]]
        elif not pair:
            pair = [None, None]
        out.update({video + LEFT: pair[0], video + RIGHT: pair[1]})
        out = {t: out[t] for t in sides}
    for t in trials:
        if t not in out:
            main = faces.ranked(min_frames)[:1]
            out[t] = main[0] if main else None
    return out


def publish(work: Path, assignment: dict[str, Track | None], dest: Path) -> None:
    """Move each assigned track's crops from ``work`` to ``dest/<trial>`` (replacing what is there; a trial without
    a track gets an empty folder), then delete ``work``. Each rename is atomic; ``work`` and ``dest`` must be on one
    file system."""
    dest.mkdir(parents=True, exist_ok=True)
    used: dict[int, str] = {}
    for trial, track in assignment.items():
        src = work / f"track{track.id}" if track is not None else work / f"empty-{trial}"
        if track is not None and track.id in used:  # one track for two trials: copy, do not steal
            shutil.copytree(dest / used[track.id], src)
        src.mkdir(parents=True, exist_ok=True)
        target = dest / trial
        if target.exists():
            old = work / f"old-{trial}"
            target.rename(old)
        src.rename(target)
        if track is not None:
            used[track.id] = trial
    shutil.rmtree(work, ignore_errors=True)
