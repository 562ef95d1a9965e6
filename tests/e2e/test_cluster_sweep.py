"""`python -m pipeline cluster exp -S ...`: a sweep run as jobs (the local executor here; the same walk as
`--slurm`) whose experiments end as DVC experiments that `dvc exp show` lists, on the shrunken demo."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest

from tests.helpers.dvc_repo import DVC, make_repo, sh

pytestmark = pytest.mark.slow

CLUSTER = [sys.executable, "-m", "pipeline", "cluster"]


def experiments(doc: list[dict[str, Any]]) -> dict[str, dict]:
    """Experiment name -> its ``data``, from ``dvc exp show --json`` (the experiments below each baseline row)."""
    return {e["name"]: e["data"] for row in doc for group in row.get("experiments") or [] for e in group["revs"]}


def test_a_sweep_ends_as_dvc_experiments(tmp_path):
    repo = make_repo(tmp_path / "repo")
    sh([*DVC, "repro"], repo)  # the baseline: its outputs are in the cache the experiments share
    lock = (repo / "dvc.lock").read_text()
    p = subprocess.run([*CLUSTER, "exp", "-S", "train.lr=0.002,0.004", "--local", "-j", "2", "--poll", "0.5"],
                       cwd=repo, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    for name in ("lr0.002", "lr0.004"):
        assert f"{name}: saved as a DVC experiment (train.lr=" in p.stdout
        submitted = [ln.split(": ")[1] for ln in p.stdout.splitlines() if ln.startswith(f"{name}: ") and ": job " in ln]
        # the scan, then what the learning rate changes; demo, prepare and extraction come from the shared cache
        assert submitted == ["scan", "train@0", "train@1", "train@2", "evaluate", "predict"], p.stdout
    shown = experiments(json.loads(sh([*DVC, "exp", "show", "--json"], repo).splitlines()[0]))
    assert set(shown) == {"lr0.002", "lr0.004"}
    for name, lr in (("lr0.002", 0.002), ("lr0.004", 0.004)):
        data = shown[name]
        assert data["params"]["params.yaml"]["data"]["train"]["lr"] == lr
        cv = data["metrics"]["metrics/cv.json"]["data"]
        assert -1 <= cv["raw"]["mean"] <= 1
    baseline = json.loads((repo / "metrics" / "cv.json").read_text())
    assert shown["lr0.002"]["metrics"]["metrics/cv.json"]["data"]["raw"] != baseline["raw"]
    assert (repo / "dvc.lock").read_text() == lock  # the workspace is left as it was
    assert not list((repo / ".dvc" / "tmp" / "cluster" / "exps").iterdir())  # saved experiments leave no workspace
    again = subprocess.run([*CLUSTER, "exp", "-S", "train.lr=0.002,0.004", "--local"], cwd=repo, capture_output=True,
                           text=True, timeout=300)
    assert again.returncode == 0 and "lr0.002: already saved as an experiment" in again.stdout, again.stdout + again.stderr
    assert ": job " not in again.stdout
