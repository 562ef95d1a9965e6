"""The walk (pipeline/cluster/driver.py) end to end: `cluster repro --local -j N` on a small real DVC repository (a
few shell-sized stages, a foreach, a stage that always runs), the same plan, job scripts and job runner as `--slurm`
with local processes for jobs, in seconds; the shrunken demo on a real Slurm is tests/e2e/test_cluster_slurm.py.
And the guard against a second run while an earlier run's jobs are active."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.cluster import ClusterError
from pipeline.cluster.driver import JOBS_FILE, RUNS, check_no_active_run
from tests.helpers import ROOT
from tests.helpers.dvc_repo import DVC, sh

CLUSTER = [sys.executable, "-m", "pipeline", "cluster"]

DVC_YAML = {
    "stages": {
        "look": {"cmd": "python look.py", "deps": ["look.py"], "outs": ["look.txt"], "always_changed": True},
        "gen": {"cmd": "python gen.py", "deps": ["gen.py", "look.txt"], "params": ["n"], "outs": ["data/x.txt"]},
        "part": {
            "foreach": [1, 2],
            "do": {"cmd": "python part.py ${item}", "deps": ["part.py", "data/x.txt"], "outs": ["out/${item}.txt"]},
        },
        "total": {"cmd": "python total.py", "deps": ["total.py", "out"], "outs": ["total.txt"]},
    }
}
SCRIPTS = {
    "look.py": "open('look.txt', 'w').write('same every time\\n')\n",
    "gen.py": "import yaml, os\nos.makedirs('data', exist_ok=True)\n"
              "open('data/x.txt', 'w').write(str(yaml.safe_load(open('params.yaml'))['n']))\n",
    # each part sleeps so that two at once is visible; `fail-<k>` makes part k fail half-way through its output
    "part.py": "import os, sys, time\nk = sys.argv[1]\nos.makedirs('out', exist_ok=True)\n"
               "f = open(f'out/{k}.txt', 'w'); f.write(str(int(open('data/x.txt').read()) * int(k)))\n"
               "time.sleep(1.5)\nf.flush()\nsys.exit(3 if os.path.exists(f'fail-{k}') else 0)\n",
    "total.py": "import glob\nopen('total.txt', 'w').write(str(sum(int(open(p).read()) for p in sorted(glob.glob('out/*.txt')))))\n",
}


def tiny_repo(dst: Path, n: int = 5) -> Path:
    dst.mkdir()
    for name, text in SCRIPTS.items():
        (dst / name).write_text(text)
    (dst / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    (dst / "params.yaml").write_text(f"n: {n}\n")
    # as this repository ignores /models/: no .gitignore inside out/, whose lines jobs that end in another order
    # than `dvc repro` runs them would write in another order (out/ is a dependency of total)
    (dst / ".gitignore").write_text("/out/\n/data/\n")
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@localhost", "-c", "init.defaultBranch=main"]
    sh([*git, "init", "-q"], dst)
    sh([*DVC, "init", "-q"], dst)
    sh([*DVC, "config", "core.autostage", "true"], dst)
    sh([*git, "add", "-A"], dst)
    sh([*git, "commit", "-qm", "tiny"], dst)
    return dst


def cluster(repo: Path, *args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline cluster ...` in ``repo`` with this checkout's package."""
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    return subprocess.run([*CLUSTER, *args], cwd=repo, capture_output=True, text=True, env=env, timeout=300)


def lock(repo: Path) -> dict:
    return yaml.safe_load((repo / "dvc.lock").read_text())["stages"]


def results(repo: Path) -> dict[str, dict]:
    """Every step's result file of every run in ``repo``, by step (the last run's wins)."""
    out = {}
    for f in sorted((repo / ".dvc" / "tmp" / "cluster").glob("*/*.result.json")):
        out[f.name.removesuffix(".result.json")] = json.loads(f.read_text())
    return out


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    repo = tiny_repo(tmp_path_factory.mktemp("ref") / "repo")
    sh([*DVC, "repro"], repo)
    return repo


