"""The one walk of ``cluster repro``, for Slurm and for local processes alike: plan, submit, follow, report.

Every step of the plan is submitted at once, each with the jobs it waits for, so the scheduler (Slurm, or
:class:`~pipeline.cluster.local.LocalExecutor`) runs independent steps side by side. The jobs record their own
stages (:mod:`pipeline.cluster.job`); this process only follows them, prints each state change in one line (a job
that failed or was cancelled with its log), and cancels what is left when it is interrupted. A run's scripts, logs
and results live in ``.dvc/tmp/cluster/<run>/`` of the repository (on the shared filesystem).
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Protocol

from pipeline.cluster import ClusterError, graph
from pipeline.cluster.graph import Step
from pipeline.cluster.job import RAN, RESTORED, UP_TO_DATE, log_path, read_result, script_path, write_plan
from pipeline.cluster.slurm import Resources, job_script
from pipeline.common.outputs import write_json

RUNS = Path(".dvc") / "tmp" / "cluster"
PACKAGE = Path(__file__).resolve().parents[2]  # holds the `pipeline` package jobs run their step with
JOBS_FILE = "jobs.json"
ACTIVE = ("PENDING", "CONFIGURING", "RUNNING", "COMPLETING", "REQUEUED", "RESIZING", "SUSPENDED", "STOPPED")


class Executor(Protocol):
    """Where jobs run: :class:`~pipeline.cluster.slurm.SlurmExecutor` or
    :class:`~pipeline.cluster.local.LocalExecutor`."""

    name: str

    def submit(self, script: Path, log: Path, after: Sequence[str]) -> str: ...

    def states(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]: ...

    def cancel(self, ids: Sequence[str]) -> None: ...


@dataclass
class Job:
    """A submitted step and what is known of it."""

    run_dir: Path
    step: Step
    id: str
    label: str = ""  # the experiment a sweep runs it for
    state: str = "PENDING"
    outcome: str = ""

    @property
    def log(self) -> Path:
        return log_path(self.run_dir, self.step.name)

    @property
    def title(self) -> str:
        return f"{self.label}: {self.step.name}" if self.label else self.step.name


def shown(path: Path) -> str:
    """``path`` relative to the working directory when it is below it."""
    try:
        return os.fspath(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return os.fspath(path)


def check_no_active_run(root: Path, executor: Executor) -> None:
    """Refuse to start while Slurm jobs of an earlier run in ``root`` are queued or running (a run whose follower
    was stopped goes on: its jobs record their own stages)."""
    ids: list[str] = []
    for f in sorted((root / RUNS).glob(f"*/{JOBS_FILE}"))[-20:]:
        doc = json.loads(f.read_text())
        if doc.get("executor") == executor.name == "slurm":
            ids += doc["jobs"].values()
    active = sorted(j for j, (s, _) in executor.states(ids).items() if s in ACTIVE)
    if active:
        raise ClusterError(f"jobs {', '.join(active)} of an earlier run in {root} are still queued or running: "
                           "wait for them (squeue --me) or cancel them (scancel), then run again")


def new_run_dir(root: Path) -> Path:
    """A new folder for one invocation's plan, scripts, logs and results in ``root``."""
    run_dir = root / RUNS / f"{datetime.now():%Y%m%d-%H%M%S}-{os.getpid()}"
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir


def submit(run_dir: Path, root: Path, steps: Sequence[Step], executor: Executor, res: Resources,
           label: str = "") -> list[Job]:
    """Add ``steps`` to the plan in ``run_dir``, write one script per step and submit them all, each after the jobs
    of the steps it waits for."""
    write_plan(run_dir, root.resolve(), steps)
    ids: dict[str, str] = {}
    jobs = []
    for step in steps:
        script = script_path(run_dir, step.name)
        script.write_text(job_script(step, run_dir.resolve(), root.resolve(), res, sys.executable, PACKAGE))
        ids[step.name] = executor.submit(script, log_path(run_dir, step.name), [ids[a] for a in step.after])
        jobs.append(Job(run_dir, step, ids[step.name], label))
        waits = f", after {', '.join(step.after)}" if step.after else ""
        print(f"{jobs[-1].title}: job {ids[step.name]}{waits}", flush=True)
    known = json.loads((run_dir / JOBS_FILE).read_text())["jobs"] if (run_dir / JOBS_FILE).exists() else {}
    write_json(run_dir / JOBS_FILE, {"executor": executor.name, "jobs": {**known, **ids}})
    print(f"{label + ': ' if label else ''}{len(jobs)} job(s) submitted ({executor.name}); "
          f"scripts and logs in {shown(run_dir)}", flush=True)
    return jobs


