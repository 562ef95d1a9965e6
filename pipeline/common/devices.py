"""The one place that turns a ``--device`` option into a ``torch.device``, and the mixed-precision choice.

On a machine with several GPUs, each process that asks for ``auto`` or ``cuda:auto`` claims a GPU no other process
of this pipeline holds: an exclusive lock on ``<lock dir>/gpu<k>.lock`` (``$VA_GPU_LOCK_DIR``, default the system
temporary folder), held until the process ends, so the ``train@<k>`` processes of a shell loop or the workers of
``dvc queue start -j N`` spread over the GPUs. A process that finds every GPU claimed waits for one.
"""

from __future__ import annotations

import fcntl
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import IO

import torch

from pipeline.common.errors import PipelineError

_HELD: list[IO[str]] = []  # lock files this process holds (closed, i.e. released, when it exits)
WAIT_S = 5.0  # poll interval while every GPU is claimed


def lock_dir() -> Path:
    return Path(os.environ.get("VA_GPU_LOCK_DIR") or tempfile.gettempdir())


def claim_gpu(n_gpus: int, wait: bool = True) -> int:
    """Index of a GPU no other process of this pipeline holds, claimed for this process's lifetime. The same
    process asking again gets the GPU it holds."""
    if _HELD:
        return int(Path(_HELD[0].name).stem[3:])
    d = lock_dir()
    d.mkdir(parents=True, exist_ok=True)
    told = False
    while True:
        for k in range(n_gpus):
            f = open(d / f"gpu{k}.lock", "a")
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.close()
                continue
            _HELD.append(f)
            return k
        if not wait:
            raise PipelineError(f"all {n_gpus} GPUs are claimed by other processes (locks in {d})")
        if not told:
            print(f"all {n_gpus} GPUs are claimed by other processes (locks in {d}); waiting", file=sys.stderr, flush=True)
            told = True
        time.sleep(WAIT_S)


def resolve_device(device: str) -> torch.device:
    """``auto`` -> a claimed CUDA device when available (see the module docstring), else CPU; ``cuda:auto`` -> a
    claimed CUDA device; anything else as torch spells it (``cpu``, ``cuda:1``). Asking for CUDA on a machine
    without it is an error, not a silent fallback."""
    if device in ("auto", "cuda:auto"):
        if not torch.cuda.is_available():
            if device == "auto":
                return torch.device("cpu")
            raise PipelineError(f"--device {device}: CUDA is not available on this machine")
        n = torch.cuda.device_count()
        return torch.device("cuda", claim_gpu(n) if n > 1 else 0)
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise PipelineError(f"--device {device}: not a device (auto, cuda:auto, cpu, cuda, cuda:1, ...)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise PipelineError(f"--device {device}: CUDA is not available on this machine")
    return dev


def amp_dtype(device: torch.device) -> torch.dtype | None:
    """Mixed precision on GPU (bf16 where supported, else fp16 with a GradScaler); full precision on CPU."""
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
