"""Extractors: each a model (or function) plus its input contract; :func:`build` turns a ``features.<name>`` entry
into the uniform :class:`Extractor` the extract stage drives, by the entry's ``kind`` (:data:`BUILDERS`).

An :class:`Extractor` has two halves:
- ``inputs``, run by the stage's reader threads on the CPU: prepared data -> a batch of model inputs
  (``frames`` kind: uint8 crops as stored; ``audio`` kind: ``audio_inputs(source, times)``);
- ``forward``, run on the device: a batch of inputs -> (B, *row_shape) features.

Kinds: the paper's ``iresnet``, ``vggish`` and ``mfcc`` (built here), and foundation models from local files
(``transformers-audio`` / ``-image``, ``timm-image``, ``onnx-audio`` / ``-image``: docs/features.md), whose modules
import their libraries only when such a kind is built.
"""

from __future__ import annotations

import hashlib
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch

from pipeline.common.config import IResNetConfig, MFCCConfig, VGGishConfig, as_dict
from pipeline.common.devices import resolve_device
from pipeline.extractors import weights as W
from pipeline.extractors.audio import AudioSource

NAMES = ("iresnet", "vggish", "mfcc")  # the paper's extractors, the default features
_HERE = Path(__file__).resolve().parent
# the modules that decide each kind's rows, besides the shared ones (audio, weights, this file, time arithmetic)
SOURCES = {
    "iresnet": ("iresnet.py",),
    "vggish": ("vggish.py",),
    "mfcc": ("mfcc.py",),
    "transformers-audio": ("transformers_models.py", "chunked_audio.py"),
    "onnx-audio": ("onnx_models.py", "chunked_audio.py"),
    "transformers-image": ("transformers_models.py", "images.py"),
    "timm-image": ("timm_image.py", "images.py"),
    "onnx-image": ("onnx_models.py", "images.py"),
}
# kind -> "module:function" building its Extractor (imported when that kind is built)
BUILDERS = {
    "iresnet": "pipeline.extractors:_build_iresnet",
    "vggish": "pipeline.extractors:_build_vggish",
    "mfcc": "pipeline.extractors:_build_mfcc",
    "transformers-audio": "pipeline.extractors.transformers_models:build_audio",
    "transformers-image": "pipeline.extractors.transformers_models:build_image",
    "timm-image": "pipeline.extractors.timm_image:build",
    "onnx-audio": "pipeline.extractors.onnx_models:build_audio",
    "onnx-image": "pipeline.extractors.onnx_models:build_image",
}


def code_version(kind: str) -> str:
    """sha256 (16 hex) of the sources that decide the rows of an extractor kind: its modules, the shared audio /
    weights helpers and the time arithmetic. A store made by other code rebuilds itself (the fingerprint differs)."""
    h = hashlib.sha256()
    own = [_HERE / f for f in SOURCES.get(kind, (f"{kind}.py",))]
    for f in (*own, _HERE / "audio.py", _HERE / "weights.py", _HERE / "__init__.py", _HERE.parent / "io" / "timebase.py"):
        h.update(f.name.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:16]


@dataclass
class Extractor:
    name: str
    kind: Literal["frames", "audio"]
    row_shape: tuple[int, ...]
    dtype: str  # store dtype
    batch: int
    weights: str  # sha256 of the weights file(s), or "random-init"
    params: dict[str, Any]  # what decides the rows (fingerprint and store attributes)
    contract: dict[str, Any]  # the input contract, recorded in the store
    device: torch.device
    module: Callable[[torch.Tensor], torch.Tensor] | None = None  # None: inputs are already the rows (MFCC)
    audio_inputs: Callable[[AudioSource, np.ndarray], Any] | None = None  # (src, times) -> inputs of len(times)
    # list of audio_inputs results -> one batch input; default: concatenate arrays along rows
    collate: Callable[[list[Any]], Any] | None = None
    precision: str = "float32"
    extra_attrs: dict[str, Any] = field(default_factory=dict)
    model_kind: str = ""  # the params kind (iresnet, transformers-audio, ...); "" = the name (the paper's three)

    def __post_init__(self) -> None:
        self.model_kind = self.model_kind or self.name

    def forward(self, x: Any) -> torch.Tensor:
        """(B, ...) inputs (a tensor, or what ``collate`` makes) on any device -> (B, *row_shape) float tensor on
        ``self.device``."""
        if self.module is None:
            return x
        x = x.to(self.device, non_blocking=True)
        if self.device.type == "cuda":
            with torch.autocast("cuda", dtype=torch.float16):
                return self.module(x)
        return self.module(x)


