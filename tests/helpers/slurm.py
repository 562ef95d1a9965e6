"""A throwaway single-node Slurm on this machine: ``slurmctld`` and ``slurmd`` from Debian's ``slurm-wlm``, configured
for localhost in a temporary folder (its own ports, state and spool; ``auth/none``, so no munge daemon), started and
stopped by the caller. Used by tests/e2e/test_cluster_slurm.py, and run as a module from the repository root it
measures the shrunken demo:

    python -m tests.helpers.slurm --cpus 1 --cpus 2 [--baseline]

prints one JSON line per measurement (with the 1-minute load average before and after, since other work on the
machine shows there): the wall time of ``python -m pipeline cluster repro --slurm`` on a fresh copy of this
repository with tests/helpers/dvc_repo.py's shrunken params, with a Slurm node of 1 CPU (one job at a time) and of 2
CPUs (two jobs at once); with ``--baseline`` also plain ``dvc repro`` on such a copy.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

from tests.helpers import ROOT

STATES_UP = ("idle", "mixed", "allocated")


class SlurmUnavailable(Exception):
    """Slurm cannot run here; the message is the one-line reason a test is skipped with."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalSlurm:
    """A controller and one compute node of ``cpus`` CPUs on this machine, all files under ``base``."""

    def __init__(self, base: Path, cpus: int = 2) -> None:
        self.base, self.cpus = base, cpus
        self.conf = base / "slurm.conf"
        self.host = socket.gethostname().split(".")[0]
        self.procs: list[subprocess.Popen] = []

    @property
    def env(self) -> dict[str, str]:
        """The environment in which sbatch, squeue and scancel talk to this Slurm."""
        return {**os.environ, "SLURM_CONF": os.fspath(self.conf)}

    def conf_text(self) -> str:
        b = self.base
        return "\n".join([
            "ClusterName=va-test",
            f"SlurmctldHost={self.host}(127.0.0.1)",
            f"SlurmctldPort={_free_port()}", f"SlurmdPort={_free_port()}",
            "SlurmUser=root", "SlurmdUser=root", "AuthType=auth/none", "CredType=cred/none",
            f"StateSaveLocation={b / 'state'}", f"SlurmdSpoolDir={b / 'spool'}",
            f"SlurmctldPidFile={b / 'slurmctld.pid'}", f"SlurmdPidFile={b / 'slurmd.pid'}",
            f"SlurmctldLogFile={b / 'slurmctld.log'}", f"SlurmdLogFile={b / 'slurmd.log'}",
            "ProctrackType=proctrack/pgid", "TaskPlugin=task/none", "MpiDefault=none",
            "SelectType=select/cons_tres", "SelectTypeParameters=CR_CPU",
            "SchedulerType=sched/backfill", "AccountingStorageType=accounting_storage/none", "JobCompType=jobcomp/none",
            "ReturnToService=2", "MinJobAge=3600", "KillWait=5", "SlurmdParameters=config_overrides",
            f"NodeName={self.host} NodeAddr=127.0.0.1 CPUs={self.cpus} State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
        ]) + "\n"

    def _node_state(self) -> str:
        p = subprocess.run(["sinfo", "--noheader", "--format=%T", f"--nodes={self.host}"], env=self.env,
                           capture_output=True, text=True)
        return p.stdout.strip().rstrip("*~#")

    def start(self, timeout: float = 30.0) -> LocalSlurm:
        """Start both daemons and wait until the node takes jobs; :class:`SlurmUnavailable` when it cannot."""
        missing = [x for x in ("slurmctld", "slurmd", "sbatch", "sinfo") if shutil.which(x) is None]
        if missing:
            raise SlurmUnavailable(f"Slurm not installed ({', '.join(missing)} missing; apt-get install slurm-wlm)")
        if os.geteuid() != 0:
            raise SlurmUnavailable("a test Slurm needs root here (slurmd runs jobs as their user)")
        for d in ("state", "spool"):
            (self.base / d).mkdir(parents=True, exist_ok=True)
        self.conf.write_text(self.conf_text())
        for cmd in (["slurmctld", "-D", "-i", "-f", os.fspath(self.conf)], ["slurmd", "-D", "-f", os.fspath(self.conf), "-N", self.host]):
            with open(self.base / f"{cmd[0]}.out", "w") as out:
                self.procs.append(subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=self.env))
            time.sleep(0.5)
        deadline = time.monotonic() + timeout
        while self._node_state() not in STATES_UP:
            if time.monotonic() > deadline or any(p.poll() is not None for p in self.procs):
                why = self._last_error()
                self.stop()
                raise SlurmUnavailable(f"slurmctld/slurmd did not start: {why}")
            time.sleep(0.3)
        return self

    def _last_error(self) -> str:
        for name in ("slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log"):
            f = self.base / name
            errors = [ln for ln in f.read_text(errors="replace").splitlines() if "error" in ln or "fatal" in ln] if f.exists() else []
            if any("fatal" in e for e in errors):
                return next(e for e in errors if "fatal" in e).strip()
        return f"the node did not come up (logs in {self.base})"

    def stop(self) -> None:
        """Shut both daemons down (and kill them if they do not go)."""
        subprocess.run(["scontrol", "shutdown"], env=self.env, capture_output=True)
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        self.procs = []

    def __enter__(self) -> LocalSlurm:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _measure(cpus: int | None, work: Path) -> dict:
    """Wall time of one run on a fresh shrunken copy: ``cluster repro --slurm`` on a node of ``cpus`` CPUs, or
    ``dvc repro`` with ``cpus`` None."""
    from tests.helpers.dvc_repo import make_repo

    repo = make_repo(work / f"repo-{cpus or 'dvc'}")
    if cpus is None:
        cmd, env, slurm = [sys.executable, "-m", "dvc", "repro"], dict(os.environ), None
    else:
        slurm = LocalSlurm(work / f"slurm-{cpus}", cpus=cpus).start()
        cmd, env = [sys.executable, "-m", "pipeline", "cluster", "repro", "--slurm", "--poll", "1"], slurm.env
    load = os.getloadavg()[0]
    try:
        t0 = time.monotonic()
        p = subprocess.run(cmd, cwd=repo, env=env, capture_output=True, text=True)
        wall = time.monotonic() - t0
    finally:
        if slurm:
            slurm.stop()
    if p.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{p.stdout[-3000:]}\n{p.stderr[-3000:]}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True).stdout.strip()
    return {"command": " ".join(cmd[1:]), "slurm_node_cpus": cpus, "wall_s": round(wall, 1), "date": str(date.today()),
            "commit": commit, "cores": os.cpu_count(), "load_before": round(load, 2),
            "load_after": round(os.getloadavg()[0], 2)}


def main(argv: list[str]) -> None:
    import argparse

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cpus", type=int, action="append", help="Slurm node size to measure with (repeatable)")
    ap.add_argument("--baseline", action="store_true", help="also time plain `dvc repro`")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="slurm-timing-") as tmp:
        for cpus in ([None] if args.baseline else []) + (args.cpus or [1, 2]):
            print(json.dumps(_measure(cpus, Path(tmp))), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
