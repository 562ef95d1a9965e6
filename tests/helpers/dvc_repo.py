"""A copy of this repository in a temporary git repository, for end-to-end tests that run `dvc repro` on it.

The copy holds the project's files as git sees them (tracked plus untracked-not-ignored), so a test runs the code
under test through the real `python -m pipeline` commands that dvc.yaml names; params are shrunk by ``overrides``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import yaml

from tests.helpers import ROOT

SMALL = {
    "demo": {"n_videos": 8, "seconds": 4.0, "size": 64, "affectnet_train": 40, "affectnet_val": 20},
    "backbone": {"epochs": 1, "batch": 16},
    "frames": {"size": 32},
    "split": {"n_folds": 3, "folds": [0, 1, 2]},
    "features": {"iresnet": {"batch": 64}, "vggish": {"batch": 64}},
    "train": {"epochs": 2, "window": 64, "hop": 32, "patience": 2, "warmup_epochs": 0},
    "model": {"d_model": 32, "heads": 2, "layers": 1, "ff_dim": 64, "tcn_channels": 16, "tcn_levels": 2, "head_hidden": 16},
}
DVC = [sys.executable, "-m", "dvc"]
FIXED_DATE = "2026-01-01T00:00:00+00:00"


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def sh(cmd: list[str], cwd: Path, timeout: int = 900, env: dict[str, str] | None = None) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p.stdout + p.stderr


def make_repo(dst: Path, overrides: dict | None = None, before_commit: Callable[[Path], None] | None = None) -> Path:
    """Copy the project into ``dst`` with params merged with ``overrides`` (default :data:`SMALL`), run
    ``before_commit(dst)`` if given, and make it a git repository with one commit; returns ``dst``.

    The commit's author, committer and dates are fixed, so two repositories made from the same files have the same
    commit id (training records it as provenance: two runs compare equal only then)."""
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True,
        check=True,
    ).stdout.split()
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("dvc.lock", "metrics/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    (dst / "params.yaml").write_text(yaml.safe_dump(merge(params, SMALL if overrides is None else overrides), sort_keys=False))
    if before_commit is not None:
        before_commit(dst)
    git = ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@localhost", "-c", "init.defaultBranch=main"]
    sh([*git, "init", "-q"], dst)
    sh([*git, "add", "-A"], dst)
    sh([*git, "commit", "-qm", "e2e"], dst, env={"GIT_AUTHOR_DATE": FIXED_DATE, "GIT_COMMITTER_DATE": FIXED_DATE})
    return dst
