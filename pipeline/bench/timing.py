"""The benchmarks' one timing loop: calls of a function per second after a warm-up, the device synchronised around
the timed region (STYLE.md 17), so queued GPU work is inside the clock."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch


def sync(device: torch.device | None) -> None:
    """Wait for the device's queued work (CUDA only; nothing on the CPU)."""
    if device is not None and device.type == "cuda":
        torch.cuda.synchronize(device)


def calls_per_s(
    call: Callable[[], Any], device: torch.device | None = None, min_seconds: float = 1.0, min_calls: int = 3,
    warmup: int = 1, sync_every: int | None = None,
) -> float:
    """Calls of ``call`` per second: ``warmup`` untimed calls, then at least ``min_calls`` calls and
    ``min_seconds`` seconds. With ``sync_every`` the device is synchronised every that many calls (a bounded queue)
    and the stopping rule is checked only there; the clock stops after a final synchronisation."""
    for _ in range(warmup):
        call()
    sync(device)
    n, t0 = 0, time.perf_counter()
    while True:
        call()
        n += 1
        if sync_every is not None:
            if n % sync_every:
                continue
            sync(device)
        if n >= min_calls and time.perf_counter() - t0 >= min_seconds:
            break
    sync(device)
    return n / (time.perf_counter() - t0)
