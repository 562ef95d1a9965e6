"""Weights files: sha256 check, safe loading, and the loud random-init label.

Nothing downloads at run time (DESIGN.md "Features"). A weights file named in params is checked against its
``sha256`` when one is given; a mismatch is an error naming both digests. With no file the extractor runs randomly
initialised from :data:`SEED`, prints a warning on every run, and the store says ``weights: random-init``.
"""

from __future__ import annotations

import hashlib
import sys
import warnings
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import torch

from pipeline.errors import PipelineError

SEED = 0  # torch.manual_seed before building a randomly initialised network
RANDOM_INIT = "random-init"


class WeightsError(PipelineError):
    """A weights file that is missing, has the wrong digest, or does not fit the network."""


class RandomInitWarning(UserWarning):
    """An extractor runs without trained weights: its features carry no learned meaning."""


def sha256_file(path: str | Path, block: int = 2**20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(block):
            h.update(chunk)
    return h.hexdigest()


def check_file(path: str | Path, expected: str | None, key: str) -> str:
    """Digest of ``path``; raises :class:`WeightsError` when it is missing or differs from ``expected``.
    ``key`` names the params entry (``features.vggish.weights``) in messages."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{key}: weights file {path} not found (nothing is downloaded at run time)")
    digest = sha256_file(path)
    if expected is not None and digest != expected.lower():
        raise WeightsError(f"{path}: sha256 is {digest}, but {key.rsplit('.', 1)[0]}.sha256 expects {expected.lower()}")
    return digest


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """A checkpoint as a flat state_dict, loaded with ``weights_only=True`` (no pickled code runs). Accepts a bare
    state_dict, or one under ``state_dict`` / ``model``; strips a DistributedDataParallel ``module.`` prefix."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as first:  # noqa: BLE001 - any unpickling failure is the user's file
        try:  # numpy arrays (torchvggish's PCA params file) are data too: allow exactly their reconstruction
            with torch.serialization.safe_globals(_numpy_globals()):
                obj = torch.load(str(path), map_location="cpu", weights_only=True)
        except Exception:  # noqa: BLE001
            raise WeightsError(f"{path}: cannot load as a torch checkpoint with weights_only=True: {first}") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and key in obj and isinstance(obj[key], Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise WeightsError(f"{path}: expected a state_dict (a mapping of tensors), got {type(obj).__name__}")
    out = {}
    for k, v in obj.items():
        if isinstance(v, np.ndarray):
            v = torch.from_numpy(np.array(v))
        if not isinstance(v, torch.Tensor):
            continue
        out[k[len("module."):] if k.startswith("module.") else k] = v
    return out


def _numpy_globals() -> list:
    import numpy.core.multiarray as multiarray

    kinds = [type(np.dtype(t)) for t in ("float32", "float64", "float16", "int64", "int32")]
    return [multiarray._reconstruct, np.ndarray, np.dtype, *kinds]


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path) -> None:
    """``model.load_state_dict(state, strict=True)`` with an error that lists the first mismatched names."""
    want, have = set(model.state_dict()), set(state)
    missing, unexpected = sorted(want - have), sorted(have - want)
    if missing or unexpected:
        raise WeightsError(
            f"{path}: state_dict does not fit the network: {len(missing)} missing (e.g. {missing[:3]}), "
            f"{len(unexpected)} unexpected (e.g. {unexpected[:3]})"
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # shape mismatches
        raise WeightsError(f"{path}: state_dict does not fit the network: {str(e).splitlines()[-1].strip()}") from None


def warn_random_init(name: str) -> None:
    """The loud label of a randomly initialised extractor: stderr on every run, and a Python warning."""
    msg = (
        f"WARNING: {name}: no weights file (features.{name}.weights is null): the network is RANDOMLY INITIALISED "
        f"(seed {SEED}); its features carry no learned meaning and the store is labelled weights: {RANDOM_INIT}"
    )
    print(msg, file=sys.stderr, flush=True)
    warnings.warn(msg, RandomInitWarning, stacklevel=2)
