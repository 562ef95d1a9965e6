"""The backbone's batched face augmentation: the warp is exact without jitter, the flip mirrors, and the draws are a
function of the step generator's seed."""

from __future__ import annotations

import torch

from pipeline.extractors.iresnet import preprocess
from pipeline.training import augment as A


def test_augment_warp_is_exact_without_jitter(monkeypatch):
    frames = torch.randint(0, 256, (4, 16, 16, 3), dtype=torch.uint8)
    monkeypatch.setattr(A, "ROTATE_DEG", 0.0)
    monkeypatch.setattr(A, "SCALE", (1.0, 1.0))
    monkeypatch.setattr(A, "SHIFT", 0.0)
    monkeypatch.setattr(A, "JITTER", 0.0)
    monkeypatch.setattr(A, "FLIP_P", 0.0)
    torch.testing.assert_close(A.augment(frames, A.step_generator(1)), preprocess(frames), atol=1e-5, rtol=0)
    monkeypatch.setattr(A, "FLIP_P", 1.0)
    torch.testing.assert_close(A.augment(frames, A.step_generator(1)), preprocess(frames.flip(2)), atol=1e-5, rtol=0)


def test_augment_is_a_function_of_its_seed():
    frames = torch.randint(0, 256, (8, 24, 24, 3), dtype=torch.uint8)
    a = A.augment(frames, A.step_generator(0, 1, 2))
    assert a.shape == (8, 3, 24, 24) and a.min() >= -1 and a.max() <= 1
    assert torch.equal(a, A.augment(frames, A.step_generator(0, 1, 2)))
    assert not torch.equal(a, A.augment(frames, A.step_generator(0, 1, 3)))
