"""The one place that turns a ``--device`` option into a ``torch.device``."""

from __future__ import annotations

import torch

from pipeline.errors import PipelineError


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; anything else as torch spells it (``cpu``, ``cuda:1``).
    Asking for CUDA on a machine without it is an error, not a silent fallback."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"--device {device}: CUDA is not available on this machine")
    return dev


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPU (bf16 where supported, else fp16 with a GradScaler); full precision on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
