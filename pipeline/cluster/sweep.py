"""Experiment sweeps as jobs that end as DVC experiments (``dvc exp show`` lists them).

DVC's own queue runs experiments on one machine. Here each experiment gets a workspace of its own on the shared
filesystem: a ``git clone --shared`` of the repository at HEAD (no objects copied) in ``.dvc/tmp/cluster/exps/<name>``,
with the workspace's uncommitted changes to tracked files, the repository's DVC cache (up-to-date outputs are linked
from it, never recomputed), and the experiment's ``-S`` overrides applied to its params file as ``dvc exp run -S`` does.
All experiments' steps are submitted together through the same walk as ``cluster repro``
(:mod:`pipeline.cluster.driver`). An experiment whose every step succeeded is saved with ``dvc exp save`` in its
workspace, its ref fetched into the repository, and the workspace removed; one with a failed step keeps its
workspace, and running the same sweep again resumes it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from pipeline.cluster import ClusterError
from pipeline.cluster.driver import RUNS, Executor, raise_failures, waves
from pipeline.cluster.slurm import Resources

EXPS = RUNS / "exps"


@dataclass(frozen=True)
class Experiment:
    name: str
    overrides: dict[str, list[str]]  # params file -> ["train.lr=0.002", ...], as `dvc exp run -S` groups them


def _slug(overrides: dict[str, list[str]]) -> str:
    """A name from the overrides: ``train.lr=0.002`` and ``model.tcn=false`` give ``lr0.002-tcnfalse``."""
    parts = [o.split("=", 1)[0].split(".")[-1] + o.split("=", 1)[-1] for os_ in overrides.values() for o in os_]
    return re.sub(r"[^A-Za-z0-9._-]+", "_", "-".join(parts)).strip("._-") or "exp"


def grid(sets: Sequence[str], name: str | None = None) -> list[Experiment]:
    """One experiment per combination of the ``-S`` values (``train.lr=1e-3,2e-3`` is two), with DVC's grammar
    (``dvc exp run --queue -S``); named ``<name>-1``, ``<name>-2`` ... as DVC names them, or after their values."""
    from dvc.exceptions import DvcException
    from dvc.utils.cli_parse import to_path_overrides
    from dvc.utils.hydra import get_hydra_sweeps
    from hydra.errors import HydraException

    try:
        sweeps = get_hydra_sweeps(to_path_overrides(sets))
    except (DvcException, HydraException) as e:
        raise ClusterError(f"-S {' -S '.join(sets)}: {str(e).splitlines()[0]}") from None
    return [Experiment(f"{name}-{i + 1}" if name else _slug(s), s) for i, s in enumerate(sweeps)]


def ablation_grid() -> list[Experiment]:
    """The eight rows of the paper's Table 2, named as ``python -m pipeline ablation`` names them (its ``--report``
    reads them back)."""
    from pipeline.commands import ablation

    return [
        Experiment(ablation.exp_name(c),
                   {"params.yaml": [f"model.{s}={str(on).lower()}" for s, on in zip(ablation.SWITCHES, c)]})
        for c in ablation.rows()
    ]


def _git(cwd: Path, *args: str) -> str:
    p = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if p.returncode:
        raise ClusterError(f"`git {' '.join(args)}` in {cwd} failed: {(p.stderr or p.stdout).strip()}")
    return p.stdout


def saved(root: Path) -> set[str]:
    """Names of the experiments of the repository's HEAD."""
    head = _git(root, "rev-parse", "HEAD").strip()
    refs = _git(root, "for-each-ref", "--format=%(refname)", f"refs/exps/{head[:2]}/{head[2:]}/").split()
    return {r.rsplit("/", 1)[-1] for r in refs}


def workspace(root: Path, exp: Experiment) -> Path:
    """The experiment's workspace, made on first use (an existing one is resumed as it is)."""
    from dvc.repo import Repo
    from dvc.utils.hydra import apply_overrides

    ws = root / EXPS / exp.name
    if ws.exists():
        return ws
    tmp = ws.with_name(ws.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    _git(root, "clone", "-q", "--shared", "--no-checkout", ".", os.fspath(tmp))
    _git(tmp, "checkout", "-q", "--detach", _git(root, "rev-parse", "HEAD").strip())
    changed = [p for p in _git(root, "diff", "--name-only", "-z", "HEAD").split("\0") if p]
    for rel in changed:  # the workspace's uncommitted changes to tracked files, as `dvc exp run` takes them
        if (root / rel).is_file():
            (tmp / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(root / rel, tmp / rel)
        else:
            (tmp / rel).unlink(missing_ok=True)
    if changed:
        _git(tmp, "add", "-A", "--", *changed)
    with Repo(os.fspath(root)) as repo:  # one cache for all: `dvc config --local cache.dir`
        (tmp / ".dvc" / "config.local").write_text(f"[cache]\n    dir = {repo.cache.local_cache_dir}\n")
    for path, overrides in exp.overrides.items():
        apply_overrides(tmp / path, overrides)
    with Repo(os.fspath(tmp)) as repo:
        repo.checkout(force=True, allow_missing=True)  # what is in the cache is linked; what is not will be made
    tmp.rename(ws)
    return ws


def save(root: Path, ws: Path, name: str) -> None:
    """``dvc exp save -n name`` in ``ws``, its ref fetched into ``root``, ``ws`` removed."""
    from dvc.repo import Repo

    with Repo(os.fspath(ws)) as repo:  # outputs kept in git (metrics/cv.json), staged as `dvc exp run` stages them
        in_git = [os.path.relpath(o.fs_path, ws) for s in repo.index.stages for o in s.outs
                  if not o.use_cache and o.exists]
    argv = [sys.executable, "-m", "dvc", "exp", "save", "--force", "-n", name, *(a for p in in_git for a in ("-I", p))]
    p = subprocess.run(argv, cwd=ws, capture_output=True, text=True, check=False)
    if p.returncode:
        raise ClusterError(f"`dvc exp save -n {name}` in {ws} failed: {(p.stderr or p.stdout).strip()}")
    refs = [r for r in _git(ws, "for-each-ref", "--format=%(refname)", "refs/exps/").split() if r.endswith(f"/{name}")]
    _git(root, "fetch", "-q", os.fspath(ws), *(f"+{r}:{r}" for r in refs))
    shutil.rmtree(ws)


def run(root: Path, experiments: Sequence[Experiment], executor: Executor, res: Resources, shards: int = 1,
        poll_s: float = 2.0) -> list[str]:
    """Run ``experiments`` (those not saved yet) side by side; the names saved. Raises :class:`ClusterError` when
    a step of one failed, after the others were saved."""
    done = saved(root)
    for e in experiments:
        if e.name in done:
            print(f"{e.name}: already saved as an experiment (`dvc exp remove {e.name}` to run it again)")
    todo = [e for e in experiments if e.name not in done]
    spaces = {e.name: workspace(root, e) for e in todo}
    jobs, failed = waves(spaces, [], executor, res, shards, poll_s)
    names = []
    for e in todo:
        if not any(j in failed or j.outcome == "not run" for j in jobs[e.name]):  # every step succeeded
            save(root, spaces[e.name], e.name)
            names.append(e.name)
            print(f"{e.name}: saved as a DVC experiment ({' '.join(o for os_ in e.overrides.values() for o in os_)})")
    raise_failures(failed, sum(len(js) for js in jobs.values()))
    return names
