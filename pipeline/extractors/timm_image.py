"""``timm-image``: a timm image model from local files.

``model`` is either a folder as timm writes and the hub serves it (``config.json`` naming the ``architecture``,
its ``pretrained_cfg`` and ``model.safetensors`` or ``pytorch_model.bin``), loaded through timm's own
``local-dir:`` source, or a checkpoint file with ``arch`` naming the architecture (timm's
``pretrained_cfg_overlay=dict(file=...)``). Either way timm builds the network without its classifier
(``num_classes=0``) and loads the weights itself. Preprocessing is timm's data config for that model
(``resolve_data_config``; :mod:`pipeline.extractors.images`). Rows come from ``forward_features``: (B, L, D) tokens
(``model.num_prefix_tokens`` before the patch grid) or (B, C, H, W) maps, pooled per frame (B, D) or kept as a
(D, h, w) map with ``tokens``. ``layers`` does not apply.

timm imports torchvision, which must be the build made for the installed torch (docs/features.md); it is
imported only when this kind is built.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from pipeline.common.config import ConfigError, ImageModelConfig
from pipeline.extractors import Extractor, model_params
from pipeline.extractors import images as I
from pipeline.extractors import weights as W


def import_timm(name: str):  # noqa: ANN201 - the module
    """timm, or a one-line error saying why it cannot be imported here."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import timm
        import timm.data  # noqa: F401
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision's RuntimeError for a mismatched build
        raise ConfigError(
            f"params.yaml: features.{name}.kind: timm-image needs timm and a torchvision built for this torch "
            f"({torch.__version__}); importing it failed: {type(e).__name__}: {str(e).splitlines()[0][:120]}"
        ) from None
    return timm


class TimmFeatures(nn.Module):
    """(B, S, S, 3) uint8 crops -> (B, D) or (B, D, h, w) rows of ``forward_features``."""

    def __init__(self, model: nn.Module, contract: I.ImageContract, pool: str, tokens: bool) -> None:
        super().__init__()
        self.model, self.contract, self.pool, self.tokens = model, contract, pool, tokens
        self.prefix = int(getattr(model, "num_prefix_tokens", 0))

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        h = self.model.forward_features(I.preprocess(frames, self.contract))  # (B, L, D) or (B, C, H, W)
        return I.rows(h, self.pool, self.tokens, self.prefix if h.dim() == 3 else None)


def load(name: str, cfg: ImageModelConfig, path: Path) -> nn.Module:
    """The network without its classifier, weights loaded by timm from the folder or the checkpoint file."""
    timm = import_timm(name)
    try:
        if path.is_dir():
            return timm.create_model(f"local-dir:{path}", pretrained=True, num_classes=0)
        if not cfg.arch:
            raise ConfigError(f"params.yaml: features.{name}.arch: needed for a checkpoint file ({path}): its timm architecture name")
        return timm.create_model(cfg.arch, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, num_classes=0)
    except ConfigError:
        raise
    except Exception as e:  # noqa: BLE001 - timm raises RuntimeError, KeyError, FileNotFoundError ... for a bad folder
        raise W.WeightsError(f"features.{name}.model: {path}: timm cannot load it: {type(e).__name__}: {str(e).splitlines()[0][:200]}") from None


def build(name: str, cfg: ImageModelConfig, frames_size: int, dev: torch.device) -> Extractor:
    key = f"features.{name}.model"
    path = W.local_model(cfg.model, key)
    digest = W.model_digest(path, cfg.sha256, key)
    model = load(name, cfg, path).eval()
    timm = import_timm(name)
    contract = I.from_timm(timm.data.resolve_data_config({}, model=model))
    arch = model.pretrained_cfg.get("architecture") or cfg.arch or type(model).__name__
    params = {**model_params(cfg, drop=("layers",)), "arch": arch, "preprocess": contract.as_record()}
    module = TimmFeatures(model, contract, cfg.pool, cfg.tokens).to(dev)
    return I.image_extractor(name, cfg, module, contract, digest, frames_size, params, dev,
                           "autocast-float16" if dev.type == "cuda" else "float32")
