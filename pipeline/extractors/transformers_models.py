"""``transformers-audio`` and ``transformers-image``: a transformers model from a local ``save_pretrained`` folder.

- audio (the wav2vec2 family: WavLM, HuBERT, wav2vec2, data2vec-audio): the folder's ``config.json`` gives the
  convolutional encoder (``conv_kernel``, ``conv_stride``: hop and window of the hidden frames, 50 Hz) and its
  feature extractor config the sampling rate (16 kHz) and ``do_normalize``; rows are the hidden states averaged
  over ``layers``, sampled at the frame times through :mod:`pipeline.extractors.chunked_audio`. (B, D) per batch.
- image (ViT, DeiT, DINOv2, ViT-MAE, CLIP / SigLIP's image tower, ConvNeXt, ...): the folder's
  ``preprocessor_config.json`` gives the preprocessing (:mod:`pipeline.extractors.images`); rows are the hidden
  states averaged over ``layers``, pooled per frame (B, D), or the patch-token map (B, D, h, w) with ``tokens``.

``hidden_states[-1]`` is what transformers returns as the last one: after the final layer norm in the
"stable layer norm" audio models (WavLM-Large, wav2vec2-large), before it in ViT. Nothing is downloaded:
``local_files_only`` and ``HF_HUB_OFFLINE``; a hub id given as ``model`` is refused (pipeline.extractors.weights).
transformers is imported only here, when such a kind is built.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from pipeline.common.config import AudioModelConfig, ConfigError, ImageModelConfig
from pipeline.extractors import Extractor, model_params
from pipeline.extractors import images as I
from pipeline.extractors import weights as W
from pipeline.extractors.chunked_audio import audio_extractor
from pipeline.extractors.images import image_extractor
from pipeline.io.timebase import SAMPLE_RATE, conv_stack

UNUSED_AT_INFERENCE = ("masked_spec_embed",)  # wav2vec2-family parameters that only pre-training uses


def local_folder(name: str, cfg: Any) -> tuple[Path, str]:
    """``features.<name>.model`` as a ``save_pretrained`` folder with a ``config.json``, and its weights digest."""
    key = f"features.{name}.model"
    folder = W.local_model(cfg.model, key)
    if not folder.is_dir() or not (folder / "config.json").is_file():
        raise W.WeightsError(f"{key}: {folder} is not a save_pretrained folder (config.json and a weights file)")
    return folder, W.model_digest(folder, cfg.sha256, key)


def load_model(folder: Path, name: str) -> nn.Module:
    """``AutoModel`` from ``folder`` (local files only), in eval mode; weights that leave the network's own
    parameters missing are a :class:`~pipeline.extractors.weights.WeightsError`."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel

    try:
        model, info = AutoModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
    except (OSError, ValueError, KeyError) as e:
        raise W.WeightsError(f"features.{name}.model: {folder}: cannot load: {str(e).splitlines()[0][:200]}") from None
    missing = [k for k in info.get("missing_keys", []) if not k.endswith(UNUSED_AT_INFERENCE)]
    if missing:
        raise W.WeightsError(
            f"{folder}: weights do not fit {type(model).__name__}: {len(missing)} parameters missing (first: "
            f"{', '.join(sorted(missing)[:3])})"
        )
    return model.eval()


def check_layers(layers: tuple[int, ...], n_layers: int, name: str) -> list[int]:
    """``layers`` as indices into the ``n_layers + 1`` hidden states (0 = the input to the first layer)."""
    n = n_layers + 1
    bad = [i for i in layers if not -n <= i < n]
    if bad:
        raise ConfigError(f"params.yaml: features.{name}.layers: {bad[0]} is out of range: the model has {n} hidden states (0..{n - 1}, or -1..-{n})")
    return [i % n for i in layers]


def mean_of_layers(hidden: tuple[torch.Tensor, ...], layers: list[int]) -> torch.Tensor:
    """The hidden states ``layers`` averaged (float32): each (B, L, D) or (B, C, H, W) -> one of the same shape."""
    return sum(hidden[i].float() for i in layers) / len(layers)


# ------------------------------------------------------------------------------------------------- audio
class AudioHiddenStates(nn.Module):
    """(1, n) normalised 16 kHz waveform -> (1, F, D) hidden states averaged over ``layers``."""

    def __init__(self, model: nn.Module, layers: list[int]) -> None:
        super().__init__()
        self.model, self.layers = model, layers

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        out = self.model(wave, output_hidden_states=True)
        return mean_of_layers(out.hidden_states, self.layers)


