"""The fusion model: shapes for every switch combination, modality subsets, built from its config, checkpoint names."""

from __future__ import annotations

import itertools

import pytest
import torch

from pipeline.common.config import ModelConfig
from pipeline.nn import FusionModel

SHAPES = {"iresnet": (32, 3, 3), "vggish": (16,), "mfcc": (8,)}


def small(**kw) -> ModelConfig:
    return ModelConfig(**{**dict(tcn_channels=8, tcn_levels=2, tcn_kernel=3, d_model=16, heads=2, layers=2, ff_dim=32, head_hidden=8), **kw})


# Parameter names of fold checkpoints (models/fold<k>/model.pt) for this model: a change breaks loading them.
CHECKPOINT_NAMES = [
    *(f"pool.iresnet.attention.{a}.{b}.{i}.{w}" for a, b in ((0, "net"), (1, "fc")) for i in (0, 2) for w in ("weight", "bias")),
    *(f"tcn.iresnet.blocks.0.{c}.{w}" for c in ("conv1", "conv2") for w in ("weight", "bias")),
    *(f"tcn.mfcc.blocks.0.{c}.{w}" for c in ("conv1", "conv2", "residual") for w in ("weight", "bias")),
    "proj.weight", "proj.bias", "positions.table",
    "encoder.layers.0.self_attn.in_proj_weight", "encoder.layers.0.self_attn.in_proj_bias",
    "encoder.layers.0.self_attn.out_proj.weight", "encoder.layers.0.self_attn.out_proj.bias",
    *(f"encoder.layers.0.{c}.{w}" for c in ("linear1", "linear2", "norm1", "norm2") for w in ("weight", "bias")),
    "head.fc1.weight", "head.fc1.bias", "head.bn.weight", "head.bn.bias", "head.bn.running_mean",
    "head.bn.running_var", "head.bn.num_batches_tracked", "head.fc2.weight", "head.fc2.bias",
]


@pytest.mark.parametrize(("lase", "tcn", "transformer"), list(itertools.product((False, True), repeat=3)))
def test_fusion_shapes_every_switch(lase, tcn, transformer):
    torch.manual_seed(0)
    model = FusionModel(small(lase=lase, tcn=tcn, transformer=transformer), SHAPES, max_len=20)
    x = {m: torch.randn(3, 20, *s) for m, s in SHAPES.items()}
    mask = torch.ones(3, 20, dtype=torch.bool)
    mask[2, 12:] = False
    y = model(x, mask)
    assert y.shape == (3, 20, 2)
    assert torch.isfinite(y).all() and y.abs().max() < 1
    y.sum().backward()
    model.eval()
    assert model(x, mask).shape == (3, 20, 2)
    assert model(x).shape == (3, 20, 2)
    assert (model.encoder is not None) == transformer
    assert (len(model.tcn) == 3) == tcn


@pytest.mark.parametrize("positions", ["sinusoidal", "learned"])
def test_modality_subsets_and_pooled_maps(positions):
    shapes = {"iresnet": (32,), "mfcc": (8,)}  # pooled visual store: LA-SE has nothing to attend over
    model = FusionModel(small(positions=positions), shapes, max_len=20)
    y = model({m: torch.randn(2, 20, *s) for m, s in shapes.items()})
    assert y.shape == (2, 20, 2)
    only = FusionModel(small(), {"vggish": (16,)}, max_len=20)
    assert only({"vggish": torch.randn(1, 7, 16)}).shape == (1, 7, 2)


def test_built_from_model_config():
    cfg = ModelConfig(modalities=("iresnet", "mfcc"), tcn_channels=8, d_model=16, heads=2, layers=1, ff_dim=16)
    model = FusionModel(cfg, {"iresnet": (32, 3, 3), "mfcc": (8,)}, max_len=30)
    assert model.modalities == ["iresnet", "mfcc"]
    assert model({"iresnet": torch.randn(2, 30, 32, 3, 3), "mfcc": torch.randn(2, 30, 8)}).shape == (2, 30, 2)


def test_state_dict_names_are_those_of_checkpoints():
    cfg = ModelConfig(tcn_channels=8, tcn_levels=1, tcn_kernel=3, d_model=16, heads=2, layers=1, ff_dim=16,
                      head_hidden=8, positions="learned")
    model = FusionModel(cfg, {"iresnet": (8, 3, 3), "mfcc": (4,)}, max_len=10)
    assert list(model.state_dict()) == CHECKPOINT_NAMES
    assert model.state_dict()["positions.table"].shape == (10, 16)



@pytest.mark.parametrize(("lase", "tcn", "transformer"), list(itertools.product((False, True), repeat=3)))
def test_any_modality_set_every_switch(lase, tcn, transformer):
    """Five stores of the field's kinds: two maps (IResNet, a ViT's patch-token map) get LA-SE, three vectors (a
    WavLM, a CLIP image vector, MFCC) skip it; each branch has its own width; all eight Table 2 rows run."""
    shapes = {"iresnet": (16, 3, 3), "vit": (24, 4, 4), "wavlm": (40,), "clip": (12,), "mfcc": (8,)}
    model = FusionModel(small(lase=lase, tcn=tcn, transformer=transformer), shapes, max_len=12)
    assert [m for m in shapes if model.pool[m].attention is not None] == (["iresnet", "vit"] if lase else [])
    y = model({m: torch.randn(2, 12, *s) for m, s in shapes.items()})
    assert y.shape == (2, 12, 2) and torch.isfinite(y).all()
    assert model.concat_dim == (5 * 8 if tcn else 16 + 24 + 40 + 12 + 8)
