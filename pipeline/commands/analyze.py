"""``python -m pipeline analyze VIDEO...``: from any video to per-frame valence and arousal, with the trained folds.

Not a stage: it runs the stages' own code on a dataset it builds in a temporary folder, so the numbers are what the
pipeline would give for that video as a test trial (no second implementation):

1. faces: decode, detect, track, align (:mod:`pipeline.faces`), crops written by the ``crop`` stage's writer into
   ``cropped_aligned/<trial>/%05d.jpg``, beside ``videos/<stem>`` (a link to the file) and ``test_set.txt``;
2. ``pipeline.stages.prepare.run`` (frames without a face are filled as in training),
   ``pipeline.stages.extract.run`` for each modality the models use (extractors from params ``features``), and
   ``pipeline.stages.predict.run`` (the folds' models averaged, ``postprocess`` smoothing);
3. per trial ``<out>/<name>.csv`` (``frame,time_s,valence,arousal,face``, one row per decoded frame, ``frame`` from
   1, ``time_s`` the frame's presentation time from the video's first frame) and ``<out>/<name>.png``.

Trials: ``<stem>`` is the main face (largest area x duration); ``--all-faces`` gives every track of at least
``faces.min_track`` seconds as ``<stem>_face<k>``, largest first. A video without a face gives ``<stem>`` with
``face`` 0 everywhere and a warning.

Refusals: the extractor each checkpoint records (``ckpt["features"][modality]``: extractor, weights sha256 or
"random-init", parameters) must equal what params ``features`` builds here; features from other weights or settings
would make the model's output meaningless. Models trained on random-init features or on the demo dataset are
labelled in a warning and in the figure's title.
"""

from __future__ import annotations

import contextlib
import csv
import json
import re
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common.config import (
    DataConfig,
    FacesConfig,
    FeaturesConfig,
    FramesConfig,
    PostprocessConfig,
)
from pipeline.common.errors import InputError
from pipeline.common.provenance import RANDOM_INIT
from pipeline.extractors import Extractor, build
from pipeline.faces.crops import assign_trials, crop_video, publish
from pipeline.faces.mtcnn import MTCNN
from pipeline.faces.video import Track, VideoFaces, min_track_frames
from pipeline.io.media import VIDEO_SUFFIXES
from pipeline.io.prepared import PreparedIndex
from pipeline.scoring.curves import draw_video
from pipeline.training import checkpoint

CSV_HEADER = ["frame", "time_s", "valence", "arousal", "face"]
# trial names the demo stage writes (pipeline/stages/demo.py: demo00, demo03_left, ...)
DEMO_TRIAL = re.compile(r"demo\d{2,}(_left|_right)?")


@dataclass
class Models:
    """The fold checkpoints under a models folder: ``folds`` (k,), one metadata dict per fold (``ckpt`` without
    weights), the modalities they use and what they were trained on."""

    root: Path
    folds: tuple[int, ...]
    ckpts: dict[int, dict[str, Any]]
    modalities: tuple[str, ...]
    random_init: list[str] = field(default_factory=list)
    demo: bool = False

    @property
    def notes(self) -> list[str]:
        out = []
        if self.random_init:
            out.append(f"random-init backbones: {', '.join(self.random_init)}")
        if self.demo:
            out.append("trained on the demo dataset")
        return out


