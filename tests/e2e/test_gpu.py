"""GPU paths (mixed precision, channels-last, pinned memory): skipped where CUDA is absent, as in CI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.common.config import IResNetConfig, ModelConfig, TrainConfig, VGGishConfig
from pipeline.io.features import FeatureStore
from pipeline.stages import extract, train
from pipeline.training.synthetic import make_synthetic

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"),
]


@pytest.mark.parametrize("name, cfg", [("iresnet", IResNetConfig(batch=16)), ("vggish", VGGishConfig(batch=16))])
def test_extract_on_gpu_matches_cpu(make_prepared, tmp_path, name, cfg):
    index = make_prepared({"a": {"n": 37, "video": "v"}, "b": {"n": 20, "audio": None}}, size=48)
    stores = {}
    for device in ("cpu", "cuda"):
        extract.run(name, cfg, index.root, tmp_path / f"{device}.zarr", device=device, progress=False)
        stores[device] = FeatureStore.open(tmp_path / f"{device}.zarr")
    assert stores["cuda"].attrs["precision"] != stores["cpu"].attrs["precision"]
    for t in ("a", "b"):
        cpu, gpu = (stores[d].read(t).astype(np.float32) for d in ("cpu", "cuda"))
        scale = np.abs(cpu).max() + 1e-6
        assert np.abs(cpu - gpu).max() / scale < 0.02  # float16 autocast against float32
        np.testing.assert_array_equal(stores["cpu"].mask(t), stores["cuda"].mask(t))


def test_train_on_gpu_with_mixed_precision(tmp_path):
    shapes = {"iresnet": (16, 3, 3), "vggish": (12,), "mfcc": (8,)}
    prepared, features = make_synthetic(tmp_path / "d", n_trials=6, n_test=1, frames=120, n_folds=3, row_shapes=shapes, noise=0.5)
    model = ModelConfig(tcn_channels=16, tcn_levels=2, tcn_kernel=3, d_model=32, heads=2, layers=2, ff_dim=64, head_hidden=8)
    cfg = TrainConfig(window=60, hop=30, batch=4, epochs=4, lr=3e-3, warmup_epochs=1, patience=5)
    res = train.run(0, model, cfg, prepared, features, tmp_path / "m", tmp_path / "f0.json", None, device="cuda")
    metrics = json.loads((tmp_path / "f0.json").read_text())
    assert metrics["device"].startswith("cuda") and np.isfinite(res["ccc_mean"])


def test_switch_interval_is_short_during_a_cuda_run_and_restored(make_prepared, tmp_path):
    import dataclasses
    import sys

    from pipeline.extractors import build

    index = make_prepared({"a": {"n": 12}}, size=16)
    ex = build("iresnet", IResNetConfig(batch=4), 16, "cuda")
    seen = []

    def null(x):
        seen.append(sys.getswitchinterval())
        return torch.zeros((len(x), *ex.row_shape), device=x.device)

    before = sys.getswitchinterval()
    extract.run("iresnet", None, index.root, tmp_path / "n.zarr", progress=False,
                extractor=dataclasses.replace(ex, module=null))
    assert len(seen) == 3 and max(seen) <= extract.SWITCH_INTERVAL_S
    assert sys.getswitchinterval() == before


def test_analyze_on_gpu_matches_cpu(tmp_path):
    """`analyze --device cuda`: face nets on onnxruntime's CUDA provider where installed, extractors and fold models
    on the GPU (float16 autocast); the curve stays close to the CPU's."""
    import yaml

    from pipeline.bench.analyze import make_models
    from tests.helpers import REALMEDIA
    from tests.helpers.cli import invoke

    video = REALMEDIA / "videos" / "pyfeat_single_face.mp4"
    if not video.is_file():
        pytest.skip(f"{REALMEDIA} not present")
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"model": {"tcn_channels": 8, "tcn_levels": 2, "d_model": 16, "heads": 2, "layers": 1,
                                                "ff_dim": 32, "head_hidden": 8}, "frames": {"size": 48}}))
    models = make_models(tmp_path / "m", params)
    out = {}
    for device in ("cpu", "cuda"):
        res = invoke("analyze", video, "--models", models, "--out", tmp_path / device, "--params", params, "--device", device)
        assert res.exit_code == 0, res.output
        assert json.loads(res.output.strip().splitlines()[-1])["device"].startswith(device)
        out[device] = np.loadtxt(tmp_path / device / "pyfeat_single_face.csv", delimiter=",", skiprows=1)
    np.testing.assert_array_equal(out["cpu"][:, :2], out["cuda"][:, :2])
    assert (out["cpu"][:, 4] == out["cuda"][:, 4]).mean() >= 0.95  # the face nets may run on CUDA's kernels
    assert np.abs(out["cpu"][:, 2:4] - out["cuda"][:, 2:4]).mean() < 0.05  # float16 features and model
