"""LA-SE: local (spatial) attention plus squeeze-and-excitation over the visual feature map (paper, section 3.3)."""

from __future__ import annotations

import torch
from torch import nn


class LANet(nn.Module):
    """Local attention: two 1x1 convolutions down to one channel and a sigmoid give a spatial weight map that
    scales every channel of the input map."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.net = nn.Sequential(
            nn.Conv2d(channels, hidden, kernel_size=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(hidden, 1, kernel_size=1),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W), ``x * attention`` with attention (N, 1, H, W) broadcast over C."""
        return x * self.net(x)


class SE(nn.Module):
    """Squeeze-and-excitation: global average pool, FC, ReLU, FC, sigmoid, channel scaling."""

    def __init__(self, channels: int, reduction: int = 16) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.fc = nn.Sequential(
            nn.Linear(channels, hidden),
            nn.ReLU(inplace=True),
            nn.Linear(hidden, channels),
            nn.Sigmoid(),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, C, H, W) -> (N, C, H, W), each channel scaled by its excitation in (0, 1)."""
        s = self.fc(x.mean(dim=(2, 3)))  # squeeze: (N, C, H, W) -> (N, C)
        return x * s[:, :, None, None]  # (N, C) -> (N, C, 1, 1) to broadcast over space


class MapPool(nn.Module):
    """Per-frame visual branch before the temporal model: optional LA-SE, then global average pooling.

    With ``attention=False`` it is plain average pooling (the ablation's "no LA-SE" rows). A store of pooled
    512-d vectors (``features.iresnet.pooled``) has no space to attend over and passes through unchanged.
    """

    def __init__(self, channels: int, attention: bool = True, reduction: int = 16) -> None:
        super().__init__()
        self.attention = nn.Sequential(LANet(channels, reduction), SE(channels, reduction)) if attention else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C, H, W) maps or (B, T, C) vectors -> (B, T, C)."""
        if x.dim() == 3:
            return x
        b, t, c, h, w = x.shape
        y = x.reshape(b * t, c, h, w)  # (B, T, C, H, W) -> (B*T, C, H, W): frames are independent here
        if self.attention is not None:
            y = self.attention(y)
        y = y.mean(dim=(2, 3))  # (B*T, C, H, W) -> (B*T, C)
        return y.reshape(b, t, c)  # (B*T, C) -> (B, T, C)
