"""The reference ``analyze`` result of a video, through disk and the stages (how ``analyze`` worked before it
streamed): a temporary dataset in the Aff-Wild2 layout (the ``crop`` stage's writer), then ``prepare.run``,
``extract.run`` for each modality and ``predict.run``. The streaming chain must give the same numbers."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from pipeline.common.config import DataConfig, FacesConfig, FeaturesConfig, FramesConfig, PostprocessConfig
from pipeline.extractors import Extractor
from pipeline.faces.crops import assign_trials, crop_video, publish
from pipeline.faces.mtcnn import MTCNN
from pipeline.faces.video import Track, min_track_frames
from pipeline.io.media import VIDEO_SUFFIXES


def link_name(path: Path) -> str:
    """The file name of the video inside the dataset (``prepare`` finds videos by suffix)."""
    suffix = path.suffix.lower()
    return path.stem + (suffix if suffix in VIDEO_SUFFIXES else ".mp4")


def build_dataset(videos: list[Path], root: Path, cfg: FacesConfig, all_faces: bool) -> dict[str, tuple[np.ndarray, dict[str, Track | None]]]:
    """``root`` in the Aff-Wild2 layout for ``videos`` (all test trials): per video stem its presentation times
    and ``{trial: track}``."""
    detector = MTCNN(cfg.min_face, cfg.thresholds, cfg.backend, threads=1)
    (root / "videos").mkdir(parents=True, exist_ok=True)
    out = {}
    for path in videos:
        stem = path.stem
        (root / "videos" / link_name(path)).symlink_to(path.resolve())
        faces = crop_video(root / "videos" / link_name(path), cfg, detector, root / "work" / stem)
        if all_faces:
            ranked = faces.ranked(min_track_frames(cfg, faces.fps))
            trials = {f"{stem}_face{k}": t for k, t in enumerate(ranked, start=1)} or {stem: None}
        else:
            trials = assign_trials(faces, stem, [stem], cfg)
        publish(root / "work" / stem, trials, root / "cropped_aligned")
        for t in trials:
            if t != stem:
                (root / "videos" / link_name(path.with_name(t + path.suffix))).symlink_to(path.resolve())
        out[stem] = (faces.times, trials)
    shutil.rmtree(root / "work", ignore_errors=True)
    (root / "test_set.txt").write_text("".join(f"{t}\n" for _, trials in out.values() for t in trials))
    return out


def reference(
    videos: list[Path], work: Path, models: Path, folds: tuple[int, ...], extractors: dict[str, Extractor],
    frames: FramesConfig, features: FeaturesConfig, faces: FacesConfig, post: PostprocessConfig, all_faces: bool = False,
) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """``{trial: (times (N,), predictions (N, 2), face (N,) bool)}`` through the stages (see the module docstring)."""
    from pipeline.stages import extract, predict, prepare

    root = work / "dataset"
    made = build_dataset(videos, root, faces, all_faces)
    prepared, store = work / "prepared", work / "features"
    prepare.run(DataConfig(root=str(root)), frames, prepared, jobs=1)
    for m, ex in extractors.items():
        extract.run(m, getattr(features, m), prepared, store / f"{m}.zarr", device="cpu", extractor=ex, progress=False)
    preds = predict.run(folds, post, models, prepared, store, work / "predictions.txt", device="cpu")
    out = {}
    for times, trials in made.values():
        for t, track in trials.items():
            face = np.zeros(len(times), dtype=bool)
            if track is not None:
                face[np.asarray(track.frames, dtype=np.int64)] = True
            out[t] = (times, preds[t], face)
    return out
