"""Stand-in foundation models saved as a user's local files, for `bench extract` and the tests (nothing is downloaded
here): a transformers wav2vec2-family audio model, a ViT, a timm ViT, and ONNX exports of small torch networks
with the files an optimum export keeps beside them. Random weights from a fixed seed, so they measure speed and
the data path, never meaning. ``size="tiny"``: 2 layers of width 32 (seconds on a CPU, for tests);
``size="base"``: the layer counts and widths of WavLM-Base and ViT-B/16 (what a real backbone costs)."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import torch
from torch import nn

# a wav2vec2 feature encoder with the real strides (hop 320, window 400 samples: 50 Hz) but 32 channels
CONV = {"conv_dim": (32,) * 7, "conv_kernel": (10, 3, 3, 3, 3, 2, 2), "conv_stride": (5, 2, 2, 2, 2, 2, 2)}
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64,
        "num_conv_pos_embeddings": 16, "num_conv_pos_embedding_groups": 4, "feat_extract_norm": "layer",
        "do_stable_layer_norm": True, **CONV}
BASE = {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072,
        "feat_extract_norm": "layer", "do_stable_layer_norm": True, "conv_kernel": CONV["conv_kernel"],
        "conv_stride": CONV["conv_stride"]}  # WavLM-Base's transformer (its encoder has 512 channels)
VIT = {"tiny": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64},
       "base": {"hidden_size": 768, "num_hidden_layers": 12, "num_attention_heads": 12, "intermediate_size": 3072}}


def transformers_audio(dst: Path, model_type: str = "wavlm", normalise: bool = True, seed: int = 0,
                       size: str = "tiny") -> Path:
    """A ``model_type`` (wavlm | wav2vec2 | hubert) of ``size`` and its feature extractor config, saved with
    ``save_pretrained`` into ``dst``."""
    from transformers import AutoConfig, AutoModel, Wav2Vec2FeatureExtractor

    torch.manual_seed(seed)
    extra = {"num_buckets": 32, "max_bucket_distance": 200} if model_type == "wavlm" and size == "tiny" else {}
    cfg = AutoConfig.for_model(model_type, **(TINY if size == "tiny" else BASE), **extra)
    AutoModel.from_config(cfg).eval().save_pretrained(dst)
    Wav2Vec2FeatureExtractor(sampling_rate=16000, do_normalize=normalise, return_attention_mask=True).save_pretrained(dst)
    return dst


def transformers_image(dst: Path, image_size: int = 32, patch: int = 8, resample: int = 2, seed: int = 0,
                       model_type: str = "vit", size: str = "tiny") -> Path:
    """A ViT (or ViT-MAE) of ``size`` on ``image_size`` px with ``patch`` px patches and its image processor config
    (``resample``: a PIL code), saved into ``dst``."""
    from transformers import AutoConfig, AutoModel

    torch.manual_seed(seed)
    cfg = AutoConfig.for_model(model_type, **VIT[size], image_size=image_size, patch_size=patch)
    AutoModel.from_config(cfg).eval().save_pretrained(dst)
    processor_config(dst, image_size, resample)
    return dst


def processor_config(dst: Path, size: int, resample: int = 2, kind: str = "ViTImageProcessor") -> Path:
    """A ``preprocessor_config.json`` as transformers writes it for a ViT image processor."""
    dst.mkdir(parents=True, exist_ok=True)
    doc = {"do_normalize": True, "do_rescale": True, "do_resize": True, "image_mean": [0.5, 0.4, 0.3],
           "image_std": [0.2, 0.3, 0.4], "image_processor_type": kind, "resample": resample,
           "rescale_factor": 1 / 255, "size": {"height": size, "width": size}}
    (dst / "preprocessor_config.json").write_text(json.dumps(doc, indent=2))
    return dst


def timm_image(dst: Path, seed: int = 0) -> Path:
    """A 2-block timm ViT on 32 px (8 px patches, width 32) saved as timm saves for the hub (``save_for_hf``:
    config.json naming the architecture and its data config, model.safetensors)."""
    import timm
    from timm.models import save_for_hf

    torch.manual_seed(seed)
    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=32, patch_size=8, embed_dim=32,
                              depth=2, num_heads=2, num_classes=5)
    save_for_hf(model.eval(), str(dst), model_args={"img_size": 32, "patch_size": 8, "embed_dim": 32, "depth": 2,
                                                    "num_heads": 2}, safe_serialization=True)
    return dst


class _ConvAudio(nn.Module):
    """A waveform (B, n) -> (B, F, 16) hidden states: wav2vec2's conv geometry (hop 320, window 400), 8 channels."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        c_in = 1
        for k, s in zip(CONV["conv_kernel"], CONV["conv_stride"]):
            layers += [nn.Conv1d(c_in, 8, k, s), nn.GELU()]
            c_in = 8
        self.conv = nn.Sequential(*layers)
        self.proj = nn.Linear(8, 16)

    def forward(self, wave: torch.Tensor) -> torch.Tensor:
        return self.proj(self.conv(wave[:, None]).transpose(1, 2))  # (B, 8, F) -> (B, F, 8) -> (B, F, 16)


class _PatchImage(nn.Module):
    """(B, 3, 32, 32) -> (B, 1 + 16, 24): a class token and 4 x 4 patch tokens."""

    def __init__(self) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, 24, 8, 8)
        self.cls = nn.Parameter(torch.randn(1, 1, 24))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.patch(x).flatten(2).transpose(1, 2)  # (B, 24, 4, 4) -> (B, 16, 24)
        return torch.cat([self.cls + 0 * t[:, :1], t], dim=1)  # broadcast over the batch: traced as such


def _export(net: nn.Module, example: torch.Tensor, path: Path, dynamic: dict) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net.eval(), (example,), str(path), dynamo=False, input_names=["input"],
                          output_names=["output"], dynamic_axes=dynamic)


def onnx_audio(dst: Path, normalise: bool = False, seed: int = 0) -> Path:
    """``dst/model.onnx``: :class:`_ConvAudio` exported, with ``config.json`` (conv_kernel, conv_stride) and
    ``preprocessor_config.json`` beside it; returns the .onnx path."""
    torch.manual_seed(seed)
    dst.mkdir(parents=True, exist_ok=True)
    _export(_ConvAudio(), torch.zeros(1, 16000), dst / "model.onnx", {"input": {1: "n"}, "output": {1: "f"}})
    (dst / "config.json").write_text(json.dumps({k: list(CONV[k]) for k in ("conv_kernel", "conv_stride")}))
    (dst / "preprocessor_config.json").write_text(json.dumps({"sampling_rate": 16000, "do_normalize": normalise}))
    return dst / "model.onnx"


def onnx_image(dst: Path, seed: int = 0) -> Path:
    """``dst/model.onnx``: :class:`_PatchImage` exported, with a ``preprocessor_config.json`` (32 px)."""
    torch.manual_seed(seed)
    dst.mkdir(parents=True, exist_ok=True)
    _export(_PatchImage(), torch.zeros(2, 3, 32, 32), dst / "model.onnx", {"input": {0: "b"}, "output": {0: "b"}})
    processor_config(dst, 32)
    return dst / "model.onnx"