def load_models(root: Path) -> Models:
    """Read ``<root>/fold<k>/model.pt`` for every fold present (metadata only; ``predict`` loads the networks)."""
    root = Path(root)
    paths = sorted(root.glob("fold*/model.pt"), key=lambda p: p.parent.name)
    folds = tuple(sorted(int(p.parent.name[4:]) for p in paths if p.parent.name[4:].isdigit()))
    if not folds:
        raise InputError(f"{root}: no fold<k>/model.pt (train first: `dvc repro` or `python -m pipeline train --fold 0`)")
    ckpts: dict[int, dict[str, Any]] = {}
    for k in folds:
        path = root / f"fold{k}" / "model.pt"
        ckpt = checkpoint.read(path)
        ckpt.pop("state_dict", None)
        ckpts[k] = ckpt
    mods = {k: tuple(c.get("model", {}).get("modalities", ())) for k, c in ckpts.items()}
    first = mods[folds[0]]
    for k, m in mods.items():
        if m != first:
            raise InputError(f"{root / f'fold{k}' / 'model.pt'}: modalities {list(m)} differ from fold {folds[0]}'s {list(first)}")
    models = Models(root, folds, ckpts, first)
    rec = {m: r for c in ckpts.values() for m, r in (c.get("features") or {}).items()}
    models.random_init = sorted(m for m, r in rec.items() if r.get("weights") == RANDOM_INIT)
    trials: list[str] = []
    for k in folds:
        meta = root / f"fold{k}" / "meta.json"
        if meta.is_file():
            doc = json.loads(meta.read_text())
            trials += doc.get("train_trials", []) + doc.get("val_trials", [])
            models.random_init = sorted(set(models.random_init) | set(doc.get("random_init_backbones", [])))
    models.demo = bool(trials) and all(DEMO_TRIAL.fullmatch(t) for t in trials)
    return models


# ------------------------------------------------------------------------------------- extractor agreement
def extractor_record(ex: Extractor) -> dict[str, Any]:
    """What a checkpoint records of the extractor behind a modality (the store's attributes): JSON-normalised."""
    return json.loads(json.dumps({"extractor": ex.name, "weights": ex.weights, "parameters": ex.params}))


def check_extractors(models: Models, extractors: dict[str, Extractor]) -> None:
    """Every fold's recorded extractor equals the one built here, or an :class:`InputError` naming the checkpoint,
    the modality and what differs."""
    have = {m: {**extractor_record(ex), "row_shape": list(ex.row_shape)} for m, ex in extractors.items()}
    for k in models.folds:
        path = models.root / f"fold{k}" / "model.pt"
        if not models.ckpts[k].get("features"):
            raise InputError(
                f"{path}: records no extractor settings (trained before they were recorded), so its features cannot be "
                "matched; retrain it"
            )
        checkpoint.check_features(path, models.ckpts[k], have, where="params features.{m}")


# ------------------------------------------------------------------------------------------------ dataset
@dataclass
class VideoResult:
    """One analysed video: its faces and the trials made from it (``{trial: track or None}``)."""

    path: Path
    faces: VideoFaces
    trials: dict[str, Track | None]


def link_name(path: Path) -> str:
    """The file name of the video inside the temporary dataset. ``prepare`` finds videos by suffix
    (:data:`~pipeline.io.media.VIDEO_SUFFIXES`); FFmpeg recognises containers by their content, so any other
    container (.flv, .ts, no suffix, ...) is linked as ``<stem>.mp4``."""
    suffix = path.suffix.lower()
    return path.stem + (suffix if suffix in VIDEO_SUFFIXES else ".mp4")


def build_dataset(
    videos: list[Path], root: Path, cfg: FacesConfig, all_faces: bool, detector: MTCNN, progress: bool = True
) -> dict[str, VideoResult]:
    """Write ``root`` in the Aff-Wild2 layout for ``videos`` (all test trials) and return what each video gave."""
    from tqdm import tqdm

    (root / "videos").mkdir(parents=True, exist_ok=True)
    results: dict[str, VideoResult] = {}
    for path in videos:
        stem = path.stem
        link = root / "videos" / link_name(path)
        link.symlink_to(path.resolve())
        with tqdm(desc=f"faces {path.name}", unit="frame", disable=not progress, mininterval=1.0) as bar:
            faces = crop_video(link, cfg, detector, root / "work" / stem, progress=bar.update)
        if all_faces:
            ranked = faces.ranked(min_track_frames(cfg, faces.fps))
            trials: dict[str, Track | None] = {f"{stem}_face{k}": t for k, t in enumerate(ranked, start=1)} or {stem: None}
        else:
            trials = assign_trials(faces, stem, [stem], cfg)
        publish(root / "work" / stem, trials, root / "cropped_aligned")
        for t in trials:  # prepare finds a trial's video by its name: <stem>_face<k> gets its own link
            if t != stem:
                (root / "videos" / link_name(path.with_name(t + path.suffix))).symlink_to(path.resolve())
        results[stem] = VideoResult(path, faces, trials)
    shutil.rmtree(root / "work", ignore_errors=True)
    (root / "test_set.txt").write_text("".join(f"{t}\n" for r in results.values() for t in r.trials))
    return results


