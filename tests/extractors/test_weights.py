"""Faulty weights files: each is one line naming the file, nothing in the file runs, and the random-init label is
one visible line per run (docs/faults.md lists these cases)."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from pipeline.common.config import IResNetConfig, VGGishConfig
from pipeline.extractors import build
from pipeline.extractors.iresnet import IResNet
from pipeline.extractors.weights import RandomInitWarning, WeightsError, load_state_dict
from tests.helpers import ROOT
from tests.helpers.cli import invoke


class _RunsCode:
    """Pickles to ``os.makedirs(marker)``: loading the file with plain ``pickle`` would create the folder."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return (os.makedirs, (self.marker,))


def _one_line(e: pytest.ExceptionInfo, path: Path) -> str:
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(str(path)), msg
    return msg


def _small_state(path: Path) -> Path:
    torch.save({"conv1.weight": torch.randn(64, 3, 3, 3), "bn1.weight": torch.ones(64)}, path)
    return path


def test_another_architecture_names_the_first_missing_keys(tmp_path):
    """An IResNet-18 file (layers 2, 2, 2, 2) for the IResNet-50 network."""
    path = tmp_path / "r18.pth"
    torch.save(IResNet((2, 2, 2, 2)).state_dict(), path)
    with pytest.raises(WeightsError) as e:
        build("iresnet", IResNetConfig(weights=str(path)), 48, "cpu")
    msg = _one_line(e, path)
    assert "does not fit the network (IResNet" in msg
    assert "missing (first: layer1.2.bn1.weight, layer1.2.bn1.bias, layer1.2.bn1.running_mean)" in msg
    assert "0 unexpected" in msg and "0 of another shape" in msg


def test_another_shape_names_the_first_mismatched_keys(tmp_path):
    """IResNet-50 with a 128-d embedding: every name fits, two layers' shapes do not."""
    path = tmp_path / "r50-128.pth"
    torch.save(IResNet(num_features=128).state_dict(), path)
    with pytest.raises(WeightsError) as e:
        build("iresnet", IResNetConfig(weights=str(path)), 48, "cpu")
    msg = _one_line(e, path)
    assert "0 missing; 0 unexpected" in msg
    assert "of another shape (first: fc.weight (128, 25088) in the file, (512, 25088) in the network, fc.bias" in msg


def test_a_pickle_that_would_run_code_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "backbone.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "evil": _RunsCode(marker)}, path)
    with pytest.raises(WeightsError) as e:
        build("iresnet", IResNetConfig(weights=str(path)), 48, "cpu")
    msg = _one_line(e, path)
    assert "refused" in msg and "os.makedirs" in msg and "nothing in it was run" in msg
    assert not marker.exists()
    # the test's own check: plain unpickling of the same file does run the code
    torch.load(path, weights_only=False)
    assert marker.is_dir()


def test_the_cli_prints_the_refusal_as_one_line(make_prepared, tmp_path):
    """The real `extract` command: exit status 2, one `error:` line naming the file, no traceback, no code run."""
    index = make_prepared({"a": {"n": 4}}, size=16)
    marker = tmp_path / "code-ran"
    path = tmp_path / "backbone.pth"
    torch.save({"evil": _RunsCode(marker)}, path)
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"features": {"iresnet": {"weights": str(path)}}}))
    r = invoke(*["extract", "iresnet", "--prepared", str(index.root), "--out",
                                 str(tmp_path / "i.zarr"), "--device", "cpu", "--params", str(params)])
    assert r.exit_code == 2, r.output
    lines = [line for line in r.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: refused"), r.output
    assert not marker.exists() and not (tmp_path / "i.zarr").exists()


@pytest.mark.parametrize("keep", [0.5, 0.98])
def test_a_truncated_file_is_one_line(tmp_path, keep):
    full = _small_state(tmp_path / "full.pth").read_bytes()
    path = tmp_path / "cut.pth"
    path.write_bytes(full[: int(len(full) * keep)])
    with pytest.raises(WeightsError) as e:
        load_state_dict(path)
    msg = _one_line(e, path)
    assert f"not a readable torch checkpoint ({path.stat().st_size} bytes; truncated, corrupt" in msg


def test_a_truncated_legacy_file_is_one_line(tmp_path):
    full = tmp_path / "legacy.pth"
    torch.save({"w": torch.randn(50, 50)}, full, _use_new_zipfile_serialization=False)
    path = tmp_path / "cut.pth"
    path.write_bytes(full.read_bytes()[:5000])
    with pytest.raises(WeightsError) as e:
        load_state_dict(path)
    assert "not a readable torch checkpoint" in _one_line(e, path)


def test_a_file_of_another_format_is_one_line(tmp_path):
    path = tmp_path / "notes.pth"
    path.write_text("these are not weights\n")
    with pytest.raises(WeightsError) as e:
        build("vggish", VGGishConfig(weights=str(path)), 48, "cpu")
    assert "not a readable torch checkpoint" in _one_line(e, path)


def test_a_wrong_sha256_stops_before_the_file_is_opened(tmp_path):
    marker = tmp_path / "code-ran"
    path = tmp_path / "backbone.pth"
    torch.save({"evil": _RunsCode(marker)}, path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    wrong = "1" * 64
    with pytest.raises(WeightsError) as e:
        build("iresnet", IResNetConfig(weights=str(path), sha256=wrong), 48, "cpu")
    msg = _one_line(e, path)
    assert f"sha256 is {digest}" in msg and f"features.iresnet.sha256 expects {wrong}" in msg
    assert not marker.exists()


def test_numpy_arrays_still_load(tmp_path):
    """torchvggish's PCA file holds numpy arrays: their reconstruction is allowed, nothing else."""
    import numpy as np

    path = tmp_path / "pca.pth"
    torch.save({"pca_eigen_vectors": np.eye(3, dtype=np.float32), "pca_means": np.zeros(3)}, path)
    state = load_state_dict(path)
    assert torch.equal(state["pca_eigen_vectors"], torch.eye(3))


def test_random_init_warning_is_one_visible_line(make_prepared, tmp_path):
    """A real `python -m pipeline extract` without weights prints the random-init label once, not twice."""
    index = make_prepared({"a": {"n": 6}}, size=16)
    env = {**os.environ, "PYTHONWARNINGS": ""}
    (tmp_path / "params.yaml").write_text("features: {}\n")  # every weights file null
    p = subprocess.run(
        [sys.executable, "-m", "pipeline", "extract", "vggish", "--prepared", str(index.root), "--out",
         str(tmp_path / "v.zarr"), "--device", "cpu", "--params", str(tmp_path / "params.yaml")],
        cwd=ROOT, capture_output=True, text=True, env=env, timeout=300,
    )
    assert p.returncode == 0, p.stderr[-2000:]
    hits = [line for line in (p.stdout + p.stderr).splitlines() if "RANDOMLY INITIALISED" in line]
    assert len(hits) == 1 and hits[0].startswith("WARNING: vggish: no weights file"), hits


def test_random_init_is_loud_and_deterministic():
    with pytest.warns(RandomInitWarning):
        a = build("vggish", VGGishConfig(), 48, "cpu")
    with pytest.warns(RandomInitWarning):
        b = build("vggish", VGGishConfig(), 48, "cpu")
    assert a.weights == "random-init"
    x = torch.randn(3, 1, 96, 64)
    with torch.inference_mode():
        np.testing.assert_array_equal(a.forward(x).numpy(), b.forward(x).numpy())

