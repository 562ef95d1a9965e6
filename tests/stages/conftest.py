"""Fixtures of the stage tests: two folds trained on synthetic stores, read by the evaluate and predict tests."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.stages import train
from pipeline.training.synthetic import make_synthetic
from tests.helpers.tiny import MODEL, SHAPES, SPLIT, TRAIN


@pytest.fixture(scope="session")
def trained(tmp_path_factory) -> Path:
    """A folder with ``prepared/``, ``features/`` and ``models/fold<k>/`` of the folds of :data:`SPLIT`."""
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("evalpred")
    prepared, features = make_synthetic(root, n_trials=4, n_test=2, frames=70, n_folds=2, row_shapes=SHAPES)
    for k in SPLIT.folds:
        train.run(k, MODEL, TRAIN, prepared, features, root / "models" / f"fold{k}", root / "metrics" / f"fold{k}.json",
                  root / "metrics" / f"fold{k}")
    return root