# ------------------------------------------------------------------------------------------------ outputs
def face_mask(track: Track | None, n_frames: int) -> np.ndarray:
    """bool (n_frames,): frames where ``track`` has a face."""
    mask = np.zeros(n_frames, dtype=bool)
    if track is not None:
        mask[np.asarray(track.frames, dtype=np.int64)] = True
    return mask


def write_csv(path: Path, times: np.ndarray, pred: np.ndarray, face: np.ndarray) -> None:
    """``frame,time_s,valence,arousal,face``: one row per decoded frame (``frame`` from 1)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_HEADER)
        for i, (t, (v, a), m) in enumerate(zip(times, pred, face)):
            w.writerow([i + 1, f"{t:.6f}", f"{v:.6f}", f"{a:.6f}", int(m)])
    tmp.replace(path)


# ----------------------------------------------------------------------------------------------- command
def check_videos(videos: list[Path]) -> list[Path]:
    """``videos`` as paths, each an existing file with a file name of its own (the CSV is named after it)."""
    videos = [Path(v) for v in videos]
    stems: dict[str, Path] = {}
    for v in videos:
        if not v.is_file():
            raise InputError(f"{v}: no such video file")
        if v.stem in stems:
            raise InputError(f"{v}: same name as {stems[v.stem]}; each video needs its own file name (the CSV is named after it)")
        stems[v.stem] = v
    return videos


def load_checked(models: Path, frames_cfg: FramesConfig, features_cfg: FeaturesConfig, device: str) -> tuple[Models, dict[str, Extractor]]:
    """The fold models under ``models`` and the extractors params ``features`` builds for their modalities, refused
    when they differ from what the models were trained on; the models' notes (random init, demo) are printed."""
    fold_models = load_models(models)
    undeclared = [m for m in fold_models.modalities if m not in features_cfg]
    if undeclared:
        raise InputError(
            f"{models}: the models read {undeclared[0]!r} features, which params features does not declare "
            f"(declared: {', '.join(features_cfg)}); add the entry they were trained with"
        )
    extractors = {m: build(m, features_cfg[m], frames_cfg.size, device) for m in fold_models.modalities}
    check_extractors(fold_models, extractors)
    for note in fold_models.notes:
        print(f"warning: {models}: {note}: the values say nothing about real affect", file=sys.stderr)
    return fold_models, extractors


def predict_videos(
    videos: list[Path], base: Path, fold_models: Models, extractors: dict[str, Extractor], cfgs: dict[str, Any],
    all_faces: bool, device: str, jobs: int, progress: bool, clock: "Clock",
) -> tuple[dict[str, VideoResult], PreparedIndex, dict[str, np.ndarray]]:
    """Faces, ``prepare``, ``extract`` and ``predict`` over ``videos`` as test trials of a dataset under ``base``:
    what each video gave, the prepared index, and ``{trial: (N, 2)}`` predictions. ``cfgs``: params sections
    ``frames``, ``features``, ``faces``, ``postprocess``."""
    from pipeline.stages import extract, predict, prepare

    faces_cfg = cfgs["faces"]
    detector = MTCNN(faces_cfg.min_face, faces_cfg.thresholds, faces_cfg.backend, threads=1)
    root = base / "dataset"
    if root.exists():
        shutil.rmtree(root)
    results = build_dataset(videos, root, faces_cfg, all_faces, detector, progress)
    clock.lap("faces")
    prepared, features = base / "prepared", base / "features"
    index = prepare.run(DataConfig(root=str(root)), cfgs["frames"], prepared, jobs=jobs)
    clock.lap("prepare")
    for m, ex in extractors.items():
        extract.run(m, getattr(cfgs["features"], m), prepared, features / f"{m}.zarr", device=device, extractor=ex,
                    progress=progress)
        clock.lap(f"extract_{m}")
    preds = predict.run(fold_models.folds, cfgs["postprocess"], fold_models.root, prepared, features,
                        base / "predictions.txt", device=device)
    clock.lap("predict")
    return results, index, preds


