"""`python -m pipeline cluster repro --slurm` on a real single-node Slurm (slurmctld + slurmd started by the test,
tests/helpers/slurm.py) with the shrunken demo of tests/helpers/dvc_repo.py: its stages run as Slurm jobs, two at
once, and end as a local `dvc repro` ends; a job cancelled with `scancel` in the middle of its stage, then the same
command again (with that extraction as two `--shard` jobs), ends with the outputs of an uninterrupted run; a sweep
ends as a DVC experiment.

Skipped, with one line, where Slurm is not installed or cannot start (`.ci/run` installs slurm-wlm).
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline.io.features import FeatureStore
from tests.helpers.dvc_repo import DVC, make_repo, sh
from tests.helpers.slurm import LocalSlurm, SlurmUnavailable

pytestmark = [pytest.mark.slurm, pytest.mark.slow]

CLUSTER = [sys.executable, "-m", "pipeline", "cluster"]
TIMED = re.compile(r"^metrics/(backbone|fold\d+)\.json$")  # the only outputs that hold wall times


@pytest.fixture(scope="module")
def slurm(tmp_path_factory):
    try:
        s = LocalSlurm(tmp_path_factory.mktemp("slurm"), cpus=2).start()
    except SlurmUnavailable as e:
        pytest.skip(f"slurm: {e}")
    yield s
    s.stop()


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The shrunken demo after a local `dvc repro`."""
    repo = make_repo(tmp_path_factory.mktemp("ref") / "repo")
    sh([*DVC, "repro"], repo)
    return repo


