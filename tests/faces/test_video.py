"""Faces over a whole video: following between detections, faces leaving, real talking-face recordings."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.common.config import FacesConfig
from pipeline.faces import mtcnn as M
from pipeline.faces.video import follow_video, min_track_frames
from pipeline.io.media import decode_frames


# ------------------------------------------------------------------------------------ following in video
def found_per_frame(path, detect_every: int = 5) -> np.ndarray:
    """bool (n_frames,): frames where a track the pipeline keeps (at least ``faces.min_track`` long) has a face."""
    cfg = FacesConfig(detect_every=detect_every)
    faces = follow_video(path, cfg, M.MTCNN(cfg.min_face, cfg.thresholds, cfg.backend))
    found = np.zeros(faces.n_frames, dtype=bool)
    for t in faces.ranked(min_track_frames(cfg, faces.fps)):
        found[t.frames] = True
    return found


TALKING = [
    "videos/pyfeat_single_face.mp4", "videos/pyfeat_WolfgangLanger_Pexels.mp4",
    "videos/sadtalker_WDA_AlexandriaOcasioCortez_000.mp4", "videos/sadtalker_WDA_KatieHill_000.mp4",
    *[f"videos/videoretalking_face_{k}.mp4" for k in range(1, 6)],
    "videos_noaudio/musetalk_sun.mp4", "videos_noaudio/musetalk_yongen.mp4",
]


@pytest.mark.realmedia
def test_no_face_after_the_face_leaves(realmedia):
    path = realmedia / "videos" / "pyfeat_face_noface.mov"
    frames = [rgb for _, rgb in decode_frames(path)]
    black = next(i for i, f in enumerate(frames) if f.mean() < 5)  # the face leaves: a black frame, then a title
    found = found_per_frame(path)
    assert len(found) == len(frames) and black > 30
    assert not found[black:].any(), np.flatnonzero(found[black:]) + black
    assert found[:black].mean() >= 0.95


@pytest.mark.realmedia
def test_faces_on_a_short_talking_face_video(realmedia):
    assert found_per_frame(realmedia / TALKING[0]).mean() >= 0.95


@pytest.mark.slow
@pytest.mark.realmedia
@pytest.mark.parametrize("video", TALKING)
def test_faces_on_95_percent_of_every_talking_face_video(realmedia, video):
    found = found_per_frame(realmedia / video)
    assert found.mean() >= 0.95, f"{video}: faces on {found.mean():.3f} of {len(found)} frames"


@pytest.mark.realmedia
def test_following_between_detections_finds_the_same_faces_as_detecting_every_frame(realmedia):
    """detect_every 5 (the default) against the full cascade on every frame: same frames with a face, eyes within
    5 % of the inter-ocular distance on average (``bench analyze`` reports both modes' speed)."""
    path = realmedia / "videos" / "pyfeat_single_face.mp4"
    runs = {}
    for k in (1, 5):
        cfg = FacesConfig(detect_every=k)
        runs[k] = follow_video(path, cfg, M.MTCNN(cfg.min_face, cfg.thresholds, cfg.backend))
    main = {k: v.ranked()[0] for k, v in runs.items()}
    assert main[1].frames.tolist() == main[5].frames.tolist() == list(range(runs[1].n_frames))
    a, b = np.array(main[5].landmarks), np.array(main[1].landmarks)  # (n, 5, 2)
    eye = np.linalg.norm(a[:, :2] - b[:, :2], axis=2).mean(axis=1)
    iod = np.linalg.norm(b[:, 0] - b[:, 1], axis=1)
    assert (eye / iod).mean() < 0.05, (eye / iod).round(3)
    assert (eye[::5] == 0).all()  # detection frames agree exactly

