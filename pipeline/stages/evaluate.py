"""``evaluate``: score every fold's validation predictions, raw and smoothed, into ``metrics/cv.json``.

Each fold's CCC is computed over all of its validation frames concatenated (challenge protocol); the summary is the
mean and (population) standard deviation over folds. Smoothing (``postprocess``) is applied per trial before
scoring the ``smoothed`` block, so choosing a filter never needs a re-training.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.config import PostprocessConfig, SplitConfig
from pipeline.errors import InputError
from pipeline.io.prepared import load_folds, read_labels
from pipeline.metrics import ccc_va, json_float
from pipeline.postprocess import smooth

KEYS = ("ccc_valence", "ccc_arousal", "ccc_mean")


def load_val_predictions(fold_dir: Path) -> dict[str, np.ndarray]:
    """``{trial: (N, 2)}`` from ``<fold_dir>/val_predictions.npz``."""
    path = fold_dir / "val_predictions.npz"
    try:
        with np.load(path) as z:
            return {k: z[k].astype(np.float32) for k in z.files}
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run `python -m pipeline train --fold {fold_dir.name[4:]}` first)") from None


def summarise(per_fold: list[dict[str, float | None]]) -> dict[str, float | None]:
    """Mean and std over folds of each key; a fold with an undefined (null) CCC makes its key's summary null."""
    out: dict[str, float | None] = {}
    for k in KEYS:
        vals = [f[k] for f in per_fold]
        ok = all(v is not None for v in vals)
        out[f"{k}_mean"] = json_float(float(np.mean(vals))) if ok else None
        out[f"{k}_std"] = json_float(float(np.std(vals))) if ok else None
    return out


def run(split_cfg: SplitConfig, post_cfg: PostprocessConfig, models: Path, prepared: Path, out: Path) -> dict[str, Any]:
    """Write ``out`` (metrics/cv.json) for the folds ``split_cfg.folds``; returns the document."""
    models, prepared = Path(models), Path(prepared)
    folds = load_folds(prepared / "folds.json")
    per_fold: dict[str, dict[str, Any]] = {}
    random_init: set[str] = set()
    raw_list, smooth_list = [], []
    for k in split_cfg.folds:
        if k >= len(folds):
            raise InputError(f"{prepared / 'folds.json'}: no fold {k} (it has {len(folds)})")
        fold_dir = models / f"fold{k}"
        preds = load_val_predictions(fold_dir)
        expected = sorted(folds[k])
        if sorted(preds) != expected:
            raise InputError(
                f"{fold_dir / 'val_predictions.npz'}: trials {sorted(preds)} differ from fold {k} of folds.json "
                f"{expected} (folds changed since training? run `dvc repro`)"
            )
        meta_path = fold_dir / "meta.json"
        if meta_path.exists():
            random_init.update(json.loads(meta_path.read_text()).get("random_init_backbones", []))
        labels = read_labels(prepared, expected)
        y = np.concatenate([labels[t] for t in expected])
        raw = ccc_va(np.concatenate([preds[t] for t in expected]), y)
        sm = ccc_va(np.concatenate([smooth(preds[t], post_cfg) for t in expected]), y)
        raw = {key: json_float(v) for key, v in raw.items()}
        sm = {key: json_float(v) for key, v in sm.items()}
        raw_list.append(raw)
        smooth_list.append(sm)
        per_fold[f"fold{k}"] = {
            "raw": raw,
            "smoothed": sm,
            "frames": int(len(y)),
        }
    doc = {
        "raw": summarise(raw_list),
        "smoothed": summarise(smooth_list),
        "n_folds": len(split_cfg.folds),
        "random_init_backbones": sorted(random_init),
        "folds": per_fold,
    }
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    r, s = doc["raw"], doc["smoothed"]
    note = f"  [random-init backbones: {', '.join(doc['random_init_backbones'])}]" if random_init else ""
    print(
        f"cv over {len(split_cfg.folds)} folds: mean CCC raw {_fmt(r['ccc_mean_mean'])} ± {_fmt(r['ccc_mean_std'])} "
        f"(v {_fmt(r['ccc_valence_mean'])}, a {_fmt(r['ccc_arousal_mean'])}); smoothed ({post_cfg.method}) "
        f"{_fmt(s['ccc_mean_mean'])}{note}"
    )
    return doc


def _fmt(x: float | None) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.4f}"
