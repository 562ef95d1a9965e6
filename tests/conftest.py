"""Shared fixtures: tiny prepared datasets built in tmp_path (pipeline/training/synthetic.py writes them), and the
real media folder."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.io.prepared import PreparedIndex
from pipeline.training.synthetic import write_prepared

REALMEDIA = Path(__file__).resolve().parents[2] / "shared" / "realmedia"


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
