"""The TCN keeps the sequence length and sees both sides within its receptive field."""

from __future__ import annotations

import pytest
import torch

from pipeline.nn import TCN


@pytest.mark.parametrize("kernel", [2, 3, 5])
def test_tcn_keeps_length_and_sees_both_sides(kernel):
    tcn = TCN(4, 6, levels=3, kernel=kernel, dropout=0.0)
    x = torch.randn(1, 64, 4, requires_grad=True)
    y = tcn(x)
    assert y.shape == (1, 64, 6)
    y[0, 32].sum().backward()
    seen = (x.grad[0].abs().sum(1) > 0).nonzero().flatten()
    assert seen.min() < 32 < seen.max()  # non-causal: past and future frames
    assert seen.max() - seen.min() + 1 <= tcn.receptive_field