def _ended(job: Job, state: str, reason: str) -> bool:
    """Print how ``job`` ended, in one line; True when it failed (not when it never started because one it waited
    for failed: that one has its own line)."""
    if state == "COMPLETED" or (state == "ENDED" and reason == "ok"):
        result = read_result(job.run_dir, job.step.name) or {"outcome": "completed"}
        job.outcome = result["outcome"]
        recorded = ", recorded in dvc.lock" if job.step.records and job.outcome in (RAN, RESTORED) else ""
        took = f" in {result['seconds']:.0f} s" if "seconds" in result else ""
        print(f"{job.title}: {job.outcome}{took}{recorded}", flush=True)
        return False
    if state == "CANCELLED" and reason.startswith("Dependency"):
        job.outcome = "not run"
        print(f"{job.title}: not run (a step it waits for did not succeed)", flush=True)
        return False
    job.outcome = state.lower()
    result = read_result(job.run_dir, job.step.name)
    if result and result["rc"]:  # the command's own exit status says more than Slurm's NonZeroExitCode
        reason = f"exit {result['rc']}"
    print(f"{job.title}: {state.lower()}{f' ({reason})' if reason and reason != 'None' else ''} (job {job.id}); "
          f"log: {shown(job.log)}", flush=True)
    return True


def _state(job: Job, known: dict[str, tuple[str, str]]) -> tuple[str, str]:
    """The scheduler's state of ``job``, or for a job it has forgotten, what the job's result file says."""
    if job.id in known:
        return known[job.id]
    result = read_result(job.run_dir, job.step.name)
    if result is None:
        return "ENDED", "without a result; `sacct -j <job>` may say why"
    return ("ENDED", "ok") if result["rc"] == 0 else ("FAILED", f"exit {result['rc']}")


def follow(jobs: Sequence[Job], executor: Executor, poll_s: float = 2.0) -> list[Job]:
    """Wait until every job has ended, printing each start and end; the jobs that failed. Ctrl-C cancels the jobs
    that have not ended (nothing they half-wrote is recorded) and raises :class:`ClusterError`."""
    waiting, failed = list(jobs), []
    try:
        while waiting:
            known = executor.states([j.id for j in waiting])
            for job in list(waiting):
                state, reason = _state(job, known)
                if state in ACTIVE:
                    if state == "RUNNING" and job.state != "RUNNING":
                        print(f"{job.title}: running (job {job.id})", flush=True)
                    job.state = state
                    continue
                waiting.remove(job)
                job.state = state
                if _ended(job, state, reason):
                    failed.append(job)
            if waiting:
                time.sleep(poll_s)
    except KeyboardInterrupt:
        executor.cancel([j.id for j in waiting])
        raise ClusterError(f"interrupted: cancelled {len(waiting)} job(s); nothing they wrote was recorded") from None
    return failed


def raise_failures(failed: Sequence[Job], total: int) -> None:
    """One line for a run with failed steps: how many, and the first one's log."""
    if failed:
        first = failed[0]
        raise ClusterError(f"{len(failed)} of {total} step(s) failed, first {first.title} ({first.state.lower()}): "
                           f"log {shown(first.log)}; run the same command again to retry what is still out of date")


def describe(steps: Sequence[Step]) -> str:
    """The plan, one step a line: name, what it waits for, its command."""
    return "\n".join(f"{s.name}{' after ' + ', '.join(s.after) if s.after else ''}: {' && '.join(s.cmds)}"
                     for s in steps)


def waves(spaces: dict[str, Path], targets: Sequence[str], executor: Executor, res: Resources, shards: int = 1,
          poll_s: float = 2.0) -> tuple[dict[str, list[Job]], list[Job]]:
    """Bring ``targets`` of each DVC repository in ``spaces`` (label -> root) up to date, all side by side, in two
    waves: the stages that always run (and what they need), then everything still out of date after them. Returns
    each space's jobs and the jobs that failed; a space with a failed job has no second wave."""
    jobs: dict[str, list[Job]] = {label: [] for label in spaces}
    run_dirs: dict[str, Path] = {}
    failed: list[Job] = []
    for first in (True, False):
        submitted = []
        for label, root in spaces.items():
            if any(j in failed for j in jobs[label]):
                continue
            nodes = graph.read_graph(root, targets)
            settled = {j.step.stage for j in jobs[label] if j.outcome in (RAN, RESTORED, UP_TO_DATE, "completed")}
            steps = graph.plan(nodes, shards, settled, only=graph.checks(nodes) if first else None)
            if steps:
                if label not in run_dirs:
                    check_no_active_run(root, executor)
                    run_dirs[label] = new_run_dir(root)
                submitted += submit(run_dirs[label], root, steps, executor, res, label)
        failed += follow(submitted, executor, poll_s)
        for job in submitted:
            jobs[job.label].append(job)
    return jobs, failed


def repro(root: Path, targets: Sequence[str], executor: Executor, res: Resources, shards: int = 1,
          dry: bool = False, poll_s: float = 2.0) -> list[Job]:
    """Bring ``targets`` (every stage without targets) of the DVC repository ``root`` up to date with ``executor``;
    the jobs. Raises :class:`ClusterError` naming the first failed step's log."""
    if dry:
        nodes = graph.read_graph(root, targets)
        print(describe(graph.plan(nodes, shards)) or "Everything is up to date.")
        return []
    jobs, failed = waves({"": root}, targets, executor, res, shards, poll_s)
    if not jobs[""]:
        print("Everything is up to date.")
    raise_failures(failed, len(jobs[""]))
    return jobs[""]
