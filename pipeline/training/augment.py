"""Batched face augmentation on the device, for the ``backbone`` stage: horizontal flip, a small affine warp and
colour jitter, drawn per image from a generator seeded per step (so a resumed run draws what an uninterrupted one
does)."""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.extractors.iresnet import CONTRACT

# augmentation ranges (standard for face crops; no hue jitter: the demo's valence shows in skin tint)
FLIP_P = 0.5
ROTATE_DEG = 10.0
SCALE = (0.9, 1.1)
SHIFT = 0.06  # fraction of the side
JITTER = 0.2  # brightness, contrast and saturation factors in [1 - JITTER, 1 + JITTER]


def step_generator(*key: int) -> torch.Generator:
    """A CPU generator seeded by ``key`` (seed, epoch, step): the draws do not depend on what ran before."""
    return torch.Generator().manual_seed(int(np.random.SeedSequence(list(key)).generate_state(1)[0]))


def augment(frames: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """(B, S, S, 3) uint8 RGB on any device -> (B, 3, S, S) float, augmented and normalised as
    :data:`~pipeline.extractors.iresnet.CONTRACT`. Per image: horizontal flip, rotation, scale and shift in one
    bilinear warp (black beyond the crop, as alignment pads), then brightness, contrast and saturation."""
    B, dev = frames.shape[0], frames.device
    x = frames.permute(0, 3, 1, 2).float() * CONTRACT.scale  # (B, S, S, 3) -> (B, 3, S, S) in [0, 1]

    def uniform(lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(B, generator=gen)

    flip = torch.where(torch.rand(B, generator=gen) < FLIP_P, -1.0, 1.0)
    angle = uniform(-ROTATE_DEG, ROTATE_DEG) * math.pi / 180
    scale = uniform(*SCALE)
    shift = uniform(-SHIFT, SHIFT), uniform(-SHIFT, SHIFT)
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    # theta maps output to input coordinates in [-1, 1]; the flip mirrors the output's x axis
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, 2 * shift[0]], 1), torch.stack([sin * flip, cos, 2 * shift[1]], 1)], 1
    ).to(dev)  # (B, 2, 3)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)

    factors = torch.stack([uniform(1 - JITTER, 1 + JITTER) for _ in range(3)], 1).to(dev)  # (B, 3)
    b, c, s = (factors[:, i].view(B, 1, 1, 1) for i in range(3))
    gray = (0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3])  # (B, 1, S, S) luma
    x = x * b
    x = (x - gray.mean(dim=(2, 3), keepdim=True) * b) * c + gray.mean(dim=(2, 3), keepdim=True) * b
    gray = 0.299 * x[:, 0:1] + 0.587 * x[:, 1:2] + 0.114 * x[:, 2:3]
    x = (gray + (x - gray) * s).clamp(0.0, 1.0)
    return (x - CONTRACT.mean) / CONTRACT.std
