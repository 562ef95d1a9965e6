"""The fusion model (paper, sections 3.3-3.6): per-modality branches, concatenation, Transformer encoder, head.

Every part can be switched off (``model.lase``, ``model.tcn``, ``model.transformer``), giving the eight rows of the
paper's Table 2; all off is its baseline: pooled features concatenated and fed to the head.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
from torch import nn

from pipeline.common.config import ModelConfig
from pipeline.nn.lase import MapPool
from pipeline.nn.tcn import TCN


class SinusoidalPositions(nn.Module):
    """Fixed sine/cosine positions (Vaswani et al.), any length."""

    def __init__(self, d_model: int) -> None:
        super().__init__()
        self.d_model = d_model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) -> (B, T, D) with positions added."""
        t, d = x.shape[1], self.d_model
        pos = torch.arange(t, device=x.device, dtype=torch.float32)[:, None]  # (T, 1)
        freq = torch.exp(torch.arange(0, d, 2, device=x.device, dtype=torch.float32) * (-math.log(10000.0) / d))
        pe = torch.zeros(t, d, device=x.device)
        pe[:, 0::2] = torch.sin(pos * freq)
        pe[:, 1::2] = torch.cos(pos * freq[: d // 2])
        return x + pe.to(x.dtype)[None]  # (T, D) -> (1, T, D), broadcast over the batch


class LearnedPositions(nn.Module):
    """One learned vector per position, up to ``max_len`` frames (the training window)."""

    def __init__(self, d_model: int, max_len: int) -> None:
        super().__init__()
        self.table = nn.Parameter(torch.randn(max_len, d_model) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (B, T, D) with T <= max_len -> (B, T, D)."""
        if x.shape[1] > self.table.shape[0]:
            raise ValueError(f"sequence of {x.shape[1]} frames exceeds the {self.table.shape[0]} learned positions")
        return x + self.table[: x.shape[1]][None]  # (T, D) -> (1, T, D)


class Head(nn.Module):
    """FC, BatchNorm, ReLU, FC, tanh -> valence, arousal in (-1, 1) (paper 3.6). The ReLU is ours: without a
    nonlinearity FC-BN-FC collapses into one affine map at inference. BatchNorm statistics come from real frames
    only, so padding does not shift them."""

    def __init__(self, d_in: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(d_in, hidden)
        self.bn = nn.BatchNorm1d(hidden)
        self.fc2 = nn.Linear(hidden, 2)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: (B, T, D), mask: (B, T) bool (True = real frame) -> (B, T, 2)."""
        h = self.fc1(x)  # (B, T, hidden)
        if mask is None:
            h = self.bn(h.reshape(-1, h.shape[-1])).reshape(h.shape)  # (B, T, H) -> (B*T, H) for BatchNorm1d
        else:
            flat = h.reshape(-1, h.shape[-1])  # (B, T, H) -> (B*T, H)
            keep = mask.reshape(-1)  # (B, T) -> (B*T,)
            out = torch.zeros_like(flat)
            out[keep] = self.bn(flat[keep]).to(out.dtype)  # padded rows stay 0; fc2 + tanh still give finite output
            h = out.reshape(h.shape)  # (B*T, H) -> (B, T, H)
        return torch.tanh(self.fc2(torch.relu(h)))


class FusionModel(nn.Module):
    """Multimodal valence-arousal model, built from a :class:`~pipeline.common.config.ModelConfig` (``model`` in
    params.yaml; its ``modalities`` and ``zero_missing`` are the data's business and not read here).

    ``row_shapes`` maps each modality (feature store name) to its per-frame row shape: ``(512, h, w)`` for
    IResNet maps, ``(dim,)`` for vectors; the model's inputs are its keys, in that order. The visual maps go through
    LA-SE (or average pooling); each modality through its own TCN when ``cfg.tcn``; the concatenation through a
    Transformer encoder when ``cfg.transformer``. ``max_len``: the longest sequence learned positions cover (the
    training window). Parameter names (``pool.<m>``, ``tcn.<m>``, ``proj``, ``positions``, ``encoder``, ``head``)
    are what checkpoints hold.
    """

    def __init__(self, cfg: ModelConfig, row_shapes: Mapping[str, tuple[int, ...]], max_len: int) -> None:
        super().__init__()
        self.modalities = list(row_shapes)
        self.pool = nn.ModuleDict()
        self.tcn = nn.ModuleDict()
        width = 0
        for name, shape in row_shapes.items():
            channels = int(shape[0])
            self.pool[name] = MapPool(channels, attention=cfg.lase and len(shape) == 3)
            if cfg.tcn:
                self.tcn[name] = TCN(channels, cfg.tcn_channels, cfg.tcn_levels, cfg.tcn_kernel, cfg.tcn_dropout)
                width += cfg.tcn_channels
            else:
                width += channels
        self.concat_dim = width
        if cfg.transformer:
            d = cfg.d_model
            self.proj = nn.Linear(width, d)
            self.positions = LearnedPositions(d, max_len) if cfg.positions == "learned" else SinusoidalPositions(d)
            layer = nn.TransformerEncoderLayer(d, cfg.heads, cfg.ff_dim, cfg.dropout, batch_first=True, norm_first=True)
            self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
            width = d
        else:
            self.encoder = None
        self.head = Head(width, cfg.head_hidden)

    def forward(self, inputs: Mapping[str, torch.Tensor], mask: torch.Tensor | None = None) -> torch.Tensor:
        """inputs: {modality: (B, T, *row_shape)}; mask: (B, T) bool, True for real frames, False for padding.

        Returns (B, T, 2): valence, arousal in (-1, 1).
        """
        parts = []
        for name in self.modalities:
            x = self.pool[name](inputs[name])  # (B, T, *row_shape) -> (B, T, C_m)
            if name in self.tcn:
                x = self.tcn[name](x)  # (B, T, C_m) -> (B, T, tcn_channels)
            parts.append(x)
        x = torch.cat(parts, dim=-1)  # -> (B, T, concat_dim)
        if self.encoder is not None:
            x = self.positions(self.proj(x))  # (B, T, concat_dim) -> (B, T, d_model)
            pad = None if mask is None else ~mask  # key_padding_mask: True = ignore this key
            x = self.encoder(x, src_key_padding_mask=pad)  # (B, T, d_model)
        return self.head(x, mask)  # (B, T, D) -> (B, T, 2)
