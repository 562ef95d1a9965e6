"""A read-only or full output folder: one line naming the path, exit status 2, no traceback, inputs intact.

The real faults use a small tmpfs mounted for the test (skipped where this process may not mount); the same
handling is also checked with simulated write errors, which need no privilege."""

from __future__ import annotations

import errno
import hashlib
import subprocess
import uuid
from pathlib import Path

import pytest

from pipeline.common.errors import PipelineError
from pipeline.common.outputs import OutputError, guard
from pipeline.training.synthetic import make_synthetic
from tests.helpers.cli import invoke
from tests.helpers.tiny import SHAPES


@pytest.fixture
def tmpfs(tmp_path):
    """``mount(size, read_only)`` -> a fresh tmpfs folder; unmounted afterwards."""
    mounted: list[Path] = []

    def mount(size: str, read_only: bool = False) -> Path:
        d = tmp_path / f"mnt-{uuid.uuid4().hex[:6]}"
        d.mkdir()
        opts = f"size={size}" + (",ro" if read_only else "")
        p = subprocess.run(["mount", "-t", "tmpfs", "-o", opts, "tmpfs", str(d)], capture_output=True, text=True)
        if p.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here ({p.stderr.strip()[:80]})")
        mounted.append(d)
        return d

    yield mount
    for d in mounted:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


def digest(folder: Path) -> str:
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        if p.is_file():
            h.update(p.name.encode() + p.read_bytes())
    return h.hexdigest()


def one_line_error(result, *needles: str) -> None:
    assert result.exit_code == 2, result.output
    errors = [line for line in result.output.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in result.output, result.output
    for n in needles:
        assert n in errors[0], errors[0]


def test_read_only_output_folder_fails_before_any_work(tmp_path, tmpfs):
    prepared, features = make_synthetic(tmp_path / "d", n_trials=4, n_test=1, frames=60, n_folds=2, row_shapes=SHAPES)
    ro = tmpfs("1m", read_only=True)
    before = digest(prepared)
    r = invoke("split", "--prepared", str(prepared), "--out", str(ro / "folds.json"))
    one_line_error(r, str(ro), "cannot write here", "Read-only file system")
    r = invoke("train", "--fold", "0", "--prepared", str(prepared), "--features", str(features),
               "--models", str(ro / "models"), "--metrics", str(tmp_path / "metrics"))
    one_line_error(r, str(ro / "models"), "Read-only")
    r = invoke("backbone", "--out", str(ro / "backbone"), "--metrics", str(tmp_path / "b.json"),
               "--plots", str(tmp_path / "b"))
    one_line_error(r, str(ro / "backbone"), "Read-only")
    assert digest(prepared) == before


def test_full_disk_is_one_line_and_inputs_stay_intact(tmp_path, tmpfs):
    prepared, features = make_synthetic(tmp_path / "d", n_trials=4, n_test=1, frames=60, n_folds=2, row_shapes=SHAPES)
    full = tmpfs("64k")
    before = digest(prepared), digest(features)
    r = invoke("extract", "mfcc", "--prepared", str(prepared), "--out", str(full / "mfcc.zarr"), "--device", "cpu")
    one_line_error(r, str(full), "no space left")
    p = tmp_path / "params.yaml"
    p.write_text("model: {tcn_channels: 64, d_model: 64, heads: 2, layers: 2, ff_dim: 512}\ntrain: {window: 40, hop: 20, epochs: 1}\n")
    r = invoke("train", "--fold", "0", "--prepared", str(prepared), "--features", str(features),
               "--models", str(full / "models"), "--metrics", str(tmp_path / "m"), "--params", str(p))
    one_line_error(r, str(full / "models"), "no space left")
    assert (digest(prepared), digest(features)) == before
    assert not (full / "models" / "fold0" / "model.pt").exists()  # nothing half-written under the final name


@pytest.mark.parametrize(
    ("exc", "needle"),
    [(OSError(errno.ENOSPC, "No space left on device"), "no space left"),
     (OSError(errno.EROFS, "Read-only file system", "/x/y"), "/x/y: cannot write (Read-only file system)")],
)
def test_guard_turns_write_failures_into_one_line(tmp_path, exc, needle):
    with pytest.raises(OutputError, match=needle.replace("(", r"\(").replace(")", r"\)")):
        with guard(tmp_path / "out.json"):
            raise exc
    with pytest.raises(ValueError):  # anything else keeps its traceback: it is a bug, not the user's disk
        with guard(tmp_path / "out.json"):
            raise ValueError("bug")
    assert issubclass(OutputError, PipelineError)