def test_local_run_equals_dvc_repro_and_leaves_nothing_to_do(tmp_path, reference):
    repo = tiny_repo(tmp_path / "repo")
    p = cluster(repo, "repro", "--local", "-j", "2", "--poll", "0.2")
    assert p.returncode == 0, p.stdout + p.stderr
    assert lock(repo) == lock(reference)
    assert (repo / "total.txt").read_text() == "15"
    r = results(repo)
    assert {k: v["outcome"] for k, v in r.items()} == {s: "ran" for s in ("look", "gen", "part@1", "part@2", "total")}
    assert r["part@1"]["started"] < r["part@2"]["ended"] and r["part@2"]["started"] < r["part@1"]["ended"]  # two at once
    assert "part@1: ran in" in p.stdout and "recorded in dvc.lock" in p.stdout
    status = json.loads(sh([*DVC, "status", "--json"], repo).splitlines()[-1])
    assert status == {"look": ["always changed"]}
    assert sh(["git", "status", "--short"], repo) == sh(["git", "status", "--short"], reference)  # same files staged
    # like `dvc repro`: only the stage that always runs, whose output came out the same
    again = cluster(repo, "repro", "--local", "-j", "2", "--poll", "0.2")
    assert again.returncode == 0 and [ln for ln in again.stdout.splitlines() if ": job " in ln] == ["look: job 1"], again.stdout
    assert "Running stage 'look'" in sh([*DVC, "repro"], repo) and lock(repo) == lock(reference)


def test_a_changed_param_reruns_what_reads_it(tmp_path, reference):
    repo = tiny_repo(tmp_path / "repo")
    assert cluster(repo, "repro", "--local", "-j", "2", "--poll", "0.2").returncode == 0
    (repo / "params.yaml").write_text("n: 7\n")
    p = cluster(repo, "repro", "--local", "-j", "2", "--poll", "0.2")
    assert p.returncode == 0, p.stdout + p.stderr
    submitted = [ln.split(":")[0] for ln in p.stdout.splitlines() if ": job " in ln]
    assert submitted == ["look", "gen", "part@1", "part@2", "total"]
    assert (repo / "total.txt").read_text() == "21"
    assert json.loads(sh([*DVC, "status", "--json"], repo).splitlines()[-1]) == {"look": ["always changed"]}


def test_a_failed_job_is_one_line_with_its_log_and_nothing_half_written_is_recorded(tmp_path, reference):
    repo = tiny_repo(tmp_path / "repo")
    (repo / "fail-2").touch()
    p = cluster(repo, "repro", "--local", "-j", "2", "--poll", "0.2")
    assert p.returncode == 2
    (err,) = p.stderr.strip().splitlines()
    assert err.startswith("error: 1 of 5 step(s) failed, first part@2 (failed): log .dvc/tmp/cluster/") and "part@2.log" in err
    log = repo / err.split("log ")[1].split(";")[0]
    assert "> python part.py 2" in log.read_text()
    assert any(ln.startswith("part@2: failed (exit 3)") and ln.endswith("part@2.log") for ln in p.stdout.splitlines())
    assert "total: not run (a step it waits for did not succeed)" in p.stdout
    assert set(lock(repo)) == {"look", "gen", "part@1"}  # part@2 wrote its output, but failed: not recorded
    # fixed, then the same command: only what is still out of date runs
    (repo / "fail-2").unlink()
    again = cluster(repo, "repro", "--local", "-j", "2", "--poll", "0.2")
    assert again.returncode == 0, again.stdout + again.stderr
    assert [ln.split(":")[0] for ln in again.stdout.splitlines() if ": job " in ln] == ["look", "part@2", "total"]
    assert lock(repo) == lock(reference)


def test_dry_run_prints_the_plan_and_submits_nothing(tmp_path):
    repo = tiny_repo(tmp_path / "repo")
    p = cluster(repo, "repro", "total", "--dry")
    assert p.returncode == 0, p.stderr
    assert p.stdout.splitlines() == [
        "look: python look.py", "gen after look: python gen.py", "part@1 after gen: python part.py 1",
        "part@2 after gen: python part.py 2", "total after part@1, part@2: python total.py"]
    assert not (repo / ".dvc" / "tmp" / "cluster").exists()


def test_unknown_target_is_one_line(tmp_path):
    repo = tiny_repo(tmp_path / "repo")
    p = cluster(repo, "repro", "nope", "--local")
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1 and "nope" in p.stderr, p.stderr


class StillRunning:
    """An executor for which every job is still running."""

    name = "slurm"

    def states(self, ids):
        return {j: ("RUNNING", "None") for j in ids}


def test_a_run_is_refused_while_jobs_of_an_earlier_one_are_active(tmp_path):
    check_no_active_run(tmp_path, StillRunning())  # no earlier run
    (tmp_path / RUNS / "earlier").mkdir(parents=True)
    (tmp_path / RUNS / "earlier" / JOBS_FILE).write_text('{"executor": "slurm", "jobs": {"scan": "41", "prepare": "42"}}')
    with pytest.raises(ClusterError, match=r"^jobs 41, 42 of an earlier run in .* are still queued or running"):
        check_no_active_run(tmp_path, StillRunning())