@pytest.fixture(scope="module")
def on_slurm(slurm, tmp_path_factory) -> tuple[Path, str]:
    """The shrunken demo after `cluster repro --slurm`; and what the command printed."""
    repo = make_repo(tmp_path_factory.mktemp("slurm-run") / "repo")
    p = subprocess.run([*CLUSTER, "repro", "--slurm", "--poll", "0.5"], cwd=repo, env=slurm.env, capture_output=True,
                       text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    return repo, p.stdout


def untimed(doc):
    """A metrics document without its wall times (two local runs differ in them too)."""
    if isinstance(doc, dict):
        return {k: untimed(v) for k, v in doc.items() if k not in ("seconds", "data_wait_share") and not k.endswith("_per_s")}
    return doc


def comparable(repo: Path) -> dict:
    """dvc.lock without the hashes of the outputs that hold wall times, and those outputs without them."""
    stages = yaml.safe_load((repo / "dvc.lock").read_text())["stages"]
    for entry in stages.values():
        entry["outs"] = [o if not TIMED.match(o["path"]) else {"path": o["path"]} for o in entry.get("outs", [])]
    timed = {str(p.relative_to(repo)): untimed(json.loads(p.read_text())) for p in (repo / "metrics").glob("*.json")}
    return {"lock": stages, "timed": timed}


def results(repo: Path) -> dict[str, dict]:
    return {f.name.removesuffix(".result.json"): json.loads(f.read_text())
            for f in sorted((repo / ".dvc" / "tmp" / "cluster").glob("*/*.result.json"))}


def job_ids(stdout: str) -> dict[str, str]:
    """Step -> Slurm job id, from the lines `cluster repro` prints when it submits."""
    return {m[1]: m[2] for m in re.finditer(r"^(\S+): job (\d+)", stdout, re.M)}


def ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


def test_stages_run_as_slurm_jobs_two_at_once(slurm, on_slurm):
    repo, stdout = on_slurm
    ids = job_ids(stdout)
    assert set(ids) == {"demo", "crop", "scan", "backbone", "prepare", "split", "extract@iresnet", "extract@vggish",
                        "extract@mfcc", "modalities", "train@0", "train@1", "train@2", "evaluate", "predict"}
    states = sh(["squeue", "--noheader", "--states=all", "--format=%i %T", f"--jobs={','.join(ids.values())}"], repo,
                env=slurm.env)
    assert {line.split()[1] for line in states.splitlines()} == {"COMPLETED"}, states
    r = results(repo)
    assert {k: v["outcome"] for k, v in r.items()} == {k: "ran" for k in ids}
    spans = sorted((v["started"], v["ended"]) for v in r.values())
    overlaps = sum(1 for (a0, a1), (b0, b1) in zip(spans, spans[1:]) if b0 < a1)
    assert overlaps >= 1, spans  # at least two jobs ran at once
    assert "running (job" in stdout and "recorded in dvc.lock" in stdout


def test_slurm_run_records_what_a_local_run_records(on_slurm, reference):
    repo, _ = on_slurm
    assert comparable(repo) == comparable(reference)
    for f in ("predictions/test.txt", "metrics/cv.json", "data/prepared/folds.json"):
        assert (repo / f).read_bytes() == (reference / f).read_bytes(), f
    assert sh(["git", "status", "--short"], repo) == sh(["git", "status", "--short"], reference)
    show = [json.loads(sh([*DVC, "metrics", "show", "--json"], r).splitlines()[0]) for r in (repo, reference)]
    assert show[0] == show[1]


def test_a_following_dvc_repro_is_a_no_op(on_slurm):
    repo, _ = on_slurm
    assert ran(sh([*DVC, "repro"], repo)) == {"scan"}  # scan always runs; its manifest comes out the same


class Follower:
    """`cluster repro --slurm` in the background; a thread collects its output lines."""

    def __init__(self, repo: Path, env: dict[str, str]) -> None:
        self.p = subprocess.Popen([*CLUSTER, "repro", "--slurm", "--poll", "0.5"], cwd=repo, env=env,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.lines: list[str] = []
        self.reader = threading.Thread(target=lambda: self.lines.extend(iter(self.p.stdout.readline, "")), daemon=True)
        self.reader.start()

    def finish(self) -> tuple[int, str, str]:
        rc = self.p.wait(timeout=900)
        self.reader.join()
        return rc, "".join(self.lines), self.p.stderr.read()


def test_a_job_cancelled_mid_stage_then_a_rerun_equals_an_uninterrupted_run(slurm, reference, tmp_path):
    repo = make_repo(tmp_path / "repo")
    run = Follower(repo, slurm.env)
    step = "extract@vggish"
    while not any(line.startswith(f"{step}: running") for line in run.lines):
        assert run.p.poll() is None, "".join(run.lines)
        time.sleep(0.2)
    job = job_ids("".join(run.lines))[step]
    log = next((repo / ".dvc" / "tmp" / "cluster").glob(f"*/{step}.log"))
    while "> python -m pipeline extract vggish" not in (log.read_text() if log.exists() else ""):
        time.sleep(0.2)
    time.sleep(4)  # the extraction is under way (it takes about 20 s here)
    sh(["scancel", job], repo, env=slurm.env)
    rc, out, err = run.finish()
    assert rc == 2, out + err
    cancelled = [ln for ln in out.splitlines() if ln.startswith(f"{step}: cancelled")]
    assert cancelled == [f"{step}: cancelled (job {job}); log: {log.relative_to(repo)}"] or cancelled[0].endswith(
        f"log: {log}"), out
    assert len(err.strip().splitlines()) == 1 and step in err, err
    assert "recorded" not in log.read_text()
    locked = set(yaml.safe_load((repo / "dvc.lock").read_text())["stages"])
    assert step not in locked and not any(s.startswith("train@") for s in locked)  # nothing half-written recorded
    # the same command again, the extraction now as two --shard jobs that finish the cancelled store side by side:
    # only what is still out of date is submitted after the scan
    p = subprocess.run([*CLUSTER, "repro", "--slurm", "--extract-shards", "2", "--poll", "0.5"], cwd=repo,
                       env=slurm.env, capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    shards = {f"{step}.shard0of2", f"{step}.shard1of2"}
    assert set(job_ids(p.stdout)) == {"scan", *shards, step, "modalities", "train@0", "train@1", "train@2", "evaluate", "predict"}, p.stdout
    assert f"{step}: job {job_ids(p.stdout)[step]}, after {step}.shard0of2, {step}.shard1of2" in p.stdout
    r = results(repo)
    assert {r[s]["outcome"] for s in shards} == {"ran"} and r[step]["outcome"] == "ran"
    assert comparable(repo) == comparable(reference)
    a, b = FeatureStore.open(reference / "features" / "vggish.zarr"), FeatureStore.open(repo / "features" / "vggish.zarr")
    for t in a.trials:
        np.testing.assert_array_equal(b.read(t), a.read(t), err_msg=t)
    assert (repo / "predictions" / "test.txt").read_text() == (reference / "predictions" / "test.txt").read_text()
    assert ran(sh([*DVC, "repro"], repo)) == {"scan"}


def test_a_sweep_on_slurm_ends_as_a_dvc_experiment(slurm, on_slurm):
    repo, _ = on_slurm
    p = subprocess.run([*CLUSTER, "exp", "-S", "train.epochs=1", "--slurm", "--poll", "0.5"], cwd=repo, env=slurm.env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stdout[-4000:] + p.stderr[-4000:]
    assert "epochs1: saved as a DVC experiment (train.epochs=1)" in p.stdout
    shown = json.loads(sh([*DVC, "exp", "show", "--json"], repo).splitlines()[0])
    (exp,) = [e for row in shown for group in row.get("experiments") or [] for e in group["revs"]]
    assert exp["name"] == "epochs1" and exp["data"]["params"]["params.yaml"]["data"]["train"]["epochs"] == 1
    assert "metrics/cv.json" in exp["data"]["metrics"]
