"""IResNet-50 face features (paper 3.3: the visual backbone, ArcFace / AffectNet-fine-tuned).

The network is insightface's ``recognition/arcface_torch/backbones/iresnet.py`` with identical parameter names, so a
user's ``backbone.pth`` loads with ``strict=True``. Input contract (:data:`CONTRACT`): RGB uint8 crops at
``frames.size`` (the paper: 48 px), scaled to [-1, 1] by ``(x / 255 - 0.5) / 0.5`` as arcface_torch does.

Outputs:
- map (default): the output of ``bn2``, (512, h, w) with ``h = w = ceil(size / 16)`` (3x3 at 48 px, 7x7 at 112 px):
  LA-SE (paper 3.3) attends over these positions. ``fc`` and ``features`` stay in the module so the checkpoint
  loads strictly, but they are unused: ``fc`` expects a 7x7 map (112 px input) and would not fit a 48 px one.
- ``pooled: true``: the global average of that map over (h, w), a 512-d vector. (Not ArcFace's ``fc`` embedding,
  which exists only for 112 px input; for that, use the ONNX path.)
- an insightface ONNX recognition model (``weights: .../w600k_r50.onnx``): its 512-d embedding, computed by
  onnxruntime at the model's own input size (112 px; crops are resized bilinearly).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.extractors.weights import SEED, WeightsError

LAYERS_50 = (3, 4, 14, 3)
CHANNELS = 512


@dataclass(frozen=True)
class InputContract:
    color: str = "RGB"
    dtype: str = "uint8"
    layout: str = "(B, S, S, 3)"  # as stored in frames.h5
    scale: float = 1 / 255.0
    mean: float = 0.5  # (x / 255 - mean) / std  ->  [-1, 1]
    std: float = 0.5
    onnx_size: int = 112  # insightface recognition models

    @property
    def formula(self) -> str:
        """The normalisation as written in store attributes and the backbone's meta.json: ``(x / 255 - 0.5) / 0.5``."""
        return f"(x / {round(1 / self.scale)} - {self.mean:g}) / {self.std:g}"


CONTRACT = InputContract()


def map_side(size: int) -> int:
    """Side of the last feature map for a ``size`` x ``size`` input: conv1 keeps the size, each of the four stages
    halves it (3x3 conv, stride 2, padding 1 -> ceil)."""
    for _ in range(4):
        size = math.ceil(size / 2)
    return size


# --------------------------------------------------------------------- the arcface_torch network, names unchanged
def conv3x3(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_planes: int, out_planes: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_planes, out_planes, kernel_size=1, stride=stride, bias=False)


class IBasicBlock(nn.Module):
    """BN, conv3x3, BN, PReLU, conv3x3 (stride), BN, plus the (downsampled) identity."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None) -> None:
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C_in, H, W) -> (B, planes, H / stride, W / stride)"""
        identity = x if self.downsample is None else self.downsample(x)
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + identity


