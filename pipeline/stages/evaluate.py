"""``evaluate``: score every fold's validation predictions, raw and smoothed, and draw a few of them.

Writes (paths from dvc.yaml through the CLI)::

    metrics/cv.json                  what `dvc metrics show` prints: mean and (population) std over folds of CCC
                                     valence, arousal and mean, raw and smoothed; the random-init label; what
                                     produced the run (provenance)
    metrics/cv_folds/fold<k>.json    one file per fold, so `dvc metrics show metrics/cv_folds` is one row per fold:
                                     CCC raw and smoothed, validation frames and trials, the best epoch
    metrics/val_curves/fold<k>.png   labelled and predicted valence and arousal over time for the fold's best,
                                     median and worst validation trial (by the trial's own raw mean CCC)

Each fold's CCC is computed over all of its validation frames concatenated (challenge protocol). Smoothing
(``postprocess``) is applied per trial before scoring the ``smoothed`` block, so choosing a filter never needs a
re-training. Both the best epoch (train) and the smoothing are chosen on the fold they are scored on: these
cross-validation numbers are optimistic, not a held-out estimate.

Only scalars show in DVC's tables (lists and null are dropped), which is how ``cv.json`` keeps a short default view:
the random-init label is a string column, the provenance a one-element list that the file carries and DVC skips.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.common import provenance
from pipeline.common.config import PostprocessConfig, SplitConfig, as_dict
from pipeline.common.errors import InputError
from pipeline.common.outputs import atomic_dir, write_json
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import PreparedIndex, load_folds, load_index, read_labels
from pipeline.io.timebase import frame_times
from pipeline.scoring import paper
from pipeline.scoring.curves import TrialCurves, draw
from pipeline.scoring.metrics import ccc_va, json_float
from pipeline.scoring.postprocess import smooth
from pipeline.training import checkpoint

DIMS = ("valence", "arousal", "mean")
CURVE_TRIALS = 3  # validation trials drawn per fold: the best, the median and the worst by their own mean CCC


def load_val_predictions(fold_dir: Path) -> dict[str, np.ndarray]:
    """``{trial: (N, 2)}`` from ``<fold_dir>/val_predictions.npz``."""
    path = fold_dir / "val_predictions.npz"
    try:
        with np.load(path) as z:
            return {k: z[k].astype(np.float32) for k in z.files}
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run `python -m pipeline train --fold {fold_dir.name[4:]}` first)") from None


def scores(pred: np.ndarray, label: np.ndarray) -> dict[str, float | None]:
    """``{"valence", "arousal", "mean"}`` CCC of (N, 2) arrays, undefined values as None."""
    r = ccc_va(pred, label)
    return {d: json_float(r[f"ccc_{d}"]) for d in DIMS}


def summarise(per_fold: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Mean over folds of each of ``valence``, ``arousal``, ``mean`` and its population std (``<key>_std``); a fold
    with an undefined (None) CCC makes that key's summary None."""
    out: dict[str, float | None] = {}
    for k in DIMS:
        vals = [f[k] for f in per_fold]
        ok = bool(vals) and all(v is not None for v in vals)
        out[k] = json_float(float(np.mean(vals))) if ok else None
        out[f"{k}_std"] = json_float(float(np.std(vals))) if ok else None
    return out


def pick_trials(per_trial: dict[str, float | None], n: int = CURVE_TRIALS) -> list[str]:
    """Up to ``n`` trials spanning the fold, best first: the highest, the median and the lowest mean CCC (an
    undefined CCC counts as the lowest); ties broken by name so the choice is reproducible."""
    ranked = sorted(per_trial, key=lambda t: (-(per_trial[t] if per_trial[t] is not None else -math.inf), t))
    if len(ranked) <= n:
        return ranked
    idx = sorted({round(i * (len(ranked) - 1) / (n - 1)) for i in range(n)}) if n > 1 else [0]
    return [ranked[i] for i in idx]


def score_fold(
    fold_dir: Path, trials: list[str], prepared: Path, index: PreparedIndex, post_cfg: PostprocessConfig
) -> tuple[dict[str, Any], list[TrialCurves]]:
    """One fold's validation predictions against the labels: ``({"raw", "smoothed", "frames", "trials"}, curves of
    the trials :func:`pick_trials` chooses)``. Refuses predictions for other trials than the fold's."""
    preds = load_val_predictions(fold_dir)
    if sorted(preds) != trials:
        raise InputError(
            f"{fold_dir / 'val_predictions.npz'}: trials {sorted(preds)} differ from fold {fold_dir.name[4:]} of "
            f"folds.json {trials} (folds changed since training? run `dvc repro`)"
        )
    labels = read_labels(prepared, trials)
    smoothed = {t: smooth(preds[t], post_cfg) for t in trials}
    y = np.concatenate([labels[t] for t in trials])
    doc = {
        "raw": scores(np.concatenate([preds[t] for t in trials]), y),
        "smoothed": scores(np.concatenate([smoothed[t] for t in trials]), y),
        "frames": int(len(y)),
        "trials": len(trials),
    }
    per_trial = {t: scores(preds[t], labels[t]) for t in trials}
    curves = [
        TrialCurves(
            name=t,
            seconds=frame_times(index.trial(t).frame_numbers, index.trial(t).fps),
            label=labels[t],
            pred=preds[t],
            smoothed=smoothed[t] if post_cfg.method != "none" else None,
            ccc=per_trial[t],
            ccc_smoothed=scores(smoothed[t], labels[t]),
        )
        for t in pick_trials({t: s["mean"] for t, s in per_trial.items()})
    ]
    return doc, curves


