"""The paper's published tables: read from the package data, which a wheel built from the project ships."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zipfile

import pytest

from tests.helpers import ROOT


def test_paper_tables_ship_with_the_package():
    from pipeline.scoring import paper

    t2 = paper.table2()
    assert len(t2) == 8 and t2[(True, True, True)] == 0.6356 and t2[(False, False, False)] == 0.3108
    assert paper.table3()[5] == {"valence": 0.6123, "arousal": 0.6589, "mean": 0.6356}
    assert "2403.12425" in paper.citation()


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
