"""Steps as local processes, at most ``-j N`` at once: the fallback of ``cluster repro`` without a cluster.

It takes the very job scripts ``sbatch`` would get (bash reads their ``#SBATCH`` lines as comments) and plays
Slurm's part with Slurm's words: a job starts once every job it waits for has COMPLETED, is CANCELLED with reason
DependencyNeverSatisfied when one of them did not, and ends COMPLETED, FAILED or CANCELLED (killed by a signal).
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class _Queued:
    script: Path
    log: Path
    after: tuple[str, ...]


class LocalExecutor:
    """Runs job scripts with bash on this machine, ``jobs`` at a time (0: one per core)."""

    name = "local"

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = jobs if jobs > 0 else (os.cpu_count() or 1)
        self.queued: dict[str, _Queued] = {}
        self.running: dict[str, subprocess.Popen] = {}
        self.ended: dict[str, tuple[str, str]] = {}
        self.order: list[str] = []

    def submit(self, script: Path, log: Path, after: Sequence[str]) -> str:
        job = str(len(self.order) + 1)
        self.order.append(job)
        self.queued[job] = _Queued(script, log, tuple(after))
        return job

    def _reap(self) -> None:
        for job, p in list(self.running.items()):
            rc = p.poll()
            if rc is not None:
                del self.running[job]
                if rc == 0:
                    self.ended[job] = ("COMPLETED", "")
                elif rc < 0:
                    self.ended[job] = ("CANCELLED", signal.Signals(-rc).name)
                else:
                    self.ended[job] = ("FAILED", f"exit {rc}")

    def _start_ready(self) -> None:
        for job in self.order:
            q = self.queued.get(job)
            if q is None:
                continue
            before = [self.ended.get(a, ("", ""))[0] for a in q.after]
            if any(s and s != "COMPLETED" for s in before):
                del self.queued[job]
                self.ended[job] = ("CANCELLED", "DependencyNeverSatisfied")
            elif all(s == "COMPLETED" for s in before) and len(self.running) < self.jobs:
                del self.queued[job]
                with open(q.log, "w") as log:
                    self.running[job] = subprocess.Popen(
                        ["bash", os.fspath(q.script)], stdout=log, stderr=subprocess.STDOUT, start_new_session=True
                    )

    def states(self, ids: Sequence[str]) -> dict[str, tuple[str, str]]:
        """Job id -> (state, reason); starts the jobs that may start now."""
        self._reap()
        self._start_ready()
        out = {}
        for job in ids:
            if job in self.ended:
                out[job] = self.ended[job]
            elif job in self.running:
                out[job] = ("RUNNING", "")
            elif job in self.queued:
                out[job] = ("PENDING", "Dependency" if self.queued[job].after else "Resources")
        return out

    def cancel(self, ids: Sequence[str]) -> None:
        """SIGTERM to each running job's process group (the job and its command); queued jobs never start."""
        killed = [job for job in ids if job in self.running]
        for job in killed:
            os.killpg(self.running[job].pid, signal.SIGTERM)
        for job in ids:
            if self.queued.pop(job, None) is not None:
                self.ended[job] = ("CANCELLED", "cancelled before it started")
        for job in killed:
            self.running[job].wait()
        self._reap()