def write_results(
    results: dict[str, VideoResult], index: PreparedIndex, preds: dict[str, np.ndarray], fold_models: Models, out: Path
) -> dict[str, Path]:
    """``<out>/<trial>.csv`` and ``.png`` for every trial of every video; returns ``{trial: csv path}``."""
    written: dict[str, Path] = {}
    for r in results.values():
        n = r.faces.n_frames
        counted = {index.videos[index.trial(t).video].n_frames for t in r.trials}
        if counted != {n}:  # the same decoder counts both: a difference would misplace every row
            raise InputError(f"{r.path}: decoded {n} frames for the faces but {sorted(counted)} in prepare")
        if not any(t is not None for t in r.trials.values()):
            print(f"warning: {r.path}: no face found in {n} frames; face is 0 in every row", file=sys.stderr)
        for trial, track in r.trials.items():
            face = face_mask(track, n)
            title = f"{r.path.name}: {trial}  ({int(face.sum())}/{n} frames with a face, {len(fold_models.folds)} folds)"
            if fold_models.notes:
                title += "\n" + "; ".join(fold_models.notes).upper() + ": not a measurement of affect"
            write_csv(out / f"{trial}.csv", r.faces.times, preds[trial], face)
            draw_video(out / f"{trial}.png", r.faces.times, preds[trial], face, title)
            written[trial] = out / f"{trial}.csv"
            print(f"analyze: {out / trial}.csv, .png ({n} frames, {int(face.sum())} with a face)")
    return written


def run(
    videos: list[Path],
    models: Path,
    out: Path,
    frames_cfg: FramesConfig,
    features_cfg: FeaturesConfig,
    faces_cfg: FacesConfig,
    post_cfg: PostprocessConfig,
    all_faces: bool = False,
    device: str = "auto",
    jobs: int = 0,
    work: Path | None = None,
    progress: bool = True,
) -> dict[str, Path]:
    """Analyse ``videos``; returns ``{trial: csv path}``. ``work``: keep the intermediate dataset there (else a
    temporary folder, deleted afterwards)."""
    clock = Clock()
    videos = check_videos(videos)
    fold_models, extractors = load_checked(models, frames_cfg, features_cfg, device)
    clock.lap("setup")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cfgs = {"frames": frames_cfg, "features": features_cfg, "faces": faces_cfg, "postprocess": post_cfg}
    with contextlib.ExitStack() as stack:
        base = Path(work) if work is not None else Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="va-analyze-")))
        results, index, preds = predict_videos(videos, base, fold_models, extractors, cfgs, all_faces, device, jobs,
                                               progress, clock)
    written = write_results(results, index, preds, fold_models, out)
    clock.lap("outputs")
    n = sum(r.faces.n_frames for r in results.values())
    print(json.dumps({"analyze": len(results), "frames": n, "seconds": clock.total, "frames_per_s": round(n / clock.total, 1),
                      "phases_s": clock.laps}))
    return written


class Clock:
    """Seconds per phase of the command, for its closing JSON line."""

    def __init__(self) -> None:
        self.start = self.last = time.perf_counter()
        self.laps: dict[str, float] = {}

    def lap(self, name: str) -> None:
        now = time.perf_counter()
        self.laps[name] = round(self.laps.get(name, 0.0) + now - self.last, 2)
        self.last = now

    @property
    def total(self) -> float:
        return round(self.last - self.start, 2)
