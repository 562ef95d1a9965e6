"""``predict``: average the folds' models over every test trial and write the ABAW submission file.

Format (ABAW VA challenge)::

    image_location,valence,arousal
    <trial>/00001.jpg,0.123456,-0.045678
    ...

one row per frame of every test trial, in frame order, named with the trial's own frame numbers; values are the mean
over folds of each fold's whole-trial prediction, smoothed as ``postprocess`` says, clipped to [-1, 1].
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from pipeline.common.config import PostprocessConfig
from pipeline.common.devices import amp_dtype, resolve_device
from pipeline.common.errors import InputError
from pipeline.common.outputs import atomic_path
from pipeline.io.prepared import load_index
from pipeline.scoring.postprocess import smooth
from pipeline.training import checkpoint
from pipeline.training.bank import FeatureBank
from pipeline.training.inference import predict

HEADER = "image_location,valence,arousal"


def check_submission(path: Path, expected: dict[str, int]) -> None:
    """Every test trial has exactly ``expected[trial]`` rows (its video's frame count), values in [-1, 1]."""
    counts: dict[str, int] = {}
    with open(path) as f:
        if f.readline().strip() != HEADER:
            raise InputError(f"{path}: first line is not {HEADER!r}")
        for line_no, line in enumerate(f, start=2):
            loc, v, a = line.rstrip("\n").split(",")
            if not (-1.0 <= float(v) <= 1.0 and -1.0 <= float(a) <= 1.0):
                raise InputError(f"{path}:{line_no}: value outside [-1, 1]")
            trial = loc.rsplit("/", 1)[0]
            counts[trial] = counts.get(trial, 0) + 1
    bad = {t: (counts.get(t, 0), n) for t, n in expected.items() if counts.get(t, 0) != n}
    extra = sorted(set(counts) - set(expected))
    if bad or extra:
        t, (got, want) = next(iter(bad.items())) if bad else (extra[0], (counts[extra[0]], 0))
        raise InputError(f"{path}: trial {t!r} has {got} rows, its video has {want} frames")


def run(
    folds: Sequence[int],
    post_cfg: PostprocessConfig,
    models: Path,
    prepared: Path,
    features: Path,
    out: Path,
    device: str = "auto",
) -> dict[str, np.ndarray]:
    """Write ``out`` and return ``{trial: (N, 2)}`` final predictions, the mean of the models of ``folds`` (each
    ``models/fold<k>/model.pt``; ``split.folds`` in params.yaml)."""
    models, prepared, features, out = Path(models), Path(prepared), Path(features), Path(out)
    dev = resolve_device(device)
    index = load_index(prepared)
    tests = index.by_split("test")
    names = [t.name for t in tests]
    totals: dict[str, np.ndarray] = {}
    bank: FeatureBank | None = None
    for k in folds:
        path = models / f"fold{k}" / "model.pt"
        model, norm, ckpt = checkpoint.load(path, dev)
        if not names:
            break
        modalities = list(ckpt["row_shapes"])
        if bank is None:  # the test trials' rows, loaded once for every fold's model
            bank = FeatureBank.build(features, modalities, names, dev, "auto", progress=False)
        if modalities != bank.modalities:
            raise InputError(f"{path}: uses modalities {modalities}, fold {folds[0]}'s model uses {bank.modalities}")
        checkpoint.check_features(path, ckpt, {m: {**bank.attrs[m], "row_shape": list(bank.row_shapes[m])} for m in modalities})
        preds = predict(model, bank, norm, names, ckpt["window"], ckpt["hop"], bool(ckpt["model"]["zero_missing"]),
                        autocast_dtype=amp_dtype(dev))
        for t in names:
            totals[t] = totals.get(t, 0) + preds[t].astype(np.float64)
        print(f"predict: fold {k} done ({len(names)} test trials)")
    final = {t: smooth((totals[t] / len(folds)).astype(np.float32), post_cfg) for t in names}

    with atomic_path(out) as tmp:
        with open(tmp, "w") as f:
            f.write(HEADER + "\n")
            for trial in tests:
                pred = final[trial.name]
                if len(pred) != trial.n_frames:
                    raise InputError(f"{features}: trial {trial.name!r} has {len(pred)} rows, index.json says {trial.n_frames}")
                for frame, (v, a) in zip(trial.frames, pred):
                    f.write(f"{trial.name}/{frame:05d}.jpg,{v:.6f},{a:.6f}\n")
        check_submission(tmp, {t.name: index.videos[t.video].n_frames for t in tests})
    print(f"predict: {out} ({sum(len(p) for p in final.values())} rows, {len(names)} test trials, {len(folds)} folds averaged)")
    return final