def backbones_label(stores: dict[str, dict[str, Any]]) -> str:
    """Where the features came from, in one string (a column of ``dvc metrics show``): ``random-init: <names>`` for
    backbones that ran without weights, ``fine-tuned from random init: <names>`` for a backbone the ``backbone`` stage
    trained without a pretrained start (the demo's), else ``weights files: <names>`` (MFCC has none)."""
    random_init = [m for m, s in sorted(stores.items()) if s.get("weights") == provenance.RANDOM_INIT]
    from_random = [m for m, s in sorted(stores.items()) if s.get("weights_origin") == "fine-tuned from random init"]
    parts = [f"{provenance.RANDOM_INIT}: {', '.join(random_init)}"] if random_init else []
    parts += [f"fine-tuned from random init: {', '.join(from_random)}"] if from_random else []
    if parts:
        return "; ".join(parts)
    learned = [m for m, s in sorted(stores.items()) if s.get("weights") not in (None, "none")]
    return f"weights files: {', '.join(learned)}" if learned else "no learned backbone"


def run(
    split_cfg: SplitConfig,
    post_cfg: PostprocessConfig,
    models: Path,
    prepared: Path,
    features: Path,
    out: Path,
    folds_out: Path,
    curves_out: Path,
) -> dict[str, Any]:
    """Write ``out`` (cv.json), ``folds_out`` (one JSON per fold) and ``curves_out`` (one PNG per fold) for the folds
    ``split_cfg.folds``; returns the cv.json document."""
    models, prepared, features = Path(models), Path(prepared), Path(features)
    out, folds_out, curves_out = Path(out), Path(folds_out), Path(curves_out)
    folds = load_folds(prepared / "folds.json")
    index = load_index(prepared)
    fold_docs: dict[int, dict[str, Any]] = {}
    curves: dict[int, list[TrialCurves]] = {}
    trained: dict[str, Any] = {}
    for k in split_cfg.folds:
        if k >= len(folds):
            raise InputError(f"{prepared / 'folds.json'}: no fold {k} (it has {len(folds)})")
        fold_dir = models / f"fold{k}"
        meta = _read_json(fold_dir / "meta.json")
        trained[f"fold{k}"] = {"meta": meta, "params": _trained_with(fold_dir / "model.pt")}
        fold_docs[k], curves[k] = score_fold(fold_dir, sorted(folds[k]), prepared, index, post_cfg)
        fold_docs[k]["best_epoch"] = meta.get("best_epoch")

    params = _same_for_all_folds(trained, models)
    stores = _store_records(features, sorted(params["model"].get("modalities", [])), trained)
    random_init = sorted(m for m, s in stores.items() if s["weights"] == provenance.RANDOM_INIT)
    doc = {
        "raw": summarise([d["raw"] for d in fold_docs.values()]),
        "smoothed": summarise([d["smoothed"] for d in fold_docs.values()]),
        "n_folds": len(fold_docs),
        "backbones": backbones_label(stores),
        "random_init_backbones": random_init,
        # a list: DVC's tables skip it, the file keeps it
        "provenance": [
            {
                "code": provenance.record(),
                "features": stores,
                "params": {
                    **params,
                    "postprocess": as_dict(post_cfg),
                    "split": {**_split_record(prepared / "folds.json"), "folds": list(split_cfg.folds)},
                },
                "training": {f: t["meta"]["provenance"] for f, t in trained.items() if "provenance" in t["meta"]},
            }
        ],
    }

    note = f"features from RANDOM-INIT backbones ({', '.join(random_init)}): not Aff-Wild2 numbers" if random_init else None
    with atomic_dir(curves_out) as tmp:
        for k, trials in curves.items():
            title = (
                f"fold {k}: validation labels and predictions, {len(trials)} of {len(folds[k])} trials "
                f"(best, median, worst by the trial's mean CCC; smoothing: {post_cfg.method} {list(post_cfg.window)})"
            )
            draw(tmp / f"fold{k}.png", title, trials, note)
    with atomic_dir(folds_out) as tmp:
        for k, d in fold_docs.items():
            (tmp / f"fold{k}.json").write_text(json.dumps(d, indent=1) + "\n")
    write_json(out, doc)  # last: a cv.json that exists belongs to complete fold files and curves

    r, s = doc["raw"], doc["smoothed"]
    print(
        f"cv over {len(fold_docs)} folds: mean CCC raw {_fmt(r['mean'])} ± {_fmt(r['mean_std'])} "
        f"(v {_fmt(r['valence'])}, a {_fmt(r['arousal'])}); smoothed ({post_cfg.method}) {_fmt(s['mean'])}"
        + (f"  [{note}]" if note else "")
    )
    print(format_folds_table(fold_docs, random_init))
    return doc


