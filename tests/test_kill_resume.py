"""`kill -9` in the middle of a stage, then `dvc repro`: the run completes and ends with exactly the outputs of an
uninterrupted run (CPU), and nothing half-written ever looked finished to DVC.

One repository is killed in turn during prepare, an extraction, a fold's training and predict (each at a random
moment of the stage, fixed seed), then completed; a second, never interrupted, is the reference. Two uninterrupted
runs giving the same metrics is the determinism the README promises on the CPU; this test checks the stronger form.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from dvc_repo import DVC, make_repo, sh  # tests/dvc_repo.py
from pipeline.io.features import FeatureStore

pytestmark = pytest.mark.slow

TARGETS = ["prepare", "extract@iresnet", "train@0", "predict"]


def repro_killed_during(repo: Path, stage: str, rng: random.Random) -> bool:
    """Start `dvc repro`; once ``stage`` has run for a random 0.2-1.5 s, kill -9 its whole process group. True if
    it was killed (False: the run ended before, e.g. the stage was already done)."""
    p = subprocess.Popen([*DVC, "repro"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                         start_new_session=True)
    assert p.stdout is not None
    for line in p.stdout:
        if line.startswith(f"Running stage '{stage}'"):
            time.sleep(rng.uniform(0.2, 1.5))
            if p.poll() is None:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
                return True
    p.wait()
    return False


def outputs(repo: Path) -> dict:
    out = {
        "cv": json.loads((repo / "metrics" / "cv.json").read_text()),
        "predictions": (repo / "predictions" / "test.txt").read_text(),
        "folds": (repo / "data" / "prepared" / "folds.json").read_text(),
        "index": (repo / "data" / "prepared" / "index.json").read_text(),
    }
    for m in ("iresnet", "vggish", "mfcc"):
        s = FeatureStore.open(repo / "features" / f"{m}.zarr")
        out[m] = {t: (s.read(t), s.mask(t)) for t in s.trials}
    return out


def test_kill_9_during_each_stage_then_repro_equals_an_uninterrupted_run(tmp_path):
    ref = make_repo(tmp_path / "ref")
    sh([*DVC, "repro"], ref)
    run = make_repo(tmp_path / "run")
    rng = random.Random(0)
    killed = [s for s in TARGETS if repro_killed_during(run, s, rng)]
    assert killed == TARGETS  # every target was really interrupted
    sh([*DVC, "repro"], run)
    left = [p for p in run.rglob("*.tmp") if ".dvc" not in p.parts]
    assert not left, left  # no temporary file survives a completed run
    a, b = outputs(ref), outputs(run)
    for k in ("cv", "predictions", "folds", "index"):
        assert a[k] == b[k], k
    for m in ("iresnet", "vggish", "mfcc"):
        for t, (rows, mask) in a[m].items():
            np.testing.assert_array_equal(b[m][t][0], rows, err_msg=f"{m} {t}")
            np.testing.assert_array_equal(b[m][t][1], mask)
