"""The local executor (pipeline/cluster/local.py) plays Slurm's part with Slurm's rules: dependencies, at most
-j N at once, a failed dependency cancels, a cancelled job's processes are killed."""

from __future__ import annotations

import time
from pathlib import Path

from pipeline.cluster.local import LocalExecutor


def wait_all(ex: LocalExecutor, ids: list[str]) -> dict[str, tuple[str, str]]:
    while True:
        states = ex.states(ids)
        if all(s not in ("PENDING", "RUNNING") for s, _ in states.values()):
            return states
        time.sleep(0.05)


def test_local_executor_plays_slurm(tmp_path):
    def script(name: str, body: str) -> Path:
        p = tmp_path / f"{name}.sh"
        p.write_text(f"#!/bin/bash\n#SBATCH --job-name={name}\n{body}\n")
        return p

    ex = LocalExecutor(jobs=2)
    stamp = 'date +%s.%N >> {0}.t; sleep 0.5; date +%s.%N >> {0}.t'
    a = ex.submit(script("a", stamp.format(tmp_path / "a")), tmp_path / "a.log", [])
    b = ex.submit(script("b", stamp.format(tmp_path / "b")), tmp_path / "b.log", [])
    bad = ex.submit(script("bad", "echo broken; exit 3"), tmp_path / "bad.log", [a])
    after_bad = ex.submit(script("c", "touch never"), tmp_path / "c.log", [bad])
    states = wait_all(ex, [a, b, bad, after_bad])
    assert states == {a: ("COMPLETED", ""), b: ("COMPLETED", ""), bad: ("FAILED", "exit 3"),
                      after_bad: ("CANCELLED", "DependencyNeverSatisfied")}
    (a0, a1), (b0, b1) = ([float(x) for x in (tmp_path / f"{n}.t").read_text().split()] for n in "ab")
    assert a0 < b1 and b0 < a1  # side by side
    assert (tmp_path / "bad.log").read_text() == "broken\n" and not (tmp_path / "never").exists()


def test_local_executor_cancel_kills_the_job_and_what_it_started(tmp_path):
    ex = LocalExecutor(jobs=1)
    p = tmp_path / "s.sh"
    p.write_text("sleep 30 & wait\n")
    job = ex.submit(p, tmp_path / "s.log", [])
    queued = ex.submit(p, tmp_path / "q.log", [])
    assert ex.states([job, queued]) == {job: ("RUNNING", ""), queued: ("PENDING", "Resources")}
    ex.cancel([job, queued])
    assert ex.states([job, queued]) == {job: ("CANCELLED", "SIGTERM"), queued: ("CANCELLED", "cancelled before it started")}
