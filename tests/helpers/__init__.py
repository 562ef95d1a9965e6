"""Helpers shared by the tests (one place): the repository root, generated media, DVC repositories, params files and
the CLI runner. Fixtures live in ``tests/conftest.py``."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]  # the repository (pipeline/, dvc.yaml, params.yaml)
REALMEDIA = ROOT.parent / "shared" / "realmedia"  # real recordings nobody here made; absent on some machines
