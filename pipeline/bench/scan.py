"""``python -m pipeline bench scan``: how long a no-op ``dvc status`` takes over a large crop tree.

Builds, in ``work``, a git + DVC repository and a tree of ``files`` small crop files (Aff-Wild2-like: a few hundred
per trial folder, annotations, a video), with two pipelines over it:

- ``manifest``: the project's way: ``scan`` (always runs) -> ``data/manifest.json`` -> a stand-in ``prepare``;
- ``direct`` (with ``--baseline``): a stage that depends on the tree folder itself, as a naive dvc.yaml would.

It prints one JSON line per measurement: seconds for a no-op ``dvc status`` and ``dvc repro``, and whether an added
crop and an edited annotation make ``prepare`` run again.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import yaml

ANN = "annotations/VA_Estimation_Challenge/Train_Set"


def make_tree(root: Path, files: int, per_trial: int = 500) -> None:
    """``files`` crops of 300 bytes in folders of ``per_trial``, one annotation per trial, one video."""
    payload = b"\xff\xd8" + b"\x00" * 298
    (root / ANN).mkdir(parents=True)
    (root / "videos").mkdir()
    for t in range(0, files, per_trial):
        name = f"trial{t // per_trial:05d}"
        d = root / "cropped_aligned" / name
        d.mkdir(parents=True)
        n = min(per_trial, files - t)
        for i in range(1, n + 1):
            with open(d / f"{i:05d}.jpg", "wb") as f:
                f.write(payload)
        (root / ANN / f"{name}.txt").write_text("valence,arousal\n" + "0.1,0.2\n" * n)
    (root / "videos" / "trial00000.mp4").write_bytes(b"\x00" * 1000)


def _run(cmd: list[str], cwd: Path) -> tuple[float, str]:
    t = time.perf_counter()
    p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True)
    if p.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed in {cwd}:\n{p.stdout}\n{p.stderr}")
    return time.perf_counter() - t, p.stdout + p.stderr


def run(work: Path, files: int = 200_000, baseline: bool = False) -> list[dict]:
    """Build the repository in ``work`` (replacing it) and print the measurements as JSON lines."""
    if work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True)
    tree = work / "tree"
    t0 = time.perf_counter()
    make_tree(tree, files)
    made = time.perf_counter() - t0
    py = sys.executable
    stages = {
        "scan": {
            "cmd": f"{py} -m pipeline scan --root tree --out data/manifest.json",
            "deps": ["tree/annotations"],
            "outs": ["data/manifest.json"],
            "always_changed": True,
        },
        "prepare": {
            "cmd": f"{py} -c \"import shutil; shutil.copy('data/manifest.json', 'data/prepared.json')\"",
            "deps": ["data/manifest.json"],
            "outs": ["data/prepared.json"],
        },
    }
    if baseline:
        stages["direct"] = {"cmd": f"{py} -c \"open('data/direct.txt', 'w').write('x')\"", "deps": ["tree"], "outs": ["data/direct.txt"]}
    (work / "dvc.yaml").write_text(yaml.safe_dump({"stages": stages}, sort_keys=False))
    (work / ".gitignore").write_text("/tree/\n")
    env_git = ["git", "-c", "user.name=bench", "-c", "user.email=bench@localhost"]
    _run(["git", "init", "-q"], work)
    _run([py, "-m", "dvc", "init", "-q"], work)
    _run([py, "-m", "dvc", "config", "core.analytics", "false"], work)
    _run([*env_git, "add", "-A"], work)
    _run([*env_git, "commit", "-qm", "bench"], work)
    first, _ = _run([py, "-m", "dvc", "repro"], work)
    status, _ = _run([py, "-m", "dvc", "status", "scan", "prepare"], work)
    repro, out = _run([py, "-m", "dvc", "repro", "prepare"], work)
    quiet = "Stage 'prepare' didn't change" in out
    (tree / "cropped_aligned" / "trial00000" / "99999.jpg").write_bytes(b"\xff\xd8new")
    _, out = _run([py, "-m", "dvc", "repro", "prepare"], work)
    reruns_on_crop = "Running stage 'prepare'" in out
    ann = tree / ANN / "trial00001.txt"
    ann.write_text(ann.read_text().replace("0.1,0.2", "0.3,0.2", 1))
    _, out = _run([py, "-m", "dvc", "repro", "prepare"], work)
    reruns_on_annotation = "Running stage 'prepare'" in out
    lines = [{
        "bench": "scan", "files": files, "tree_seconds": round(made, 1), "first_repro_s": round(first, 2),
        "noop_status_s": round(status, 2), "noop_repro_s": round(repro, 2), "noop_repro_skips_prepare": quiet,
        "added_crop_reruns_prepare": reruns_on_crop, "edited_annotation_reruns_prepare": reruns_on_annotation,
    }]
    if baseline:
        direct, _ = _run([py, "-m", "dvc", "status", "direct"], work)
        lines.append({"bench": "scan-baseline", "files": files, "noop_status_s": round(direct, 2),
                      "ratio_vs_manifest": round(direct / status, 1)})
    for line in lines:
        print(json.dumps(line), flush=True)
    return lines

