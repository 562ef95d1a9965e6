"""Weights files: sha256 check, safe loading, and the loud random-init label.

Nothing downloads at run time (DESIGN.md "Features"). A weights file named in params is checked against its
``sha256`` when one is given (before it is opened); a mismatch is an error naming both digests. Files load with
``torch.load(weights_only=True)``: a pickle that would construct or call anything but tensors and plain containers
is refused and nothing in it runs. Every fault is a one-line :class:`WeightsError` naming the file. With no file the
extractor runs randomly initialised from :data:`SEED`, prints one warning line on every run, and the store says
``weights: random-init``.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import re
import sys
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.common.errors import PipelineError
from pipeline.common.provenance import RANDOM_INIT  # noqa: F401 - the label this module writes

SEED = 0  # torch.manual_seed before building a randomly initialised network


class WeightsError(PipelineError):
    """A weights file that is missing, has the wrong digest, or does not fit the network."""


class RandomInitWarning(UserWarning):
    """An extractor runs without trained weights: its features carry no learned meaning."""


# The stderr line of :func:`warn_random_init` is what a user sees; the warning is for code that calls the extractors
# (tests, notebooks: ``pytest.warns``, ``warnings.catch_warnings``), so by default it is not printed a second time.
# Appended, so ``-W error`` or a caller's own filter still wins.
warnings.filterwarnings("ignore", category=RandomInitWarning, append=True)


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
    state_dict, or one under ``state_dict`` / ``model``; strips a DistributedDataParallel ``module.`` prefix.
    A refused pickle, a truncated or corrupt file, or anything but a mapping of tensors is a :class:`WeightsError`."""
    try:
        obj = _load_weights_only(path)
    except pickle.UnpicklingError as first:
        try:  # numpy arrays (torchvggish's PCA params file) are data too: allow exactly their reconstruction
            with torch.serialization.safe_globals(_numpy_globals()):
                obj = _load_weights_only(path)
        except Exception:  # noqa: BLE001 - report the first refusal, which names what the file asked for
            raise WeightsError(_refusal(path, first)) from None
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


