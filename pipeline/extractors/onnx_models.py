"""``onnx-audio`` and ``onnx-image``: a model exported to ONNX (e.g. by optimum), run by onnxruntime.

An ``.onnx`` file carries the network but not its preprocessing, which an export keeps beside it (optimum's
layout): ``preprocessor_config.json`` (image: size, mean, std, resampling; audio: ``do_normalize``) and, for audio,
``config.json`` with the convolutional encoder (``conv_kernel``, ``conv_stride``) that fixes the hidden frames'
rate. The model's first input is fed (images: (B, 3, H, W) float32; audio: (1, n) float32 samples) and its first
output is read (images: (B, D) vectors, (B, L, D) tokens or (B, C, H, W) maps; audio: (1, F, D) hidden states).
``layers`` does not apply (an export has the outputs it was exported with). onnxruntime runs on CUDA when the
device is a GPU and its CUDA provider is installed, else on the CPU.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from pipeline.common.config import AudioModelConfig, ConfigError, ImageModelConfig
from pipeline.extractors import Extractor, model_params
from pipeline.extractors import images as I
from pipeline.extractors import weights as W
from pipeline.extractors.chunked_audio import audio_extractor
from pipeline.io.timebase import conv_stack


class OnnxModel:
    """An onnxruntime session: ``x`` (float32, the first input's layout) -> the first output, as torch tensors."""

    def __init__(self, path: Path, device: torch.device, key: str) -> None:
        import onnxruntime as ort

        cuda = device.type == "cuda" and "CUDAExecutionProvider" in ort.get_available_providers()
        providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if cuda else ["CPUExecutionProvider"]
        try:
            self.session = ort.InferenceSession(str(path), providers=providers)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own types for a bad file
            raise W.WeightsError(f"{key}: {path}: cannot load as an ONNX model: {str(e).splitlines()[0][:200]}") from None
        first = self.session.get_inputs()[0]
        self.input, self.input_shape = first.name, first.shape
        self.provider = self.session.get_providers()[0]

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        y = self.session.run(None, {self.input: x.detach().float().cpu().numpy()})[0]
        return torch.from_numpy(np.asarray(y, dtype=np.float32))


def onnx_file(name: str, cfg: Any) -> tuple[Path, str, dict[str, Any], dict[str, Any]]:
    """``features.<name>.model`` as an ``.onnx`` file, its digest, and the ``preprocessor_config.json`` and
    ``config.json`` beside it (empty where absent)."""
    key = f"features.{name}.model"
    path = W.local_model(cfg.model, key)
    if path.is_dir() or path.suffix != ".onnx":
        raise W.WeightsError(f"{key}: {path} is not an .onnx file")
    digest = W.check_file(path, cfg.sha256, key)
    side = [path.parent / n for n in ("preprocessor_config.json", "config.json")]
    docs = [json.loads(p.read_text()) if p.is_file() else {} for p in side]
    return path, digest, docs[0], docs[1]


class OnnxImage(torch.nn.Module):
    """(B, S, S, 3) uint8 crops -> (B, D) or (B, D, h, w) rows (:func:`images.rows`) of the first output."""

    def __init__(self, model: OnnxModel, contract: I.ImageContract, pool: str, tokens: bool) -> None:
        super().__init__()
        self.model, self.contract, self.pool, self.tokens = model, contract, pool, tokens

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        return I.rows(self.model(I.preprocess(frames.cpu(), self.contract)), self.pool, self.tokens)


def build_image(name: str, cfg: ImageModelConfig, frames_size: int, dev: torch.device) -> Extractor:
    path, digest, proc, _ = onnx_file(name, cfg)
    if not proc:
        raise W.WeightsError(
            f"features.{name}.model: no preprocessor_config.json beside {path} (an optimum export writes one: input "
            "size, mean, std)"
        )
    contract = I.from_processor(proc, str(path.parent / "preprocessor_config.json"))
    model = OnnxModel(path, dev, f"features.{name}.model")
    params = {**model_params(cfg, drop=("layers",)), "preprocess": contract.as_record()}
    return I.image_extractor(name, cfg, OnnxImage(model, contract, cfg.pool, cfg.tokens), contract, digest, frames_size,
                           params, torch.device("cpu"), f"onnxruntime ({model.provider})")


def build_audio(name: str, cfg: AudioModelConfig, frames_size: int, dev: torch.device) -> Extractor:
    path, digest, proc, conf = onnx_file(name, cfg)
    if not conf.get("conv_kernel") or not conf.get("conv_stride"):
        raise ConfigError(
            f"params.yaml: features.{name}.model: {path}: onnx-audio needs the model's config.json beside it, with "
            "conv_kernel and conv_stride (the rate of its hidden frames); an optimum export of a wav2vec2-family model writes it"
        )
    model = OnnxModel(path, dev, f"features.{name}.model")
    probe = model(torch.zeros((1, 16000)))  # (1, F, D)
    if probe.dim() != 3:
        raise W.WeightsError(f"{path}: first output has shape {tuple(probe.shape)}; expected (1, frames, dim) hidden states")
    return audio_extractor(name, cfg, model, int(probe.shape[-1]), digest, bool(proc.get("do_normalize", False)),
                           conv_stack(conf["conv_kernel"], conf["conv_stride"]), model_params(cfg, drop=("layers",)),
                           torch.device("cpu"), f"onnxruntime ({model.provider})")
