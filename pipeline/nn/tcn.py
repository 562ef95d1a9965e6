"""Temporal convolutional network (paper, section 3.4): dilated 1-D convolutions, dilation doubling per level,
residual connections. Non-causal: the whole window is available offline, so each output frame sees the same number
of frames before and after it (Aff-Wild2 raters lag the signal, so the future helps)."""

from __future__ import annotations

import torch
from torch import nn


class TemporalBlock(nn.Module):
    """Two dilated convolutions (each conv, ReLU, dropout) plus a residual (1x1 conv when channels change)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, dilation: int, dropout: float) -> None:
        super().__init__()
        total = (kernel - 1) * dilation  # frames of context one conv adds; split evenly around the frame
        self.pad = (total // 2, total - total // 2)
        self.conv1 = nn.Conv1d(c_in, c_out, kernel, dilation=dilation)
        self.conv2 = nn.Conv1d(c_out, c_out, kernel, dilation=dilation)
        self.drop = nn.Dropout(dropout)
        self.act = nn.ReLU()
        self.residual = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, C_in, T) -> (B, C_out, T)."""
        y = self.drop(self.act(self.conv1(nn.functional.pad(x, self.pad))))  # pad keeps T
        y = self.drop(self.act(self.conv2(nn.functional.pad(y, self.pad))))
        return self.act(y + self.residual(x))


class TCN(nn.Module):
    """``levels`` temporal blocks with dilation 1, 2, 4, ...; receptive field ``1 + 2 (kernel - 1)(2^levels - 1)``."""

    def __init__(self, c_in: int, channels: int, levels: int, kernel: int, dropout: float) -> None:
        super().__init__()
        self.blocks = nn.Sequential(
            *(TemporalBlock(c_in if i == 0 else channels, channels, kernel, 2**i, dropout) for i in range(levels))
        )
        self.out_dim = channels
        self.receptive_field = 1 + 2 * (kernel - 1) * (2**levels - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, C_in) -> (B, T, channels)."""
        y = self.blocks(x.transpose(1, 2))  # (B, T, C) -> (B, C, T) for Conv1d
        return y.transpose(1, 2)  # (B, C, T) -> (B, T, C)
