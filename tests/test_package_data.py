"""The paper's tables ship with `pip install`: a wheel built from the project holds pipeline/scoring/paper_tables.json."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_wheel_ships_the_paper_tables(tmp_path):
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    shutil.copytree(ROOT / "pipeline", src / "pipeline", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / f, src / f)
    p = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w",
         str(tmp_path / "dist"), str(src)],
        capture_output=True, text=True, timeout=300,
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    (wheel,) = (tmp_path / "dist").glob("va_pipeline-*.whl")
    with zipfile.ZipFile(wheel) as z:
        shipped = json.loads(z.read("pipeline/scoring/paper_tables.json"))
    assert shipped == json.loads((ROOT / "pipeline" / "scoring" / "paper_tables.json").read_text())