def audio_front(folder: Path, name: str) -> tuple[Any, bool]:
    """The model config (with its convolutional encoder) and the feature extractor's ``do_normalize``."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoConfig

    conf = AutoConfig.from_pretrained(folder, local_files_only=True)
    if not getattr(conf, "conv_kernel", None) or not getattr(conf, "conv_stride", None):
        raise ConfigError(
            f"params.yaml: features.{name}.kind: transformers-audio reads the wav2vec2 family (wav2vec2, HuBERT, "
            f"WavLM, data2vec-audio); {folder} holds a {conf.model_type!r} model without conv_kernel / conv_stride"
        )
    fe = folder / "preprocessor_config.json"
    doc = json.loads(fe.read_text()) if fe.is_file() else {}
    rate = int(doc.get("sampling_rate", SAMPLE_RATE))
    if rate != SAMPLE_RATE:
        raise ConfigError(f"{fe}: sampling_rate {rate}; the prepared audio is {SAMPLE_RATE} Hz")
    return conf, bool(doc.get("do_normalize", False))


def build_audio(name: str, cfg: AudioModelConfig, frames_size: int, dev: torch.device) -> Extractor:
    """``transformers-audio``: the wav2vec2-family model of ``cfg.model`` as a chunked audio extractor."""
    folder, digest = local_folder(name, cfg)
    conf, normalise = audio_front(folder, name)
    layers = check_layers(cfg.layers, conf.num_hidden_layers, name)
    net = AudioHiddenStates(load_model(folder, name), layers).to(dev)
    params = {**model_params(cfg), "model_type": conf.model_type, "layers": layers}
    return audio_extractor(name, cfg, net, int(conf.hidden_size), digest, normalise,
                           conv_stack(conf.conv_kernel, conf.conv_stride), params, dev,
                           "autocast-float16" if dev.type == "cuda" else "float32")


# ------------------------------------------------------------------------------------------------- image
class ImageHiddenStates(nn.Module):
    """(B, S, S, 3) uint8 crops -> (B, D) pooled rows or (B, D, h, w) token maps (:func:`images.rows`) of the
    hidden states averaged over ``layers``."""

    def __init__(self, model: nn.Module, contract: I.ImageContract, layers: list[int], pool: str, tokens: bool) -> None:
        super().__init__()
        self.model, self.contract, self.layers, self.pool, self.tokens = model, contract, layers, pool, tokens
        self.mae = float(getattr(model.config, "mask_ratio", 0.0) or 0.0) > 0  # ViT-MAE masks and shuffles tokens
        if self.mae:
            model.config.mask_ratio = 0.0  # read at every forward: keep every patch

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        x = I.preprocess(frames, self.contract)  # (B, S, S, 3) -> (B, 3, H, W)
        kw: dict[str, Any] = {}
        if self.mae:  # keep every patch, in order: no masking, and ascending noise is the identity shuffle
            n = (x.shape[-2] // self.model.config.patch_size) * (x.shape[-1] // self.model.config.patch_size)
            kw["noise"] = torch.arange(n, device=x.device, dtype=torch.float32).expand(len(x), n)
        out = self.model(pixel_values=x, output_hidden_states=True, **kw)
        return I.rows(mean_of_layers(out.hidden_states, self.layers), self.pool, self.tokens)


def build_image(name: str, cfg: ImageModelConfig, frames_size: int, dev: torch.device) -> Extractor:
    """``transformers-image``: the image model of ``cfg.model`` (its image tower for CLIP / SigLIP)."""
    folder, digest = local_folder(name, cfg)
    proc = folder / "preprocessor_config.json"
    if not proc.is_file():
        raise W.WeightsError(f"features.{name}.model: {folder} has no preprocessor_config.json (its preprocessing)")
    contract = I.from_processor(json.loads(proc.read_text()), str(proc))
    model = load_model(folder, name)
    if hasattr(model, "vision_model") and hasattr(model, "text_model"):
        model = model.vision_model  # a dual encoder: its image tower
    n_layers = getattr(model.config, "num_hidden_layers", None) or len(getattr(model.config, "depths", ())) or 0
    layers = check_layers(cfg.layers, n_layers, name)
    module = ImageHiddenStates(model, contract, layers, cfg.pool, cfg.tokens).to(dev)
    params = {**model_params(cfg), "model_type": model.config.model_type, "layers": layers,
              "preprocess": contract.as_record()}
    return image_extractor(name, cfg, module, contract, digest, frames_size, params, dev,
                           "autocast-float16" if dev.type == "cuda" else "float32")
