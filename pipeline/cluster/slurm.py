"""Steps as Slurm batch jobs: one script per step, ``sbatch --dependency=afterok:...``, states from ``squeue``.

The script is a plain batch script: ``#SBATCH`` lines for the resources, then ``python -m pipeline cluster job``
(:mod:`pipeline.cluster.job`). The same script runs locally (:mod:`pipeline.cluster.local`), where bash reads the
``#SBATCH`` lines as comments. Only a shared filesystem is assumed: the repository, its DVC cache and the Python
environment are where the login node has them, and a job inherits the submitting shell's environment.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.cluster import ClusterError
from pipeline.cluster.graph import Step
from pipeline.cluster.job import log_path

# pipeline commands that take --device: only their jobs ask for GPUs (scan, split or evaluate never wait for one)
GPU_COMMANDS = ("backbone", "extract", "train", "predict")
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "STOPPED")


@dataclass(frozen=True)
class Resources:
    """What each job asks Slurm for; None leaves the cluster's default."""

    partition: str | None = None
    gpus: int = 0  # per job of a GPU stage (GPU_COMMANDS), as --gres=gpu:N
    cpus: int | None = None  # --cpus-per-task
    mem: str | None = None  # --mem, e.g. 16G
    time: str | None = None  # --time, e.g. 4:00:00
    extra: tuple[str, ...] = ()  # further sbatch options, verbatim (--account=..., --qos=...)


def wants_gpu(step: Step) -> bool:
    """Whether ``step`` runs a pipeline command that uses a GPU when it has one."""
    pattern = rf"\bpython3?\s+-m\s+pipeline\s+({'|'.join(GPU_COMMANDS)})\b"
    return any(re.search(pattern, cmd) for cmd in step.cmds)


def sbatch_options(step: Step, run_dir: Path, root: Path, res: Resources) -> list[str]:
    """The ``#SBATCH`` options of ``step``'s job."""
    opts = [f"--job-name=va:{step.name}", f"--output={log_path(run_dir, step.name)}", f"--chdir={root}"]
    if res.partition:
        opts.append(f"--partition={res.partition}")
    if res.gpus and wants_gpu(step):
        opts.append(f"--gres=gpu:{res.gpus}")
    if res.cpus:
        opts.append(f"--cpus-per-task={res.cpus}")
    if res.mem:
        opts.append(f"--mem={res.mem}")
    if res.time:
        opts.append(f"--time={res.time}")
    return opts + list(res.extra)


def job_script(step: Step, run_dir: Path, root: Path, res: Resources, python: str, package: Path) -> str:
    """The batch script of ``step``: its resources, then the job runner for this step of this run, imported from
    ``package`` (the folder holding the ``pipeline`` package that planned it; in the repository, the root)."""
    lines = ["#!/bin/bash", *(f"#SBATCH {o}" for o in sbatch_options(step, run_dir, root, res))]
    lines += [
        f"# step {step.name} of `python -m pipeline cluster repro`: checks that stage {step.stage} is still out of",
        "# date, runs its command and records the stage with `dvc commit` when the command succeeded",
        f"cd {shlex.quote(os.fspath(package))}",
        f"exec {shlex.quote(python)} -m pipeline cluster job {shlex.quote(step.name)} "
        f"--run {shlex.quote(os.fspath(run_dir))}",
    ]
    return "\n".join(lines) + "\n"


def _slurm(args: list[str], check: bool = True) -> subprocess.CompletedProcess:
    try:
        p = subprocess.run(args, capture_output=True, text=True, check=False)
    except FileNotFoundError:
        raise ClusterError(f"{args[0]}: command not found (run on a Slurm login node, or use --local)") from None
    if check and p.returncode:
        raise ClusterError(f"`{shlex.join(args)}` failed: {(p.stderr or p.stdout).strip()}")
    return p


class SlurmExecutor:
    """Submits job scripts with ``sbatch`` and reads their states with ``squeue``."""

    name = "slurm"

    def submit(self, script: Path, log: Path, after: Sequence[str]) -> str:
        """Submit ``script`` (its log is named in it) to start once every job in ``after`` has completed; Slurm
        cancels it, never starting it, when one of them failed. Returns the job id."""
        args = ["sbatch", "--parsable"]
        if after:
            args += [f"--dependency=afterok:{':'.join(after)}", "--kill-on-invalid-dep=yes"]
        return _slurm([*args, os.fspath(script)]).stdout.strip().split(";")[0]

    def states(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Job id -> (state, reason) as ``squeue`` has them (PENDING, RUNNING, COMPLETED, FAILED, CANCELLED,
        TIMEOUT ...); a job Slurm has already forgotten is missing."""
        if not ids:
            return {}
        args = ["squeue", "--noheader", "--states=all", "--format=%i|%T|%r", f"--jobs={','.join(ids)}"]
        p = _slurm(args, check=False)
        if p.returncode and "Invalid job id" not in p.stderr:
            raise ClusterError(f"squeue failed: {p.stderr.strip()}")
        found = {}
        for line in p.stdout.splitlines():
            job, state, reason = (line.split("|") + ["", ""])[:3]
            found[job.strip()] = (state.strip(), reason.strip())
        return found

    def cancel(self, ids: Sequence[str]) -> None:
        if ids:
            _slurm(["scancel", *ids], check=False)
