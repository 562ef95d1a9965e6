"""Fold checkpoints (``models/fold<k>/model.pt``): the model's weights with everything needed to use it.

A checkpoint carries the model params, the row shapes of its inputs, the window and hop it was trained with, the
normalisation statistics of its training folds and, per modality, what the feature store said about the features it
was trained on (extractor, weights digest, parameters). ``predict`` and ``analyze`` refuse features that differ:
features from other weights would make the predictions meaningless.

Saved with plain tensors and JSON-like values only, so :func:`load` uses ``torch.load(weights_only=True)``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.common.config import ModelConfig
from pipeline.common.errors import InputError
from pipeline.common.outputs import atomic_path
from pipeline.nn import FusionModel
from pipeline.training.normalise import Normaliser

FORMAT = "va-pipeline-model/2"
FEATURE_KEYS = ("extractor", "weights", "parameters")  # what must agree between a checkpoint and the stores


def feature_record(attrs: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint keeps of a store's attributes: extractor, weights digest, parameters, code version."""
    return {k: attrs.get(k) for k in (*FEATURE_KEYS, "weights_origin", "code_version")}


def save(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` (with ``format`` added) to ``path`` through a temporary file: never a half-written model."""
    with atomic_path(path) as tmp:
        torch.save({"format": FORMAT, **doc}, tmp)


def read(path: Path) -> dict[str, Any]:
    """The checkpoint's contents (``torch.load(weights_only=True)``), checked to be one of this pipeline's."""
    path = Path(path)
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: not found (run `python -m pipeline train --fold <k>` first)") from None
    except Exception as e:  # noqa: BLE001 - a truncated or foreign file is the user's to fix
        raise InputError(f"{path}: not a readable checkpoint ({type(e).__name__}: {str(e).splitlines()[0][:120]})") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        got = ckpt.get("format") if isinstance(ckpt, dict) else type(ckpt).__name__
        raise InputError(f"{path}: not a checkpoint of this pipeline version (format {got!r}, expected {FORMAT!r}); re-run training")
    return ckpt


def load(path: Path, device: torch.device) -> tuple[FusionModel, Normaliser, dict[str, Any]]:
    """Model (eval mode, on ``device``), its normalisation statistics and the checkpoint's metadata."""
    ckpt = read(path)
    cfg = ModelConfig(**ckpt["model"])
    row_shapes = {m: tuple(s) for m, s in ckpt["row_shapes"].items()}
    model = FusionModel(cfg, row_shapes, max_len=ckpt["window"])
    try:
        model.load_state_dict(ckpt["state_dict"])
    except RuntimeError as e:
        raise InputError(f"{path}: weights do not fit its own model params: {str(e).splitlines()[-1].strip()}") from None
    model.to(device).eval()
    return model, Normaliser.from_state(ckpt["norm"]), ckpt


def check_features(
    path: Path, ckpt: Mapping[str, Any], have: Mapping[str, Mapping[str, Any]], where: str = "features/{m}.zarr"
) -> None:
    """Refuse features that differ from those the checkpoint at ``path`` was trained on. ``have`` maps each modality
    to the record of what would feed the model (a store's attributes, or an extractor's: ``extractor``,
    ``weights``, ``parameters``, ``row_shape``); ``where`` names its source in messages (``{m}``: the modality)."""
    trained = ckpt.get("features") or {}
    for m, shape in ckpt["row_shapes"].items():
        if m not in have:
            raise InputError(f"{path}: the model needs {m!r} features, which are not available")
        mine, want = _plain(have[m]), _plain(trained.get(m) or {})
        src = where.format(m=m)
        if want.get("extractor") is not None and mine.get("extractor") != want["extractor"]:
            raise InputError(f"{path}: {m}: trained on extractor {want['extractor']!r}, {src} has {mine.get('extractor')!r}")
        if want.get("weights") is not None and mine.get("weights") != want["weights"]:
            raise InputError(
                f"{path}: {m}: trained on features from weights {want['weights']}, {src} has {mine.get('weights')}; "
                f"use the weights the models were trained with (features.{m}.weights)"
            )
        if want.get("parameters") is not None:
            p_want, p_mine = want["parameters"], mine.get("parameters") or {}
            diff = sorted(k for k in set(p_want) | set(p_mine) if p_want.get(k) != p_mine.get(k))
            if diff:
                d = diff[0]
                more = f"; also {', '.join(diff[1:])}" if len(diff) > 1 else ""
                raise InputError(
                    f"{path}: {m}: extractor parameter {d!r} is {p_want.get(d)!r} in training, {p_mine.get(d)!r} in "
                    f"{src}{more}"
                )
        got_shape = mine.get("row_shape", list(shape))
        if list(got_shape) != list(shape):
            raise InputError(f"{path}: {m}: rows of shape {list(got_shape)} in {src}, but the model was trained on {list(shape)}")


def _plain(record: Mapping[str, Any]) -> dict[str, Any]:
    """A record as JSON would give it back (tuples as lists), so stores, extractors and checkpoints compare."""
    return json.loads(json.dumps(dict(record)))