def _prepare_module(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    module = module.eval().to(device)
    return module.to(memory_format=torch.channels_last)


def build(name: str, cfg: Any, frames_size: int, device: str | torch.device = "auto") -> Extractor:
    """The extractor of the entry ``features.<name>`` (``cfg``, its kind's dataclass), weights loaded and
    checked; ``frames_size``: the side of the prepared crops."""
    dev = device if isinstance(device, torch.device) else resolve_device(device)
    kind = getattr(cfg, "kind", name)
    if kind not in BUILDERS:
        raise ValueError(f"unknown extractor kind {kind!r} (known: {', '.join(BUILDERS)})")
    module, fn = BUILDERS[kind].split(":")
    return getattr(importlib.import_module(module), fn)(name, cfg, frames_size, dev)


PATH_KEYS = ("batch", "weights", "sha256", "pca_weights", "pca_sha256", "model", "kind")


def model_params(cfg: Any, drop: tuple[str, ...] = ()) -> dict[str, Any]:
    """Parameters that decide the rows: the entry minus paths (the digest stands for the file) and the batch size
    (it changes throughput, not rows), minus ``drop`` (keys a kind ignores). The paper's kinds leave ``kind`` out
    (their stores' parameters stay as they were); the other kinds record it."""
    keep_kind = getattr(cfg, "kind", None) not in (None, *NAMES)
    return {
        k: v for k, v in as_dict(cfg).items()
        if (k not in PATH_KEYS or (k == "kind" and keep_kind)) and k not in drop
    }



def _build_iresnet(name: str, cfg: IResNetConfig, size: int, dev: torch.device) -> Extractor:
    from pipeline.extractors import iresnet as R

    contract = {"input": f"{R.CONTRACT.color} {R.CONTRACT.dtype} ({size}, {size}, 3) crops", "normalise": R.CONTRACT.formula}
    params = {**model_params(cfg), "frames_size": size}
    key = f"features.{name}.weights"
    if cfg.weights and str(cfg.weights).endswith(".onnx"):
        digest = W.check_file(cfg.weights, cfg.sha256, key)
        emb = R.OnnxEmbedder(cfg.weights, dev)
        contract = {"input": f"RGB uint8 crops resized to {emb.size} px", "normalise": "insightface ArcFaceONNX"}
        return Extractor(
            name, "frames", (emb.dim,), cfg.dtype, cfg.batch, digest, {**params, "onnx": True, "pooled": True},
            contract, torch.device("cpu"), module=emb, precision="onnxruntime", model_kind="iresnet",
        )
    net = R.iresnet50()
    digest = W.load_or_random_init(net, cfg.weights, cfg.sha256, key, init=R.random_init)
    module = _prepare_module(R.IResNetFeatures(net, cfg.pooled), dev)
    return Extractor(
        name, "frames", R.row_shape(size, cfg.pooled), cfg.dtype, cfg.batch, digest, params, contract, dev,
        module=module, precision="autocast-float16" if dev.type == "cuda" else "float32", model_kind="iresnet",
    )


def _build_vggish(name: str, cfg: VGGishConfig, frames_size: int, dev: torch.device) -> Extractor:
    from pipeline.extractors import vggish as V

    torch.manual_seed(W.SEED)
    net = V.build_network()
    digest = W.load_or_random_init(net, cfg.weights, cfg.sha256, f"features.{name}.weights")
    pca = None
    if cfg.pca:
        if not cfg.pca_weights:
            raise W.WeightsError(f"features.{name}.pca is true but features.{name}.pca_weights is null")
        pca_digest = W.check_file(cfg.pca_weights, cfg.pca_sha256, f"features.{name}.pca_weights")
        pca = V.check_pca(W.load_state_dict(cfg.pca_weights), cfg.pca_weights)
        digest = f"{digest}+pca:{pca_digest}"
    module = _prepare_module(V.VGGishFeatures(net, pca), dev)
    c = V.CONTRACT
    contract = {
        "sample_rate": c.sample_rate, "stft_window": c.win, "stft_hop": c.hop, "mel_bands": c.n_bands,
        "example_frames": c.n_frames, "example": "96 log-mel frames centred on the frame time (<= 5 ms off)",
        "edges": "zeros (silence) beyond the track",
    }
    return Extractor(
        name, "audio", (c.dim,), cfg.dtype, cfg.batch, digest, model_params(cfg), contract, dev,
        module=module, audio_inputs=V.pack_examples, collate=V.PackedExamples.concat,  # log-mel on the device
        precision="autocast-float16" if dev.type == "cuda" else "float32", model_kind="vggish",
    )


class _MFCCInputs:
    """MFCC rows at frame times, with the per-track ``top_db`` reference cached (one pass per video)."""

    def __init__(self, p: Any) -> None:
        self.p = p
        self._max: dict[str, float] = {}

    def __call__(self, src: AudioSource, times: np.ndarray) -> np.ndarray:
        from pipeline.extractors import mfcc as M

        if src.key not in self._max:
            self._max[src.key] = M.max_mel_power(src, self.p)
        return M.mfcc_at(src, times, self.p, max_power=self._max[src.key])


def _build_mfcc(name: str, cfg: MFCCConfig, frames_size: int, dev: torch.device) -> Extractor:
    from pipeline.extractors import mfcc as M

    p = M.MFCCParams(n_mfcc=cfg.n_mfcc, n_mels=cfg.n_mels, window_ms=cfg.window_ms, hop_ms=cfg.hop_ms)
    contract = {
        "sample_rate": p.sample_rate, "n_fft": p.win, "hop": p.hop, "center": True,
        "rows": "librosa mfcc + delta + delta2 (width 9) at the centred frame nearest the frame time",
    }
    return Extractor(
        name, "audio", (p.dim,), cfg.dtype, 1024, "none", model_params(cfg), contract, torch.device("cpu"),
        module=None, audio_inputs=_MFCCInputs(p), precision="float32 (numpy)", model_kind="mfcc",
    )
