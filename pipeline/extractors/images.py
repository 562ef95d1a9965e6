"""What the image kinds share (``transformers-image``, ``timm-image``, ``onnx-image``): the model's own
preprocessing, read from its config and applied to the prepared crops on the model's device, and the rows one
frame gives (a pooled vector, or the map of its patch tokens).

Preprocessing (:class:`ImageContract`) is read, never re-typed: from a transformers image processor's config
(``preprocessor_config.json``: ``size``, ``crop_size``, ``image_mean``, ``image_std``, ``rescale_factor``,
``resample``) or from timm's data config (``resolve_data_config``: ``input_size``, ``crop_pct``, ``mean``, ``std``,
``interpolation``). Both libraries resize a uint8 PIL image and round back to uint8; here the crops (uint8
``(B, S, S, 3)``, ``frames.size`` px) are resized with torch's filter of the same name (antialiased), rounded to the
0..255 grid, centre-cropped, scaled and normalised. PIL's bicubic kernel (a = -0.5) differs from torch's
(a = -0.75), so rows differ slightly from the processor's own output (docs/features.md gives the measured size).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F

from pipeline.common.config import ConfigError
from pipeline.extractors import Extractor

# PIL resampling codes as transformers' processors store them -> torch interpolation modes
PIL_RESAMPLE = {0: "nearest", 1: "bilinear", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}
# (PIL: 0 NEAREST, 1 LANCZOS, 2 BILINEAR, 3 BICUBIC, 4 BOX, 5 HAMMING; torch has no Lanczos / box / Hamming)


@dataclass(frozen=True)
class ImageContract:
    """A model's input: crops resized to ``resize`` (H, W), cropped to ``crop`` (H, W) from ``offset`` (top, left;
    the centre as the library rounds it), then ``(x * scale - mean) / std`` per RGB channel."""

    resize: tuple[int, int]
    crop: tuple[int, int]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    scale: float = 1 / 255.0
    interpolation: str = "bilinear"  # torch mode: nearest | bilinear | bicubic
    offset: tuple[int, int] = (0, 0)

    def as_record(self) -> dict[str, Any]:
        """JSON-able, for the store's parameters (part of the fingerprint) and input contract."""
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def _hw(size: Any, key: str) -> tuple[int, int]:
    """A processor ``size`` entry (``{"height", "width"}``, ``{"shortest_edge"}``, or an int) for square crops."""
    if isinstance(size, Mapping):
        if "height" in size and "width" in size:
            return int(size["height"]), int(size["width"])
        if "shortest_edge" in size:
            return int(size["shortest_edge"]), int(size["shortest_edge"])
        raise ConfigError(f"{key}: size {dict(size)} has neither height/width nor shortest_edge")
    if isinstance(size, (list, tuple)):
        return int(size[0]), int(size[-1])
    return int(size), int(size)


