"""timm-image: a tiny timm ViT saved as timm saves for the hub (a folder) and as a checkpoint file, run through the
extract stage and compared with timm's own eval transform and forward_features. Skipped where timm cannot be
imported (torchvision built for another torch than the one installed: docs/features.md)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pipeline.common.config import ConfigError, ImageModelConfig
from pipeline.extractors import build
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import FrameReader
from pipeline.stages import extract
from tests.helpers import backbones

OK, WHY = backbones.timm_importable()
pytestmark = [pytest.mark.timm, pytest.mark.skipif(not OK, reason=WHY)]
torch.set_num_threads(2)


def reference(folder, crops):
    """timm's eval transform (PIL resize, centre crop, normalise) and the network's forward_features."""
    import timm
    from PIL import Image

    model = timm.create_model(f"local-dir:{folder}", pretrained=True, num_classes=0).eval()
    transform = timm.data.create_transform(**timm.data.resolve_data_config({}, model=model))
    x = torch.stack([transform(Image.fromarray(c)) for c in crops])
    with torch.no_grad():
        return model.forward_features(x).numpy()  # (B, 1 + 16, 32)


def test_timm_store_equals_timm_transform_and_forward(make_prepared, tmp_path):
    folder = backbones.timm_image(tmp_path / "vit-timm")
    index = make_prepared({"a": {"n": 12}}, size=16)
    cfg = ImageModelConfig(kind="timm-image", model=str(folder), dtype="float32", batch=4)
    extract.run("t", cfg, index.root, tmp_path / "t.zarr", device="cpu", progress=False)
    s = FeatureStore.open(tmp_path / "t.zarr")
    assert s.row_shape == (32,) and s.attrs["kind"] == "timm-image" and "layers" not in s.attrs["parameters"]
    with FrameReader(index.root / "frames.h5") as r:
        ref = reference(folder, r.frames("a"))
    # timm's PIL bicubic resize vs torch's bicubic on the device: close, not equal
    np.testing.assert_allclose(s.read("a"), ref[:, 1:].mean(1), atol=0.05 * np.abs(ref).max())
    tokens = build("t", ImageModelConfig(kind="timm-image", model=str(folder), tokens=True), 16, "cpu")
    assert tokens.row_shape == (32, 4, 4)


def test_timm_checkpoint_file_needs_its_architecture(tmp_path):
    folder = backbones.timm_image(tmp_path / "vit-timm")
    weights = folder / "model.safetensors"
    with pytest.raises(ConfigError, match="features.t.arch: needed for a checkpoint file"):
        build("t", ImageModelConfig(kind="timm-image", model=str(weights)), 16, "cpu")
