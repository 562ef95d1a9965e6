"""The DVC graph of some targets, and the steps that bring it up to date.

:func:`read_graph` asks DVC (``dvc.repo.Repo``: the index's graph, each stage's interpolated ``cmd``, its status)
for the stages the targets need; :func:`plan` turns them into steps, a pure function the tests call directly.

What runs: every stage that is out of date now, and every stage downstream of one (it may be out of date once its
inputs are rewritten). A step checks again when it starts (:mod:`pipeline.cluster.job`), so a stage whose inputs
came out unchanged is skipped then, as ``dvc repro`` skips it. A stage that always runs (``always_changed``, here
``scan``: a cheap look at the dataset) would make everything below it look out of date: :func:`checks` picks it and
what it needs as a first wave; the rest is planned after it, with the status it left (``settled``).

An extraction (``python -m pipeline extract``, persistent output) can be cut into ``--shard i/n`` steps that run side
by side and fill one store, followed by its record step: the stage's own command, which finds the store complete,
and the commit.
"""

from __future__ import annotations

import os
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

from pipeline.cluster import ClusterError

StepKind = Literal["stage", "shard", "record"]
SHARDABLE = re.compile(r"^python3?\s+-m\s+pipeline\s+extract\s")


@dataclass(frozen=True)
class StageNode:
    """One DVC stage as the planner needs it."""

    name: str  # DVC's addressing: "train@0", "extract@iresnet", "sub/dvc.yaml:stage"
    cmds: tuple[str, ...]  # interpolated, as `dvc repro` runs them (one after the other)
    wdir: str  # where the commands run, relative to the repository root
    upstream: tuple[str, ...]  # stages whose outputs it reads
    changed: bool  # out of date now (`dvc status`)
    persist: bool  # every output is `persist: true`: a run resumes what is there and never deletes it
    always: bool = False  # `always_changed: true`: runs on every repro


@dataclass(frozen=True)
class Step:
    """One job: a whole stage, one ``--shard i/n`` of an extraction, or the record step after its shards."""

    name: str  # unique in a plan: the stage's name, or "<stage>.shard<i>of<n>"
    stage: str
    cmds: tuple[str, ...]
    wdir: str
    after: tuple[str, ...]  # steps that must have succeeded first (Slurm: --dependency=afterok)
    kind: StepKind = "stage"

    @property
    def records(self) -> bool:
        """Whether this step's success completes its stage (its job runs `dvc commit` for it)."""
        return self.kind != "shard"


def topological(nodes: Sequence[StageNode]) -> list[StageNode]:
    """``nodes`` with every stage after its upstream ones, otherwise in the given order."""
    by_name = {n.name: n for n in nodes}
    done: set[str] = set()
    out: list[StageNode] = []
    while len(out) < len(nodes):
        ready = [n for n in nodes if n.name not in done and all(u in done or u not in by_name for u in n.upstream)]
        if not ready:
            raise ClusterError(f"the stages {sorted(set(by_name) - done)} depend on each other in a cycle")
        for n in ready:
            done.add(n.name)
            out.append(n)
    return out


def stale(nodes: Sequence[StageNode]) -> set[str]:
    """Stages that may run: the ones out of date now and every stage downstream of one of them."""
    todo: set[str] = set()
    for n in topological(nodes):
        if n.changed or any(u in todo for u in n.upstream):
            todo.add(n.name)
    return todo


def checks(nodes: Sequence[StageNode]) -> set[str]:
    """The first wave: the stages that always run and the stages they need that may be out of date."""
    by_name, may_run = {n.name: n for n in nodes}, stale(nodes)
    wave: set[str] = set()
    todo = [n.name for n in nodes if n.always]
    while todo:
        name = todo.pop()
        if name not in wave:
            wave.add(name)
            todo += [u for u in by_name[name].upstream if u in may_run and u in by_name]
    return wave


def shardable(node: StageNode) -> bool:
    """An extraction whose store is persistent: several ``--shard i/n`` processes may fill it side by side."""
    one = node.cmds[0] if len(node.cmds) == 1 else ""
    return node.persist and bool(SHARDABLE.match(one)) and "--shard" not in one


def plan(nodes: Sequence[StageNode], shards: int = 1, settled: Collection[str] = (),
         only: Collection[str] | None = None) -> list[Step]:
    """The steps that bring ``nodes`` (those in ``only``, when given) up to date, each after the steps of the stages
    it reads from, in topological order; stages in ``settled`` ran already in this invocation and count as done.

    With ``shards > 1`` an extraction is ``shards`` steps (its command with ``--shard i/n``) and a record step after
    them; every other stage is one step."""
    if shards < 1:
        raise ClusterError(f"--extract-shards must be at least 1, got {shards}")
    nodes = [replace(n, changed=n.changed and n.name not in settled) for n in nodes if only is None or n.name in only]
    todo = stale(nodes)
    steps: list[Step] = []
    for n in topological(nodes):
        if n.name not in todo:
            continue
        after = tuple(u for u in n.upstream if u in todo)  # the record step of a stage carries the stage's name
        if shards > 1 and shardable(n):
            parts = [
                Step(f"{n.name}.shard{i}of{shards}", n.name, (f"{n.cmds[0]} --shard {i}/{shards}",), n.wdir, after,
                     "shard")
                for i in range(shards)
            ]
            steps += parts
            steps.append(Step(n.name, n.name, n.cmds, n.wdir, tuple(p.name for p in parts), "record"))
        else:
            steps.append(Step(n.name, n.name, n.cmds, n.wdir, after))
    return steps


def _commands(cmd: str | list[str]) -> tuple[str, ...]:
    """A stage's ``cmd`` as DVC runs it: a list as it is, a string line by line (dvc/stage/run.py)."""
    return tuple(cmd if isinstance(cmd, list) else cmd.splitlines())


def _address(stage: Any, root: str) -> str:
    """DVC's name of ``stage`` (``train@0``, ``sub/dvc.yaml:name``) relative to the repository ``root``, not to the
    working directory as ``stage.addressing`` is (a sweep reads workspaces below the one it runs in)."""
    rel = os.path.relpath(stage.dvcfile.path, root)
    return stage.name if rel == "dvc.yaml" else f"{rel}:{stage.name}"


def read_graph(root: Path, targets: Sequence[str] = ()) -> list[StageNode]:
    """The stages with a command that ``targets`` need (all of the repository's without targets), as DVC sees them:
    frozen stages and data sources are left out, as ``dvc repro`` leaves them alone."""
    from dvc.exceptions import DvcException
    from dvc.repo import Repo, lock_repo

    try:
        with Repo(os.fspath(root), _wait_for_lock=True) as repo, lock_repo(repo):
            graph = repo.index.graph
            everything = repo.index.stages
            found = {s for t in targets for s in repo.stage.collect(t, with_deps=True)} if targets else set(everything)
            stages = [s for s in everything if s in found and s.cmd and not s.frozen]  # in dvc.yaml's order
            names = {s: _address(s, repo.root_dir) for s in stages}
            return [
                StageNode(
                    name=names[s],
                    cmds=_commands(s.cmd),
                    wdir=os.path.relpath(s.wdir, repo.root_dir),
                    upstream=tuple(sorted(names[u] for u in graph.successors(s) if u in names)),
                    changed=bool(s.status()),
                    persist=bool(s.outs) and all(o.persist for o in s.outs),
                    always=bool(s.always_changed),
                )
                for s in stages
            ]
    except DvcException as e:
        raise ClusterError(f"{root}: {e}") from None