class IResNet(nn.Module):
    """arcface_torch's IResNet: ``conv1, bn1, prelu, layer1..4, bn2, dropout, fc, features``."""

    fc_scale = 7 * 7  # fc is sized for the 7x7 map of a 112 px input, as in the published checkpoints

    def __init__(self, layers: tuple[int, int, int, int] = LAYERS_50, dropout: float = 0.0, num_features: int = 512) -> None:
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, self.inplanes, kernel_size=3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes, eps=1e-05)
        self.prelu = nn.PReLU(self.inplanes)
        self.layer1 = self._make_layer(64, layers[0], stride=2)
        self.layer2 = self._make_layer(128, layers[1], stride=2)
        self.layer3 = self._make_layer(256, layers[2], stride=2)
        self.layer4 = self._make_layer(512, layers[3], stride=2)
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        self.fc = nn.Linear(512 * self.fc_scale, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False

    def _make_layer(self, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes:
            downsample = nn.Sequential(conv1x1(self.inplanes, planes, stride), nn.BatchNorm2d(planes, eps=1e-05))
        layers = [IBasicBlock(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward_map(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) normalised RGB -> (B, 512, h, w), the map after ``bn2``."""
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.bn2(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, 3, 112, 112) -> (B, 512): arcface_torch's embedding (112 px input only)."""
        x = self.dropout(torch.flatten(self.forward_map(x), 1))
        return self.features(self.fc(x))


def iresnet50() -> IResNet:
    return IResNet(LAYERS_50)


def random_init(model: IResNet) -> IResNet:
    """Deterministic random weights for the demo (seed :data:`SEED`). Convolutions get half the He-normal standard
    deviation, which keeps eval-mode activations O(1) through the 24 residual additions (std ~0.3 at the output):
    arcface_torch's own N(0, 0.1) init, meant for training with batch statistics, overflows float16 in eval mode."""
    torch.manual_seed(SEED)
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            nn.init.normal_(m.weight, 0.0, 0.5 * math.sqrt(2.0 / fan_in))
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 1.0 / math.sqrt(m.in_features))
            nn.init.zeros_(m.bias)
    return model


# ------------------------------------------------------------------------------------------- the extractor
def preprocess(frames: torch.Tensor) -> torch.Tensor:
    """(B, S, S, 3) uint8 RGB -> (B, 3, S, S) float in [-1, 1] (:data:`CONTRACT`), on the frames' device."""
    x = frames.permute(0, 3, 1, 2).float()  # (B, S, S, 3) -> (B, 3, S, S) for Conv2d
    return (x * CONTRACT.scale - CONTRACT.mean) / CONTRACT.std


class IResNetFeatures(nn.Module):
    """uint8 crops -> per-frame IResNet-50 features: (B, S, S, 3) -> (B, 512, h, w), or (B, 512) when ``pooled``."""

    def __init__(self, net: IResNet, pooled: bool) -> None:
        super().__init__()
        self.net = net
        self.pooled = pooled

    def forward(self, frames: torch.Tensor) -> torch.Tensor:
        # channels-last is faster on CPU (oneDNN, measured 1.35x) as well as on GPU tensor cores
        x = preprocess(frames).contiguous(memory_format=torch.channels_last)
        y = self.net.forward_map(x)  # (B, 512, h, w)
        return y.mean(dim=(2, 3)) if self.pooled else y  # global average pooling: (B, 512, h, w) -> (B, 512)


def row_shape(size: int, pooled: bool) -> tuple[int, ...]:
    s = map_side(size)
    return (CHANNELS,) if pooled else (CHANNELS, s, s)


class OnnxEmbedder:
    """An insightface ONNX recognition model (e.g. ``w600k_r50.onnx``) via ``insightface.model_zoo``:
    (B, S, S, 3) uint8 RGB -> (B, 512) float32 embeddings, crops resized to the model's input (112 px)."""

    def __init__(self, path: str | Path, device: torch.device) -> None:
        path = Path(path)
        try:
            from insightface.model_zoo import get_model

            providers = ["CUDAExecutionProvider", "CPUExecutionProvider"] if device.type == "cuda" else ["CPUExecutionProvider"]
            model = get_model(str(path), providers=providers)
        except Exception as e:  # noqa: BLE001 - onnx/onnxruntime raise many types for a bad file
            raise WeightsError(f"{path}: cannot load as an insightface ONNX model: {type(e).__name__}: {e}") from None
        if model is None or getattr(model, "taskname", None) != "recognition" or not hasattr(model, "forward"):
            raise WeightsError(
                f"{path}: not an insightface recognition model (got {getattr(model, 'taskname', type(model).__name__)!r})"
            )
        self.model = model
        self.size = int(model.input_size[0])
        self.dim = int(model.output_shape[-1]) if isinstance(model.output_shape[-1], int) else CHANNELS

    def __call__(self, frames: torch.Tensor) -> torch.Tensor:
        x = frames.permute(0, 3, 1, 2).float().cpu()  # (B, S, S, 3) -> (B, 3, S, S)
        if x.shape[-1] != self.size:
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        # ArcFaceONNX.forward subtracts its own mean / divides by its std from 0..255 RGB, as its get_feat does
        return torch.from_numpy(np.asarray(self.model.forward(x.numpy()), dtype=np.float32))