def format_folds_table(fold_docs: dict[int, dict[str, Any]], random_init: list[str]) -> str:
    """Markdown: our CCC per fold (raw) beside the paper's Table 3, with the mean and std over folds."""
    ref = paper.table3()
    lines = [
        "| fold | valence | arousal | mean | paper valence | paper arousal | paper mean |",
        "|:-:|--:|--:|--:|--:|--:|--:|",
    ]
    for k, d in fold_docs.items():
        p = ref.get(k, {})
        lines.append(
            f"| {k} | {_fmt(d['raw']['valence'])} | {_fmt(d['raw']['arousal'])} | {_fmt(d['raw']['mean'])} | "
            f"{_fmt(p.get('valence'))} | {_fmt(p.get('arousal'))} | {_fmt(p.get('mean'))} |"
        )
    ours = summarise([d["raw"] for d in fold_docs.values()])
    theirs = summarise([ref[k] for k in sorted(ref)])
    lines.append(
        f"| mean ± std | {_pm(ours, 'valence')} | {_pm(ours, 'arousal')} | {_pm(ours, 'mean')} | "
        f"{_pm(theirs, 'valence')} | {_pm(theirs, 'arousal')} | {_pm(theirs, 'mean')} |"
    )
    lines.append("")
    lines.append(
        f"Paper: {paper.citation()}, Table 3 (Aff-Wild2, its own random 6-fold split: its fold k and ours hold "
        "different trials). Best epoch and smoothing are chosen on the fold they are scored on, so cross-validation "
        "CCC is optimistic."
    )
    if random_init:
        lines.append(f"Ours: features from random-init backbones ({', '.join(random_init)}): not Aff-Wild2 numbers.")
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------ provenance
def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run `python -m pipeline train` for this fold first)") from None
    except json.JSONDecodeError as e:
        raise InputError(f"{path}: not valid JSON (line {e.lineno}): {e.msg}") from None


def _trained_with(path: Path) -> dict[str, Any]:
    """The ``model`` and ``train`` params a fold checkpoint records."""
    ckpt = checkpoint.read(path)
    return {"model": ckpt["model"], "train": ckpt["train"]}


def _same_for_all_folds(trained: dict[str, Any], models: Path) -> dict[str, Any]:
    """The folds' common model and train params; folds trained with different params are not one experiment."""
    first, params = next(iter(trained.items()))
    for fold, t in trained.items():
        for section in ("model", "train"):
            a, b = params["params"][section], t["params"][section]
            if a != b:
                key = next(k for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k))
                raise InputError(
                    f"{models / fold / 'model.pt'}: trained with {section}.{key} = {b.get(key)!r}, but "
                    f"{first} with {a.get(key)!r}: the folds are not one experiment (run `dvc repro`)"
                )
    return dict(params["params"])


def _store_records(features: Path, modalities: list[str], trained: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Per modality, what its feature store says about how it was made (extractor, weights digest or "random-init",
    parameters, code version). Where a fold's meta.json records the features it was trained on, the weights must
    agree: scores of models trained on other features would be mislabelled."""
    out = {}
    for m in modalities:
        attrs = FeatureStore.open(features / f"{m}.zarr", require_complete=False).attrs
        out[m] = checkpoint.feature_record(attrs)
        for fold, t in trained.items():
            want = (t["meta"].get("features") or {}).get(m, {}).get("weights")
            if want is not None and want != out[m]["weights"]:
                raise InputError(
                    f"{features / f'{m}.zarr'}: weights {out[m]['weights']!r}, but {fold} was trained on features "
                    f"from weights {want!r} (run `dvc repro`)"
                )
    return out


def _split_record(path: Path) -> dict[str, Any]:
    doc = _read_json(path)
    return {k: doc.get(k) for k in ("scheme", "n_folds", "seed")}


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"


def _pm(summary: dict[str, float | None], key: str) -> str:
    return f"{_fmt(summary[key])} ± {_fmt(summary[f'{key}_std'])}"