def from_processor(doc: Mapping[str, Any], key: str) -> ImageContract:
    """The contract of a transformers image processor's config (``processor.to_dict()`` or the JSON file)."""
    resize = _hw(doc.get("size", 224), key) if doc.get("do_resize", True) else None
    crop = _hw(doc["crop_size"], key) if doc.get("do_center_crop") and doc.get("crop_size") else resize
    if resize is None or crop is None:
        raise ConfigError(f"{key}: the processor does not resize; the crops (frames.size px) would reach the model as they are")
    normalise = doc.get("do_normalize", True)
    mean = tuple(doc.get("image_mean", (0.5, 0.5, 0.5))) if normalise else (0.0, 0.0, 0.0)
    std = tuple(doc.get("image_std", (0.5, 0.5, 0.5))) if normalise else (1.0, 1.0, 1.0)
    scale = float(doc.get("rescale_factor", 1 / 255.0)) if doc.get("do_rescale", True) else 1.0
    mode = PIL_RESAMPLE.get(int(doc.get("resample", 2)), "bilinear")
    offset = ((resize[0] - crop[0]) // 2, (resize[1] - crop[1]) // 2)  # transformers' center_crop floors
    return ImageContract(resize, crop, _rgb(mean), _rgb(std), scale, mode, offset)


def from_timm(data: Mapping[str, Any]) -> ImageContract:
    """The contract of timm's data config: resize to ``floor(size / crop_pct)``, centre crop ``size``
    (timm's eval transform, ``crop_mode: center``)."""
    _, h, w = data["input_size"]
    pct = float(data.get("crop_pct") or 1.0)
    resize = (math.floor(h / pct), math.floor(w / pct))
    mode = data.get("interpolation", "bilinear")
    offset = (int(round((resize[0] - h) / 2.0)), int(round((resize[1] - w) / 2.0)))  # torchvision's CenterCrop rounds
    return ImageContract(resize, (int(h), int(w)), _rgb(data["mean"]), _rgb(data["std"]), 1 / 255.0,
                         mode if mode in ("nearest", "bilinear", "bicubic") else "bilinear", offset)


def _rgb(v: Any) -> tuple[float, float, float]:
    v = [float(x) for x in v]
    return (v[0], v[0], v[0]) if len(v) == 1 else (v[0], v[1], v[2])


def preprocess(frames: torch.Tensor, c: ImageContract) -> torch.Tensor:
    """(B, S, S, 3) uint8 RGB crops -> (B, 3, H, W) float32 model input, on the frames' device."""
    x = frames.permute(0, 3, 1, 2).float()  # (B, S, S, 3) -> (B, 3, S, S)
    if tuple(x.shape[-2:]) != c.resize:
        smooth = c.interpolation != "nearest"
        x = F.interpolate(x, size=c.resize, mode=c.interpolation, antialias=smooth,
                          align_corners=False if smooth else None)
        x = x.round().clamp(0, 255)  # the libraries resize uint8 images: back to that grid
    top, left = c.offset
    x = x[:, :, top : top + c.crop[0], left : left + c.crop[1]]  # centre crop
    mean = torch.tensor(c.mean, device=x.device)[None, :, None, None]
    std = torch.tensor(c.std, device=x.device)[None, :, None, None]
    return (x * c.scale - mean) / std


def prefix_tokens(n_tokens: int) -> int:
    """Tokens before the patch grid (class, distillation, register tokens) of a sequence of ``n_tokens``: what is
    left over after the largest square grid (197 -> 1, 261 -> 5 with 4 registers, 49 -> 0)."""
    side = math.isqrt(n_tokens)
    return n_tokens - side * side


def rows(h: torch.Tensor, pool: str, tokens: bool, prefix: int | None = None) -> torch.Tensor:
    """One frame's rows from a model's features.

    ``h``: (B, L, D) tokens (``prefix`` of them before a square patch grid; None: :func:`prefix_tokens`), or
    (B, C, H, W) maps, or (B, D) vectors. Returns (B, D, h, w) patch maps when ``tokens`` (LA-SE attends over them),
    else (B, D): the mean of the patch tokens / map positions (``pool: mean``) or the first token (``pool: cls``)."""
    if h.dim() == 2:
        if tokens:
            raise ValueError("the model gives one vector per image: there is no token map to store (tokens: false)")
        return h
    if h.dim() == 4:  # a convolutional map (B, C, H, W)
        if pool == "cls" and not tokens:
            raise ValueError("pool: cls needs a class token; this model gives maps (use pool: mean)")
        return h if tokens else h.mean(dim=(2, 3))
    k = prefix_tokens(h.shape[1]) if prefix is None else prefix
    patches = h[:, k:]  # (B, L, D) -> (B, h*w, D)
    if tokens:
        side = math.isqrt(patches.shape[1])
        if side * side != patches.shape[1]:
            raise ValueError(f"{patches.shape[1]} patch tokens do not form a square grid")
        return patches.transpose(1, 2).reshape(h.shape[0], h.shape[2], side, side)  # (B, h*w, D) -> (B, D, h, w)
    if pool == "cls":
        if k == 0:
            raise ValueError("pool: cls needs a class token; this model has none (use pool: mean)")
        return h[:, 0]
    return patches.mean(dim=1)  # (B, h*w, D) -> (B, D)


def image_extractor(name: str, cfg: Any, module: Any, contract: ImageContract, digest: str, frames_size: int,
                    params: dict[str, Any], dev: torch.device, precision: str) -> Extractor:
    """The :class:`Extractor` of an image model (``params``: what decides the rows); its row shape from one
    forward pass of a blank crop."""
    try:
        with torch.inference_mode():
            shape = tuple(module(torch.zeros((1, frames_size, frames_size, 3), dtype=torch.uint8, device=dev)).shape[1:])
    except ValueError as e:
        raise ConfigError(f"params.yaml: features.{name}: {e}") from None
    contract_doc = {"input": f"RGB uint8 ({frames_size}, {frames_size}, 3) crops", **contract.as_record(),
                    "rows": "patch-token map (D, h, w)" if cfg.tokens else f"{cfg.pool} of the patch tokens"}
    return Extractor(name, "frames", shape, cfg.dtype, cfg.batch, digest, params, contract_doc, dev, module=module,
                     precision=precision, model_kind=cfg.kind)
