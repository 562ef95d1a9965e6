"""``split``: cross-validation folds over the train + validation trials -> ``data/prepared/folds.json``.

- Trials are grouped by video, so ``<video>_left`` and ``<video>_right`` always land in the same fold (the same
  face and voice on both sides of a split would leak).
- ``official``: fold 0 is the official validation set; the training set's videos are cut into folds 1..n-1
  (Su Zhang's rotation: each fold in turn validates, the official split is the first one). A video with trials in
  both Train_Set and Validation_Set (one person in each) goes to fold 0 whole, with a warning naming it.
- ``random``: all videos are shuffled and cut into n folds.
- Within a scheme, videos are shuffled with ``split.seed`` and dealt, in that order, to the fold with the fewest
  frames so far: folds differ in size by at most one video's frames, and the seed decides which videos meet.
"""

from __future__ import annotations

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

from pipeline.common.config import SplitConfig
from pipeline.common.errors import InputError
from pipeline.io.prepared import Trial, load_index


def _names(trials: list[Trial]) -> str:
    return ", ".join(t.name for t in trials)


def deal(groups: dict[str, list[Trial]], n: int, seed: int) -> list[list[str]]:
    """Deal video ``groups`` into ``n`` folds of similar frame counts; returns sorted trial names per fold."""
    if len(groups) < n:
        raise InputError(f"{len(groups)} video(s) cannot fill {n} folds; lower split.n_folds")
    rng = np.random.default_rng(seed)
    names = sorted(groups)
    order = [names[i] for i in rng.permutation(len(names))]
    folds: list[list[str]] = [[] for _ in range(n)]
    sizes = [0] * n
    for v in order:
        k = min(range(n), key=lambda i: (sizes[i], i))
        folds[k] += [t.name for t in groups[v]]
        sizes[k] += sum(t.n_frames for t in groups[v])
    return [sorted(f) for f in folds]


def make_folds(trials: list[Trial], cfg: SplitConfig) -> list[list[str]]:
    """Folds (lists of trial names) by ``cfg.scheme``; see the module docstring."""
    def by_video(split: tuple[str, ...]) -> dict[str, list[Trial]]:
        groups: dict[str, list[Trial]] = defaultdict(list)
        for t in trials:
            if t.split in split:
                groups[t.video].append(t)
        return dict(groups)

    if cfg.scheme == "official":
        val = by_video(("val",))
        train = by_video(("train",))
        if not val:
            raise InputError("split.scheme official needs validation trials (annotations/.../Validation_Set)")
        for v in sorted(set(val) & set(train)):  # the same face or voice on both sides of a split would leak
            print(
                f"warning: video {v!r} has trials in both Train_Set ({_names(train[v])}) and Validation_Set "
                f"({_names(val[v])}); all of them go to fold 0, the validation fold",
                file=sys.stderr,
            )
            val[v] = val[v] + train.pop(v)
        val_fold = sorted(t.name for g in val.values() for t in g)
        return [val_fold] + deal(train, cfg.n_folds - 1, cfg.seed)
    return deal(by_video(("train", "val")), cfg.n_folds, cfg.seed)


def run(cfg: SplitConfig, index_path: Path, out: Path) -> list[list[str]]:
    """Write ``out`` (folds.json) from the prepared index at ``index_path``."""
    index = load_index(index_path.parent)
    folds = make_folds(list(index.trials), cfg)
    frames = {t.name: t.n_frames for t in index.trials}
    doc = {
        "n_folds": cfg.n_folds,
        "scheme": cfg.scheme,
        "seed": cfg.seed,
        "folds": folds,
        "frames": [sum(frames[t] for t in f) for f in folds],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=1) + "\n")
    print(json.dumps({"folds": str(out), "scheme": cfg.scheme, "frames": doc["frames"]}))
    return folds
