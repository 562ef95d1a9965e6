"""End to end: `dvc repro` of this repository's own dvc.yaml on a shrunken demo, in a temporary git repository.

The copy holds the project's files as git sees them (tracked plus untracked-not-ignored), so the test runs the
code under test, through the real `python -m pipeline` commands that dvc.yaml names.
"""

from __future__ import annotations

import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

SMALL = {
    "demo": {"n_videos": 8, "seconds": 4.0, "size": 64, "affectnet_train": 40, "affectnet_val": 20},
    "backbone": {"epochs": 1, "batch": 16},
    "frames": {"size": 32},
    "split": {"n_folds": 3, "folds": [0, 1, 2]},
    "features": {"iresnet": {"batch": 64}, "vggish": {"batch": 64}},
    "train": {"epochs": 2, "window": 64, "hop": 32, "patience": 2, "warmup_epochs": 0},
    "model": {"d_model": 32, "heads": 2, "layers": 1, "ff_dim": 64, "tcn_channels": 16, "tcn_levels": 2, "head_hidden": 16},
}


def merge(base: dict, over: dict) -> dict:
    out = dict(base)
    for k, v in over.items():
        out[k] = merge(base.get(k) or {}, v) if isinstance(v, dict) else v
    return out


def sh(cmd: list[str], cwd: Path, timeout: int = 900) -> str:
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout)
    assert p.returncode == 0, f"{' '.join(cmd)} failed:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}"
    return p.stdout + p.stderr


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    files = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout.split()
    dst = tmp_path_factory.mktemp("e2e") / "repo"
    for f in files:
        src = ROOT / f
        if src.is_file() and not f.startswith(("dvc.lock", "metrics/")):
            (dst / f).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst / f)
    params = yaml.safe_load((dst / "params.yaml").read_text())
    (dst / "params.yaml").write_text(yaml.safe_dump(merge(params, SMALL), sort_keys=False))
    git = ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@localhost"]
    sh(["git", "init", "-q"], dst)
    sh([*git, "add", "-A"], dst)
    sh([*git, "commit", "-qm", "e2e"], dst)
    sh([sys.executable, "-m", "dvc", "repro"], dst)
    return dst


def test_repro_writes_metrics_and_submission(repo):
    cv = json.loads((repo / "metrics" / "cv.json").read_text())
    text = json.dumps(cv)
    assert "random" in text  # random-init backbones are labelled where the numbers are
    index = json.loads((repo / "data" / "prepared" / "index.json").read_text())
    tests = [t for t in index["trials"] if t["split"] == "test"]
    with open(repo / "predictions" / "test.txt") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_location", "valence", "arousal"]
    expected = [f"{t['name']}/{n:05d}.jpg" for t in tests for n in t["frames"]]
    assert [r[0] for r in rows[1:]] == expected
    assert all(-1 <= float(v) <= 1 and -1 <= float(a) <= 1 for _, v, a in rows[1:])
    for k in (0, 1, 2):
        assert (repo / "models" / f"fold{k}").is_dir() and (repo / "metrics" / f"fold{k}.json").is_file()


def test_noop_repro_runs_nothing_but_scan(repo):
    out = sh([sys.executable, "-m", "dvc", "repro"], repo)
    ran = [line for line in out.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'scan':"], out


def test_changing_lr_reruns_only_training_and_after(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] * 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh([sys.executable, "-m", "dvc", "repro"], repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"scan", "train@0", "train@1", "train@2", "evaluate", "predict"}, out


def test_a_new_backbone_reextracts_iresnet_and_retrains_only(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["features"]["iresnet"]["weights"] == "models/backbone/backbone.pth"
    params["backbone"]["lr"] = params["backbone"]["lr"] / 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh([sys.executable, "-m", "dvc", "repro"], repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"scan", "backbone", "extract@iresnet", "train@0", "train@1", "train@2", "evaluate", "predict"}, out