def _load_weights_only(path: str | Path) -> object:
    """``torch.load(path, weights_only=True)``; a refusal stays a ``pickle.UnpicklingError``, any other failure to
    read (truncated zip or pickle, a file of another format) becomes a :class:`WeightsError`."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if "weights only load failed" in str(e).lower():
            raise
        raise WeightsError(_unreadable(path, e)) from None
    except FileNotFoundError:
        raise WeightsError(f"{path}: weights file not found") from None
    except Exception as e:  # noqa: BLE001 - torch raises OSError, RuntimeError, KeyError, EOFError... for bad bytes
        raise WeightsError(_unreadable(path, e)) from None


def _refusal(path: str | Path, e: Exception) -> str:
    found = re.search(r"GLOBAL ([\w.]+)", str(e))
    what = f" (it asks for {found.group(1)})" if found else ""
    return (
        f"{path}: refused: the file holds pickled objects other than tensors{what}, which could run code when "
        "loaded; nothing in it was run (torch.load weights_only=True). Save the weights as a plain state_dict."
    )


def _unreadable(path: str | Path, e: Exception) -> str:
    size = Path(path).stat().st_size if Path(path).exists() else 0
    detail = (str(e).strip().splitlines() or [""])[0][:160]
    return (
        f"{path}: not a readable torch checkpoint ({size} bytes; truncated, corrupt or another format): "
        f"{type(e).__name__}: {detail}"
    )


def _numpy_globals() -> list:
    import numpy.core.multiarray as multiarray

    kinds = [type(np.dtype(t)) for t in ("float32", "float64", "float16", "int64", "int32")]
    return [multiarray._reconstruct, np.ndarray, np.dtype, *kinds]


def load_strict(model: torch.nn.Module, state: Mapping[str, torch.Tensor], path: str | Path, show: int = 3) -> None:
    """``model.load_state_dict(state, strict=True)`` with a one-line error that counts missing, unexpected and
    differently shaped entries and names the first ``show`` of each (a file of another architecture)."""
    want = model.state_dict()
    missing = [k for k in want if k not in state]
    unexpected = [k for k in state if k not in want]
    shapes = [
        f"{k} {tuple(state[k].shape)} in the file, {tuple(want[k].shape)} in the network"
        for k in want
        if k in state and tuple(state[k].shape) != tuple(want[k].shape)
    ]
    if missing or unexpected or shapes:
        parts = [
            f"{len(items)} {what}" + (f" (first: {', '.join(items[:show])})" if items else "")
            for what, items in (("missing", missing), ("unexpected", unexpected), ("of another shape", shapes))
        ]
        raise WeightsError(
            f"{path}: state_dict does not fit the network ({type(model).__name__}, {len(want)} entries): "
            + "; ".join(parts)
        )
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as e:  # dtype problems the checks above do not see
        raise WeightsError(f"{path}: state_dict does not fit the network: {str(e).splitlines()[-1].strip()}") from None


def warn_random_init(message: str) -> None:
    """The loud label of a randomly initialised network: ``message`` on stderr on every run, and a
    :class:`RandomInitWarning` for callers that record warnings (not printed again by default)."""
    print(message, file=sys.stderr, flush=True)
    warnings.warn(message, RandomInitWarning, stacklevel=3)


def random_init_message(key: str) -> str:
    """What an extractor without a weights file says; ``key`` is its params entry (``features.vggish.weights``)."""
    name = key.split(".")[1]
    return (
        f"WARNING: {name}: no weights file ({key} is null): the network is RANDOMLY INITIALISED "
        f"(seed {SEED}); its features carry no learned meaning and the store is labelled weights: {RANDOM_INIT}"
    )


def load_or_random_init(
    net: torch.nn.Module, path: str | Path | None, sha256: str | None, key: str,
    init: Callable[[torch.nn.Module], Any] | None = None, warning: str | None = None,
) -> str:
    """Load the weights file ``path`` into ``net`` (sha256-checked, ``strict=True``) and return its digest; without a
    file, say so loudly (``warning``, default :func:`random_init_message`), apply ``init`` (if any) and return
    :data:`RANDOM_INIT`. ``key`` names the params entry in messages (``features.vggish.weights``)."""
    if path:
        digest = check_file(path, sha256, key)
        load_strict(net, load_state_dict(path), path)
        return digest
    warn_random_init(warning or random_init_message(key))
    if init is not None:
        init(net)
    return RANDOM_INIT


def origin(path: str | Path | None, digest: str) -> str | None:
    """What made a weights file, when this pipeline did: the ``backbone`` stage writes ``meta.json`` beside its
    ``backbone.pth``. ``"fine-tuned from random init"`` when that run started without ArcFace weights (the demo's),
    ``"fine-tuned from <sha256>"`` otherwise; None for anyone else's file or a meta.json of another file."""
    if not path:
        return None
    meta = Path(path).parent / "meta.json"
    try:
        doc = json.loads(meta.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(doc, dict) or doc.get("backbone_sha256") != digest:
        return None
    return "fine-tuned from random init" if doc.get("random_init_start") else f"fine-tuned from {doc.get('init', {}).get('sha256')}"



# ------------------------------------------------------------------------- foundation models from local files
HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")  # "microsoft/wavlm-large": what a hub id looks like
WEIGHTS_FILES = ("model.safetensors", "pytorch_model.bin")  # a save_pretrained folder's weights, in load order
SHARD_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")


def local_model(path: str | Path, key: str) -> Path:
    """``path`` (params ``key``, e.g. ``features.wavlm.model``) as an existing local folder or file; a hub id or a
    missing path is a one-line :class:`WeightsError` (nothing is downloaded at run time)."""
    p = Path(path).expanduser()
    if p.exists():
        return p
    text = str(path)
    if HUB_ID.fullmatch(text) and not text.startswith((".", "~")):
        raise WeightsError(
            f"{key}: {text!r} is a hub id, not a local path; nothing is downloaded at run time: download it once "
            f"(`hf download {text} --local-dir /models/{text.split('/')[-1]}`) and name that folder"
        )
    raise WeightsError(f"{key}: {p} not found (a local folder or file; nothing is downloaded at run time)")


def folder_weights(folder: Path, key: str) -> list[Path]:
    """The weights file(s) of a ``save_pretrained`` (or timm) folder: ``model.safetensors``, else
    ``pytorch_model.bin``, else the shards a ``*.index.json`` lists (in its order)."""
    for name in WEIGHTS_FILES:
        if (folder / name).is_file():
            return [folder / name]
    for name in SHARD_INDEXES:
        if (folder / name).is_file():
            shards = json.loads((folder / name).read_text()).get("weight_map", {}).values()
            return [folder / s for s in dict.fromkeys(shards)]
    raise WeightsError(f"{key}: {folder} holds no weights file ({', '.join(WEIGHTS_FILES)} or a shard index)")


def model_digest(path: Path, expected: str | None, key: str) -> str:
    """sha256 of a model's weights: of the file itself, or of a folder's weights file (a sharded folder: of its
    shards' bytes in index order); checked against ``expected`` (params ``<entry>.sha256``) when given."""
    files = folder_weights(path, key) if path.is_dir() else [path]
    if len(files) == 1:
        return check_file(files[0], expected, key)
    h = hashlib.sha256()
    for f in files:
        if not f.is_file():
            raise WeightsError(f"{key}: shard {f} not found")
        with open(f, "rb") as fh:
            while chunk := fh.read(2**20):
                h.update(chunk)
    digest = h.hexdigest()
    if expected is not None and digest != expected.lower():
        raise WeightsError(f"{path}: sha256 of its shards is {digest}, but {key.rsplit('.', 1)[0]}.sha256 expects {expected.lower()}")
    return digest
