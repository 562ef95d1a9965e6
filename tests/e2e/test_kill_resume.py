"""`kill -9` in the middle of a stage, then `dvc repro`: the run completes and ends with exactly the outputs of an
uninterrupted run (CPU), and nothing half-written ever looked finished to DVC.

One repository is killed in turn during prepare, each extraction, a fold's training and predict (each at a random
moment of the stage, fixed seed), then completed; a second, never interrupted, is the reference. Two uninterrupted
runs giving the same metrics is the determinism the README promises on the CPU; this test checks the stronger form.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from pipeline.io.features import FeatureStore
from tests.helpers.dvc_repo import DVC, make_repo, sh

pytestmark = pytest.mark.slow

TARGETS = ["prepare", "extract@iresnet", "extract@vggish", "extract@mfcc", "train@0", "predict"]


class Repro:
    """`dvc repro` in ``repo`` in its own process group; a thread collects its output lines with their times."""

    def __init__(self, repo: Path) -> None:
        self.p = subprocess.Popen([*DVC, "repro"], cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                  text=True, start_new_session=True)
        self.lines: list[tuple[float, str]] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.p.stdout is not None
        for line in self.p.stdout:
            self.lines.append((time.monotonic(), line))

    def stages(self) -> list[tuple[float, str]]:
        return [(t, line.split("'")[1]) for t, line in list(self.lines) if line.startswith("Running stage '")]

    def wait(self) -> int:
        rc = self.p.wait()
        self.reader.join()
        return rc


def stage_seconds(repo: Path) -> dict[str, float]:
    """Run `dvc repro` to the end; seconds from each stage's start to the next one's (or the end)."""
    r = Repro(repo)
    assert r.wait() == 0, "".join(line for _, line in r.lines)[-4000:]
    end = r.lines[-1][0]
    starts = r.stages()
    return {s: (starts[i + 1][0] if i + 1 < len(starts) else end) - t for i, (t, s) in enumerate(starts)}


def repro_killed_during(repo: Path, stage: str, delay: float) -> str:
    """Start `dvc repro`; ``delay`` seconds after ``stage`` starts, kill -9 its whole process group. Returns the stage
    that was running when it was killed ("" if the run had ended)."""
    r = Repro(repo)
    while not any(s == stage for _, s in r.stages()):
        if r.p.poll() is not None:
            r.reader.join()
            assert any(s == stage for _, s in r.stages()), f"{stage} never ran"
            break
        time.sleep(0.02)
    time.sleep(delay)
    running = r.stages()[-1][1] if r.p.poll() is None else ""
    if running:
        os.killpg(r.p.pid, signal.SIGKILL)
    r.wait()
    return running


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
    seconds = stage_seconds(ref)
    run = make_repo(tmp_path / "run")
    rng = random.Random(0)
    # each target killed at a random point of the first 10-60 % of the time it took in the reference run
    killed = [repro_killed_during(run, s, rng.uniform(0.1, 0.6) * seconds[s]) for s in TARGETS]
    assert killed == TARGETS, f"killed during {killed}; the reference run's stages took {seconds}"
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
