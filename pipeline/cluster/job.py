"""What one job runs (``python -m pipeline cluster job STEP --run DIR``), on a cluster node or locally.

1. Check, under DVC's repository lock, that the step's stage is still out of date (its inputs may have come out
   unchanged); if it is, do what ``dvc repro`` does before a run: outputs that are not ``persist`` are removed,
   persistent ones made writable, and a whole-stage step takes its outputs from DVC's run cache when they are there.
2. Run the stage's own commands, as ``dvc repro`` runs them (the user's shell, the stage's working directory,
   ``DVC_ROOT`` and ``DVC_STAGE`` set), without holding the lock, so other jobs run beside it.
3. Only when every command succeeded: ``dvc commit`` of the stage (outputs into the cache, its entry in
   ``dvc.lock``), before the job ends, so the jobs that wait for it (``afterok``) find it recorded. A shard step
   records nothing; its stage's record step does.

The job writes ``<step>.result.json`` beside its log; its exit status is the commands' (0 when nothing had to run).
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

from pipeline.cluster.graph import Step
from pipeline.common.outputs import write_json

PLAN_FILE = "plan.json"
UP_TO_DATE, RESTORED, RAN, FAILED, RUN = "up to date", "restored from the run cache", "ran", "failed", "run"


def file_name(step: str) -> str:
    """A step name as a file name: ``train@0`` stays, ``sub/dvc.yaml:x`` becomes ``sub_dvc.yaml_x``."""
    return re.sub(r"[^A-Za-z0-9@._-]", "_", step)


def log_path(run_dir: Path, step: str) -> Path:
    return run_dir / f"{file_name(step)}.log"


def result_path(run_dir: Path, step: str) -> Path:
    return run_dir / f"{file_name(step)}.result.json"


def script_path(run_dir: Path, step: str) -> Path:
    return run_dir / f"{file_name(step)}.sh"


def write_plan(run_dir: Path, root: Path, steps: Sequence[Step]) -> None:
    """Add ``steps`` to the plan every job of a run reads its step from."""
    plan = run_dir / PLAN_FILE
    before = json.loads(plan.read_text())["steps"] if plan.exists() else []
    write_json(plan, {"root": os.fspath(root), "steps": before + [asdict(s) for s in steps]})


def read_step(run_dir: Path, name: str) -> tuple[Path, Step]:
    """The repository root and step ``name`` of the plan in ``run_dir``."""
    doc = json.loads((run_dir / PLAN_FILE).read_text())
    for s in doc["steps"]:
        if s["name"] == name:
            return Path(doc["root"]), Step(**{**s, "cmds": tuple(s["cmds"]), "after": tuple(s["after"])})
    raise KeyError(f"{run_dir / PLAN_FILE} has no step {name!r}")


def read_result(run_dir: Path, step: str) -> dict[str, Any] | None:
    """What the job of ``step`` wrote when it ended, or None (still running, killed, or not visible yet)."""
    try:
        return json.loads(result_path(run_dir, step).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return None


def prepare(root: Path, step: Step) -> str:
    """RUN when ``step``'s stage is out of date (its outputs readied as ``dvc repro`` readies them), UP_TO_DATE,
    or RESTORED when DVC's run cache had the outputs of these inputs (whole-stage steps only, as ``dvc repro``)."""
    from dvc.repo import Repo, lock_repo
    from dvc.stage.cache import RunCacheNotFoundError

    with Repo(os.fspath(root), _wait_for_lock=True) as repo, lock_repo(repo):
        (stage,) = repo.stage.collect(step.stage)
        if not stage.status():
            return UP_TO_DATE
        if step.kind != "record":  # the record step runs over what the shards wrote
            stage.remove_outs(ignore_remove=False, force=False)
        if step.kind == "stage":
            try:
                repo.stage_cache.restore(stage)
                return RESTORED
            except RunCacheNotFoundError:
                pass
        return RUN


def shell_argv(cmd: str) -> list[str]:
    """The argv ``dvc repro`` runs a command with (dvc/stage/run.py): the user's ``$SHELL`` without its rc files,
    else ``/bin/sh``."""
    shell = os.environ.get("SHELL") or "/bin/sh"
    flags = {"bash": ["--noprofile", "--norc"], "zsh": ["--no-rcs"]}.get(Path(shell).name, [])
    return [shell, *flags, "-c", cmd]


def execute(root: Path, step: Step) -> int:
    """Run the step's commands in order; the first non-zero exit status, or 0."""
    env = {**os.environ, "DVC_ROOT": os.fspath(root), "DVC_STAGE": step.stage}
    for cmd in step.cmds:
        print(f"> {cmd}", flush=True)
        argv = shell_argv(cmd)  # dvc.yaml's command line, through the shell, exactly as `dvc repro` runs it
        rc = subprocess.run(argv, cwd=root / step.wdir, env=env, check=False).returncode
        if rc:
            return rc
    return 0


def record(root: Path, stage: str) -> None:
    """``dvc commit`` of ``stage``, as ``dvc repro`` records a run (cache, ``dvc.lock``, and with
    ``core.autostage`` the staged ``dvc.lock`` and ``.gitignore`` files). SIGTERM and SIGINT wait until it is done:
    a job cancelled meanwhile never leaves ``dvc.lock`` half-written."""
    from dvc.repo import Repo, lock_repo

    held = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM, signal.SIGINT})
    try:
        with Repo(os.fspath(root), _wait_for_lock=True) as repo, lock_repo(repo), repo.scm_context(quiet=True):
            repo.commit(stage, force=True)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, held)


def main(run_dir: Path, name: str) -> int:
    """Run step ``name`` of the plan in ``run_dir``; its exit status."""
    from dvc.exceptions import DvcException

    root, step = read_step(run_dir, name)
    os.chdir(root)  # as `dvc repro`: DVC resolves the paths it stages for git against the working directory
    started = time.time()
    print(f"step {name} of stage {step.stage} on {os.uname().nodename}", flush=True)
    rc = 0
    try:
        outcome = prepare(root, step)
        if outcome == RUN:
            rc = execute(root, step)
            outcome = FAILED if rc else RAN
        if outcome in (RAN, RESTORED) and step.records:
            record(root, step.stage)
            print(f"recorded {step.stage} in dvc.lock", flush=True)
    except DvcException as e:
        print(f"error: {step.stage}: {e}", file=sys.stderr, flush=True)
        outcome, rc = FAILED, 1
    ended = time.time()
    seconds = round(ended - started, 2)
    write_json(result_path(run_dir, name),
               {"step": name, "outcome": outcome, "rc": rc, "seconds": seconds, "started": started, "ended": ended})
    print(f"step {name}: {outcome} ({seconds} s)", flush=True)
    return rc
