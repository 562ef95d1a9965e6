"""The fusion model's training parts (pipeline/training/fusion.py): seeding, the learner, one epoch, the
challenge-protocol score and the run fingerprint. (Whole training runs: tests/test_train.py.)"""

from __future__ import annotations

import math
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from pipeline.common.config import ModelConfig, TrainConfig
from pipeline.training import fusion

SHAPES = {"iresnet": (8, 2, 2), "mfcc": (4,)}
MODEL = ModelConfig(modalities=("iresnet", "mfcc"), tcn_channels=8, tcn_levels=1, tcn_kernel=3, d_model=16, heads=2,
                    layers=1, ff_dim=16, head_hidden=8)
TRAIN = TrainConfig(window=12, hop=6, batch=2, lr=1e-3)
CPU = torch.device("cpu")


def batch(b: int = 2, t: int = 12) -> dict[str, torch.Tensor]:
    out = {m: torch.randn(b, t, *s) for m, s in SHAPES.items()}
    out["mask"] = torch.ones(b, t, dtype=torch.bool)
    out["mask"][-1, t // 2 :] = False
    out["labels"] = torch.rand(b, t, 2) * 2 - 1
    return out


def test_seed_everything_repeats_every_generator():
    draws = []
    for _ in range(2):
        fusion.seed_everything(7, CPU)
        draws.append((random.random(), float(np.random.rand()), float(torch.rand(()))))
    assert draws[0] == draws[1]


def test_learner_follows_the_schedule_and_full_precision_on_cpu():
    torch.manual_seed(0)
    learner = fusion.build_learner(MODEL, TRAIN, SHAPES, CPU, lambda s: 0.5 ** s)
    assert learner.adtype is None and not learner.scaler.is_enabled()
    assert learner.model.modalities == ["iresnet", "mfcc"]
    assert learner.optim.param_groups[0]["lr"] == pytest.approx(TRAIN.lr)
    assert learner.optim.param_groups[0]["weight_decay"] == TRAIN.weight_decay
    times = fusion.StepTimes()
    loss = fusion.train_epoch(learner, [batch(), batch(), batch(b=1)], times)
    assert math.isfinite(loss) and learner.model.training
    assert times.steps == 3 and times.windows == 5 and times.step_s >= times.wait_s >= 0
    assert learner.optim.param_groups[0]["lr"] == pytest.approx(TRAIN.lr * 0.5**3)  # the schedule steps per batch


def test_an_epoch_without_batches_is_nan_and_changes_nothing():
    torch.manual_seed(0)
    learner = fusion.build_learner(MODEL, TRAIN, SHAPES, CPU, lambda s: 1.0)
    before = {k: v.clone() for k, v in learner.model.state_dict().items()}
    times = fusion.StepTimes()
    assert math.isnan(fusion.train_epoch(learner, [], times))
    assert times.steps == 0 and times.windows == 0
    assert all(torch.equal(v, learner.model.state_dict()[k]) for k, v in before.items())


def test_score_concatenates_trials_and_writes_nan_as_null():
    up = np.linspace(-1, 1, 6, dtype=np.float32)[:, None].repeat(2, 1)  # (6, 2)
    flat = np.full((4, 2), 0.25, np.float32)
    s = fusion.score({"b": flat, "a": up}, {"a": up, "b": flat})
    assert s["ccc_valence"] == s["ccc_arousal"] == s["ccc_mean"] == 1.0  # over all frames concatenated
    assert s["per_trial"]["a"]["ccc_mean"] == 1.0
    assert s["per_trial"]["b"] == {"ccc_valence": None, "ccc_arousal": None, "ccc_mean": None}  # constant: undefined
    half = fusion.score({"a": up * 0.5}, {"a": up})
    assert half["ccc_mean"] == pytest.approx(2 * 0.5 * up[:, 0].var() / (1.25 * up[:, 0].var()), abs=1e-6)


def test_run_fingerprint_changes_with_what_decides_the_run():
    bank = SimpleNamespace(modalities=["mfcc"], attrs={"mfcc": {"fingerprint": "abc"}})
    labels = {"a": np.zeros((3, 2), np.float32), "b": np.ones((2, 2), np.float32)}
    trials = [["a"], ["b"]]
    base = fusion.run_fingerprint(0, MODEL, TRAIN, trials, bank, labels)
    assert base == fusion.run_fingerprint(0, MODEL, TRAIN, trials, bank, dict(reversed(labels.items())))
    other_labels = {**labels, "b": np.full((2, 2), 0.5, np.float32)}
    other_store = SimpleNamespace(modalities=["mfcc"], attrs={"mfcc": {"fingerprint": "abd"}})
    variants = [
        fusion.run_fingerprint(1, MODEL, TRAIN, trials, bank, labels),
        fusion.run_fingerprint(0, ModelConfig(**{**MODEL.__dict__, "dropout": 0.2}), TRAIN, trials, bank, labels),
        fusion.run_fingerprint(0, MODEL, TrainConfig(**{**TRAIN.__dict__, "seed": 1}), trials, bank, labels),
        fusion.run_fingerprint(0, MODEL, TRAIN, [["b"], ["a"]], bank, labels),
        fusion.run_fingerprint(0, MODEL, TRAIN, trials, other_store, labels),
        fusion.run_fingerprint(0, MODEL, TRAIN, trials, bank, other_labels),
    ]
    assert base not in variants and len(set(variants)) == len(variants)
