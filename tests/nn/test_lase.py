"""LA-SE: the LANet spatial map and the SE channel weights."""

from __future__ import annotations

import torch

from pipeline.nn import SE, LANet, MapPool


def test_lase_parts():
    x = torch.randn(4, 32, 3, 3)
    assert LANet(32)(x).shape == x.shape and SE(32)(x).shape == x.shape
    assert MapPool(32)(torch.randn(2, 5, 32, 3, 3)).shape == (2, 5, 32)
    plain = MapPool(32, attention=False)(x.reshape(2, 2, 32, 3, 3))
    assert torch.allclose(plain, x.mean(dim=(2, 3)).reshape(2, 2, 32))

