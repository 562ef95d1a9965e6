"""Modules only (no IO, no optimiser, no loss): LA-SE, TCN and the fusion model, whose tensors are (B, T, C) at every
module boundary (exported here); and, in :mod:`pipeline.nn.backbone`, the backbone stage's IResNet-50 with its
expression and valence-arousal heads (imported from there, so that the fusion model's users do not load it)."""

from pipeline.nn.fusion import FusionModel, Head
from pipeline.nn.lase import SE, LANet, MapPool
from pipeline.nn.tcn import TCN, TemporalBlock

__all__ = ["FusionModel", "Head", "LANet", "MapPool", "SE", "TCN", "TemporalBlock"]
