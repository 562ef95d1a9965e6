"""Shared fixtures: tiny prepared datasets built in tmp_path (pipeline/training/synthetic.py writes them), and the
real media folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.common.config import DemoConfig
from pipeline.io.prepared import PreparedIndex
from pipeline.stages import demo
from pipeline.training.synthetic import make_synthetic, write_prepared
from tests.helpers import REALMEDIA
from tests.helpers.tiny import SMALL_SHAPES


@pytest.fixture(scope="session")
def realmedia() -> Path:
    """``../shared/realmedia``; tests using it are skipped cleanly when it is absent."""
    if not REALMEDIA.is_dir():
        pytest.skip(f"{REALMEDIA} not present")
    return REALMEDIA


@pytest.fixture
def make_prepared(tmp_path: Path) -> Callable[..., PreparedIndex]:
    """Factory: ``make_prepared({"t1": {"n": 50}, ...}, size=16)`` -> index of tmp_path/prepared."""

    def factory(trials: dict[str, dict], size: int = 16, seed: int = 0, out: Path | None = None) -> PreparedIndex:
        return write_prepared(out or tmp_path / "prepared", trials, size=size, seed=seed)

    return factory


@pytest.fixture(scope="session")
def small_stores(tmp_path_factory) -> tuple[Path, Path]:
    """``(prepared, features)``: synthetic float16 stores (as the extractors write them) of 4 training and 2 test
    trials of about 60 frames in rows of :data:`~tests.helpers.tiny.SMALL_SHAPES`; trial syn00 starts without a
    face, syn05 has no audio at all."""
    return make_synthetic(tmp_path_factory.mktemp("small"), n_trials=4, n_test=2, frames=60, n_folds=2,
                          row_shapes=SMALL_SHAPES, dtype="float16")


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory) -> Path:
    """The demo dataset at its smallest: 8 videos of 3 s with 64 px crops (read-only: copy it to damage it)."""
    out = tmp_path_factory.mktemp("demo") / "demo"
    demo.run(DemoConfig(seed=1, n_videos=8, seconds=3.0, size=64), out)
    return out
