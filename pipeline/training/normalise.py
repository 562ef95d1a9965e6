"""Per-feature-element normalisation with statistics of the training folds only.

``x_norm = (x - mean) / std`` per element of a modality's row (shape ``row_shape``: (512, 3, 3) for IResNet maps,
(128,) for VGGish, (39,) for MFCC). The statistics count only rows backed by real input (the store's mask: a face
crop was read, audio exists at that frame time), so filled rows do not pull the mean towards a repeated frame.

They are computed in one streaming pass over bounded chunks of rows (:data:`CHUNK_ROWS`, 150 MB of IResNet rows
in float64): per chunk the float64 sum and sum of squares on the rows' device, added up, then ``mean = s1 / n`` and
``var = s2 / n - mean ** 2``. Float16 and float32 features squared in float64 lose nothing, so the result equals the
two-pass one (mean first, then mean squared deviation) to float64 rounding, without holding a trial, let alone a
fold, in float64.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

import torch

STD_FLOOR = 1e-4  # a feature element constant over the training frames is centred, not blown up
CHUNK_ROWS = 4096  # rows per statistics chunk: 4096 IResNet rows are 151 MB in float64


@dataclass
class RunningMoments:
    """Count, sum and sum of squares of a stream of rows, accumulated chunk by chunk in float64."""

    n: int = 0
    s1: torch.Tensor | None = None  # row_shape, float64, on the CPU
    s2: torch.Tensor | None = None

    def add(self, x: torch.Tensor) -> None:
        """Add a chunk ``x`` (k, *row_shape) of any float dtype, on any device."""
        if x.shape[0] == 0:
            return
        x64 = x.double()
        s1, s2 = x64.sum(0).cpu(), (x64 * x64).sum(0).cpu()
        self.s1 = s1 if self.s1 is None else self.s1 + s1
        self.s2 = s2 if self.s2 is None else self.s2 + s2
        self.n += int(x.shape[0])

    def mean_std(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """float32 mean and population std (floored at :data:`STD_FLOOR`); zeros and ones without any row."""
        if self.s1 is None or self.s2 is None:
            return torch.zeros(shape), torch.ones(shape)
        mean = self.s1 / self.n
        std = torch.sqrt(torch.clamp(self.s2 / self.n - mean * mean, min=0.0))
        return mean.float(), torch.clamp(std.float(), min=STD_FLOOR)


@dataclass
class Normaliser:
    """Per-feature-element mean and std (each of shape row_shape) per modality, float32 on the CPU; copies on
    other devices are made once and kept."""

    mean: dict[str, torch.Tensor]
    std: dict[str, torch.Tensor]
    _on: dict[tuple[str, str], tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict, repr=False)

    @classmethod
    def fit(cls, chunks: Mapping[str, Iterable[torch.Tensor]], row_shapes: Mapping[str, tuple[int, ...]]) -> "Normaliser":
        """Statistics from ``chunks[m]``: an iterable of (k, *row_shape) tensors holding only real rows."""
        mean, std = {}, {}
        for m, it in chunks.items():
            acc = RunningMoments()
            for x in it:
                acc.add(x)
            mean[m], std[m] = acc.mean_std(tuple(row_shapes[m]))
        return cls(mean, std)

    def stats_on(self, m: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        key = (m, str(device))
        if key not in self._on:
            self._on[key] = (self.mean[m].to(device), self.std[m].to(device))
        return self._on[key]

    def apply(self, m: str, x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
        """(..., *row_shape) raw rows of modality ``m`` (any float dtype) -> float32 normalised rows on the same
        device, in ``out`` when given, else a new tensor: converted to float32 (exact for float16), then
        ``(x - mean) / std`` in place."""
        mean, std = self.stats_on(m, x.device)
        if out is None:
            return torch.sub(x, mean).div_(std)
        return out.copy_(x).sub_(mean).div_(std)

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Tensors for a checkpoint (loadable with ``torch.load(weights_only=True)``)."""
        return {m: {"mean": self.mean[m].clone(), "std": self.std[m].clone()} for m in self.mean}

    @classmethod
    def from_state(cls, state: Mapping[str, Mapping[str, torch.Tensor]]) -> "Normaliser":
        return cls({m: v["mean"].float() for m, v in state.items()}, {m: v["std"].float() for m, v in state.items()})

