"""Modules only (no IO, no optimiser, no loss): LA-SE, TCN and the fusion model. Tensors are (B, T, C) at every
module boundary."""

from pipeline.nn.fusion import FusionModel, Head
from pipeline.nn.lase import SE, LANet, MapPool
from pipeline.nn.tcn import TCN, TemporalBlock

__all__ = ["FusionModel", "Head", "LANet", "MapPool", "SE", "TCN", "TemporalBlock"]
