"""Device choice: auto falls back to the CPU, CUDA asked for on a machine without it is an error, and processes
claim distinct GPUs through lock files (simulated GPU count: the claim itself needs no GPU)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest
import torch

from pipeline.common import devices
from pipeline.common.errors import PipelineError


def test_auto_and_explicit_devices():
    if not torch.cuda.is_available():
        assert devices.resolve_device("auto") == torch.device("cpu")
        with pytest.raises(PipelineError, match="CUDA is not available"):
            devices.resolve_device("cuda:auto")
    assert devices.resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(PipelineError, match="not a device"):
        devices.resolve_device("gpu-please")


HOLDER = textwrap.dedent(
    """
    import sys, time
    from pipeline.common import devices
    print(devices.claim_gpu(int(sys.argv[1]), wait=False), flush=True)
    time.sleep(30)
    """
)


def test_processes_claim_distinct_gpus(tmp_path, monkeypatch):
    env = {"VA_GPU_LOCK_DIR": str(tmp_path)}
    import os

    env = {**os.environ, **env}
    holders = []
    try:
        for _ in range(2):  # two processes, each holding a GPU of 3
            p = subprocess.Popen([sys.executable, "-c", HOLDER, "3"], stdout=subprocess.PIPE, text=True, env=env)
            holders.append(p)
            assert p.stdout is not None
        claimed = [int(p.stdout.readline()) for p in holders]  # type: ignore[union-attr]
        assert sorted(claimed) == [0, 1]
        monkeypatch.setenv("VA_GPU_LOCK_DIR", str(tmp_path))
        monkeypatch.setattr(devices, "_HELD", [])
        assert devices.claim_gpu(3, wait=False) == 2  # this process gets the one left
        assert devices.claim_gpu(3, wait=False) == 2  # and keeps it when asking again
        monkeypatch.setattr(devices, "_HELD", [])
        with pytest.raises(PipelineError, match="all 3 GPUs are claimed"):
            devices.claim_gpu(3, wait=False)  # flock is per open file: a second claim sees all three taken
    finally:
        for p in holders:
            p.kill()
            p.wait()
    # a holder that died released its GPU
    monkeypatch.setattr(devices, "_HELD", [])
    assert devices.claim_gpu(3, wait=False) in (0, 1)
