"""Tiny model settings and row shapes the training, evaluation and prediction tests share (seconds on a CPU)."""

from __future__ import annotations

from pipeline.common.config import ModelConfig, SplitConfig, TrainConfig

SHAPES = {"iresnet": (16, 3, 3), "vggish": (12,), "mfcc": (8,)}  # a (C, h, w) map and two vectors, as the paper's
SMALL_SHAPES = {"iresnet": (8, 2, 2), "vggish": (6,), "mfcc": (4,)}  # the bank and inference tests' smaller rows
MODEL = ModelConfig(tcn_channels=8, tcn_levels=2, tcn_kernel=3, d_model=16, heads=2, layers=1, ff_dim=32, head_hidden=8)
TRAIN = TrainConfig(window=40, hop=20, batch=4, epochs=2, lr=3e-3, warmup_epochs=1)
SPLIT = SplitConfig(n_folds=2, folds=(0, 1))
