"""Job scripts and `sbatch` calls (pipeline/cluster/slurm.py), with a stand-in `sbatch`; no Slurm here (the real
one runs in tests/e2e/test_cluster_slurm.py)."""

from __future__ import annotations

import os
import stat
import subprocess
from pathlib import Path

import pytest

from pipeline.cluster import ClusterError
from pipeline.cluster.graph import Step
from pipeline.cluster.slurm import Resources, SlurmExecutor, job_script, sbatch_options, wants_gpu


def test_job_script_asks_for_gpus_only_for_stages_that_use_one(tmp_path):
    res = Resources(partition="gpu", gpus=2, cpus=4, mem="16G", time="2:00:00", extra=("--account=lab",))
    train = Step("train@0", "train@0", ("python -m pipeline train --fold 0 --resume",), ".", ())
    split = Step("split", "split", ("python -m pipeline split --out data/prepared/folds.json",), ".", ())
    assert wants_gpu(train) and not wants_gpu(split)
    opts = sbatch_options(train, tmp_path / "run", tmp_path, res)
    assert opts == ["--job-name=va:train@0", f"--output={tmp_path / 'run' / 'train@0.log'}", f"--chdir={tmp_path}",
                    "--partition=gpu", "--gres=gpu:2", "--cpus-per-task=4", "--mem=16G", "--time=2:00:00", "--account=lab"]
    assert "--gres=gpu:2" not in sbatch_options(split, tmp_path / "run", tmp_path, res)
    assert not any("gres" in o for o in sbatch_options(train, tmp_path, tmp_path, Resources()))
    script = job_script(train, tmp_path / "run", tmp_path, res, "/venv/bin/python", tmp_path)
    lines = script.splitlines()
    assert lines[0] == "#!/bin/bash" and lines[1] == "#SBATCH --job-name=va:train@0"
    assert lines[-1] == f"exec /venv/bin/python -m pipeline cluster job train@0 --run {tmp_path / 'run'}"
    assert subprocess.run(["bash", "-n"], input=script, text=True).returncode == 0  # valid bash


def fake_sbatch(folder: Path) -> Path:
    """An `sbatch` that records its arguments and answers like `sbatch --parsable` (job ids 101, 102 ...)."""
    folder.mkdir()
    exe = folder / "sbatch"
    exe.write_text('#!/bin/bash\necho "$@" >> "$(dirname "$0")/calls"\n'
                   'n=$(wc -l < "$(dirname "$0")/calls")\necho "$((100 + n));cluster"\n')
    exe.chmod(exe.stat().st_mode | stat.S_IEXEC)
    return folder


def test_sbatch_gets_the_dependencies_as_afterok(tmp_path, monkeypatch):
    bin_dir = fake_sbatch(tmp_path / "bin")
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    ex = SlurmExecutor()
    a = ex.submit(tmp_path / "a.sh", tmp_path / "a.log", [])
    b = ex.submit(tmp_path / "b.sh", tmp_path / "b.log", [a, "7"])
    assert (a, b) == ("101", "102")
    calls = (bin_dir / "calls").read_text().splitlines()
    assert calls == [f"--parsable {tmp_path / 'a.sh'}",
                     f"--parsable --dependency=afterok:101:7 --kill-on-invalid-dep=yes {tmp_path / 'b.sh'}"]


def test_missing_sbatch_is_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ClusterError, match=r"^sbatch: command not found \(run on a Slurm login node, or use --local\)$"):
        SlurmExecutor().submit(tmp_path / "a.sh", tmp_path / "a.log", [])
