"""``python -m pipeline analyze``: from any video, a folder or a list of videos, or a live source, to per-frame
valence and arousal with the trained folds.

Not a stage, and nothing on disk in between: the streaming chain of :mod:`pipeline.analysis` runs the stages' own
parts in memory (the face pipeline, ``prepare``'s crop reading and filling, the extractors through their contract,
whole-trial inference over the checkpoints, ``postprocess`` smoothing), chunk by chunk, so memory does not grow
with a video's length and rows are written as they become final. The result equals what ``prepare``, ``extract``
and ``predict`` give for the video as a test trial (tests/commands/test_analyze.py compares the two on every
real recording).

- Files: per trial ``<out>/<name>.csv`` (``frame,time_s,valence,arousal,face``, one row per decoded frame,
  ``frame`` from 1, ``time_s`` the frame's presentation time from the video's first frame) and ``<out>/<name>.png``.
  ``<stem>`` is the main face (largest area x duration); ``--all-faces`` gives every track of at least
  ``faces.min_track`` seconds as ``<stem>_face<k>``, largest first. A video without a face gives ``<stem>`` with
  ``face`` 0 everywhere and a warning. ``--jobs N`` runs N videos' face passes at once; the models are batched
  across the videos in flight.
- ``--live SOURCE`` (a camera index, an RTSP/HTTP URL, ``-`` for a stream on stdin): rolling windows, one row per
  frame at most one hop after it arrived, with ``latency_s`` (pipeline/analysis/live.py).

Refusals: the extractor each checkpoint records (``ckpt["features"][modality]``: extractor, weights sha256 or
"random-init", parameters) must equal what params ``features`` builds here; features from other weights or settings
would make the model's output meaningless. Models trained on random-init features or on the demo dataset are
labelled in a warning and in the figure's title.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.analysis.backend import Backend
from pipeline.analysis.predictor import Fold, load_folds
from pipeline.common.config import FacesConfig, FeaturesConfig, FramesConfig, PostprocessConfig
from pipeline.common.devices import resolve_device
from pipeline.common.errors import InputError
from pipeline.common.provenance import RANDOM_INIT
from pipeline.extractors import Extractor, build
from pipeline.faces.mtcnn import providers_for
from pipeline.io.media import VIDEO_SUFFIXES, find_videos
from pipeline.training import checkpoint

DEFAULT_CHUNK = 256  # frames per chunk of the streaming chain (memory: a few chunks of crops and one window of rows)
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


# ----------------------------------------------------------------------------------------------- command
def expand_videos(inputs: list[Path]) -> list[Path]:
    """Video files from ``inputs``: files as they are, folders as every video under them (any depth, by
    :data:`~pipeline.io.media.VIDEO_SUFFIXES`), ``.txt`` files as lists (one path per line, relative to the list;
    blank lines and ``#`` comments skipped). Each must exist and have a file name of its own (the CSV is named after
    it)."""
    videos: list[Path] = []
    for item in map(Path, inputs):
        if item.is_dir():
            found = sorted(find_videos(item).values())
            if not found:
                raise InputError(f"{item}: no video files ({', '.join(VIDEO_SUFFIXES)}) in this folder")
            videos += found
        elif item.suffix.lower() == ".txt" and item.is_file():
            lines = [ln.strip() for ln in item.read_text().splitlines()]
            videos += [item.parent / ln for ln in lines if ln and not ln.startswith("#")]
        else:
            videos.append(item)
    stems: dict[str, Path] = {}
    for v in videos:
        if not v.is_file():
            raise InputError(f"{v}: no such video file")
        if v.stem in stems:
            raise InputError(f"{v}: same name as {stems[v.stem]}; each video needs its own file name (the CSV is named after it)")
        stems[v.stem] = v
    if not videos:
        raise InputError("no videos given (files, folders or .txt lists; or --live SOURCE)")
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


@dataclass
class Loaded:
    """What both modes run: the checked extractors and the fold models on the device, and the models' notes."""

    device: Any  # torch.device
    extractors: dict[str, Extractor]
    folds: list[Fold]
    notes: list[str]


def load_all(models: Path, frames_cfg: FramesConfig, features_cfg: FeaturesConfig, device: str) -> Loaded:
    """:func:`load_checked` on the resolved device, and the fold models loaded there."""
    dev = resolve_device(device)
    fold_models, extractors = load_checked(models, frames_cfg, features_cfg, str(dev))
    return Loaded(dev, extractors, load_folds(fold_models.root, fold_models.folds, dev), fold_models.notes)


def detector_providers(dev: Any) -> tuple:
    """The face detector's onnxruntime providers on ``dev``; the reason, once, when a GPU run gets the CPU's."""
    providers, note = providers_for(str(dev))
    if note:
        print(f"note: {note}", file=sys.stderr)
    return providers


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
    jobs: int = 1,
    chunk: int = DEFAULT_CHUNK,
    progress: bool = True,
) -> dict[str, Path]:
    """Analyse video files (``videos``: files, folders, ``.txt`` lists); returns ``{trial: csv path}``. The last line
    printed is a JSON summary: frames, seconds and frames/s in all and per video."""
    from pipeline.analysis.files import FrontEnd, run_files

    t0 = time.perf_counter()
    videos = expand_videos(videos)
    dev = resolve_device(device)
    Path(out).mkdir(parents=True, exist_ok=True)
    setup_s = 0.0

    def make_backend() -> Backend:  # while the workers start their face passes
        nonlocal setup_s
        ld = load_all(models, frames_cfg, features_cfg, str(dev))
        setup_s = time.perf_counter() - t0
        return Backend(ld.extractors, ld.folds, post_cfg, ld.device, Path(out), ld.notes, chunk)

    fe = FrontEnd(faces_cfg, frames_cfg, all_faces, chunk, detector_providers(dev))
    summaries = run_files(videos, make_backend, fe, jobs, progress)
    total = time.perf_counter() - t0
    n = sum(s.frames for s in summaries)
    sys.stderr.flush()  # the progress line ends before the summary
    print(json.dumps({"analyze": len(summaries), "frames": n, "seconds": round(total, 2),
                      "frames_per_s": round(n / total, 1), "setup_s": round(setup_s, 2), "jobs": jobs, "chunk": chunk,
                      "device": str(dev), "videos": [s.as_dict() for s in summaries]}))
    return {p.stem: p for s in summaries for p in s.csvs}


def run_live(
    source: str,
    models: Path,
    csv_target: str,
    frames_cfg: FramesConfig,
    features_cfg: FeaturesConfig,
    faces_cfg: FacesConfig,
    post_cfg: PostprocessConfig,
    device: str = "auto",
    hop_s: float = 0.5,
    audio_lag_s: float = 0.5,
) -> dict:
    """``--live SOURCE``: rows to ``csv_target`` (``-``: stdout) until the stream ends or Ctrl-C; returns the
    summary (printed as JSON on stderr)."""
    from pipeline.analysis.live import LiveOptions, analyze_live

    ld = load_all(models, frames_cfg, features_cfg, device)
    opts = LiveOptions(hop_s, audio_lag_s, detector_providers(ld.device))
    summary = analyze_live(source, csv_target, ld.extractors, ld.folds, faces_cfg, frames_cfg, post_cfg, ld.device, opts)
    print(json.dumps(summary), file=sys.stderr)
    return summary
