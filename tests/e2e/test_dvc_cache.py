"""The repository's DVC cache setting: a stage's output is linked into the cache, not copied (a 26 GB feature
store must not cost 52 GB), and a re-run of the stage after a change still works on the read-only linked files."""

from __future__ import annotations

import os
import shutil
import sys

from tests.helpers import ROOT
from tests.helpers.dvc_repo import sh

STAGE = """
stages:
  make:
    cmd: python -c "import os, pathlib, sys; p = pathlib.Path('out'); p.mkdir(exist_ok=True); (p / 'rows.bin').write_bytes(os.urandom(4 << 20)); (p / 'n.txt').write_text(pathlib.Path('n').read_text())"
    deps: [n]
    outs:
      - out:
          persist: true
"""


def test_outputs_are_linked_into_the_cache_not_copied(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    sh(["git", "init", "-q"], repo)
    sh([sys.executable, "-m", "dvc", "init", "-q"], repo)
    shutil.copy(ROOT / ".dvc" / "config", repo / ".dvc" / "config")
    (repo / "dvc.yaml").write_text(STAGE)
    (repo / "n").write_text("1")
    sh([sys.executable, "-m", "dvc", "repro", "-q"], repo)
    out = repo / "out" / "rows.bin"
    st = os.stat(out)
    assert st.st_nlink == 2  # the workspace file and the cache object are one inode
    cached = [p for p in (repo / ".dvc" / "cache").rglob("*") if p.is_file() and p.stat().st_ino == st.st_ino]
    assert len(cached) == 1
    # a changed dependency re-runs the stage over the read-only linked output (persist: true, as extract@*)
    (repo / "n").write_text("2")
    shutil.rmtree(repo / "out")  # what a stage that rebuilds its store does with a stale one
    sh([sys.executable, "-m", "dvc", "repro", "-q"], repo)
    assert (repo / "out" / "n.txt").read_text() == "2" and os.stat(repo / "out" / "rows.bin").st_nlink == 2
