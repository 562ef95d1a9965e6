"""IResNet-50: arcface_torch state_dicts load strictly, the input contract, and insightface ONNX recognition models."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from pipeline.common.config import IResNetConfig
from pipeline.extractors import build
from pipeline.extractors.iresnet import IResNetFeatures, iresnet50, map_side, preprocess
from pipeline.extractors.weights import RandomInitWarning, WeightsError, sha256_file
from tests.helpers.arcface import ArcfaceIResNet50

torch.set_num_threads(2)






@pytest.fixture(scope="module")
def arcface_checkpoint(tmp_path_factory):
    torch.manual_seed(4)
    ref = ArcfaceIResNet50()
    for m in ref.modules():  # trained-looking BN and PReLU parameters, so a wrong mapping would show in the output
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-0.1, 0.1)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.7, 1.3)
            m.bias.data.uniform_(-0.1, 0.1)
        if isinstance(m, nn.PReLU):
            m.weight.data.uniform_(0.1, 0.4)
        if isinstance(m, nn.Conv2d):
            nn.init.normal_(m.weight, 0, 0.5 * (2 / (m.in_channels * m.kernel_size[0] ** 2)) ** 0.5)
    path = tmp_path_factory.mktemp("w") / "backbone.pth"
    torch.save(ref.state_dict(), path)
    return path, ref.state_dict()


def _reference_map(state: dict[str, torch.Tensor], frames: torch.Tensor) -> torch.Tensor:
    """arcface_torch's IResNet forward up to ``bn2``, written from its published structure with
    ``torch.nn.functional`` only (nothing from ``pipeline.extractors.iresnet``), in float64: input
    ``(x / 255 - 0.5) / 0.5``; conv1 (3x3, stride 1), bn1, prelu; per block bn1, conv1 (3x3), bn2, prelu,
    conv2 (3x3, stride 2 in a layer's first block), bn3, plus the identity (through downsample: 1x1 conv with the
    block's stride, BN); then bn2. Blocks per layer are read from the state_dict's keys.
    (B, S, S, 3) uint8 -> (B, 512, h, w) float64."""
    sd = {k: v.double() for k, v in state.items()}

    def bn(x, p):
        return F.batch_norm(x, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"],
                            training=False, eps=1e-5)

    x = (frames.permute(0, 3, 1, 2).double() / 255.0 - 0.5) / 0.5
    x = F.prelu(bn(F.conv2d(x, sd["conv1.weight"], padding=1), "bn1"), sd["prelu.weight"])
    for layer in (1, 2, 3, 4):
        blocks = sorted({int(k.split(".")[1]) for k in sd if k.startswith(f"layer{layer}.")})
        for b in blocks:
            p = f"layer{layer}.{b}"
            stride = 2 if b == 0 else 1
            out = F.conv2d(bn(x, f"{p}.bn1"), sd[f"{p}.conv1.weight"], padding=1)
            out = F.prelu(bn(out, f"{p}.bn2"), sd[f"{p}.prelu.weight"])
            out = bn(F.conv2d(out, sd[f"{p}.conv2.weight"], stride=stride, padding=1), f"{p}.bn3")
            identity = x
            if f"{p}.downsample.0.weight" in sd:
                identity = bn(F.conv2d(x, sd[f"{p}.downsample.0.weight"], stride=stride), f"{p}.downsample.1")
            x = out + identity
    return bn(x, "bn2")


def _assert_close_to_reference(y: torch.Tensor, ref: torch.Tensor) -> None:
    """float32 (channels-last) against the float64 reference: within 1e-4 of the map's scale everywhere."""
    scale = ref.abs().max().item()
    assert scale > 0.1  # a map that is all zeros would match anything
    np.testing.assert_allclose(y.double().numpy(), ref.numpy(), rtol=0, atol=1e-4 * scale)


def _tiny_recognition_onnx(path, rng):
    """An ONNX graph shaped like an insightface recognition model (input (n, 3, 112, 112), one (n, 512) output):
    conv 4x4 stride 4 -> global average pool -> fully connected; random weights. Returns the weights."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper

    w = {
        "W": (rng.normal(size=(8, 3, 4, 4)) * 0.2).astype(np.float32),
        "B": rng.normal(size=8).astype(np.float32),
        "Wfc": rng.normal(size=(512, 8)).astype(np.float32),
        "bfc": rng.normal(size=512).astype(np.float32),
    }
    nodes = [
        helper.make_node("Conv", ["data", "W", "B"], ["c"], kernel_shape=[4, 4], strides=[4, 4], name="conv0"),
        helper.make_node("GlobalAveragePool", ["c"], ["g"], name="pool0"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat0"),
        helper.make_node("Gemm", ["f", "Wfc", "bfc"], ["fc1"], transB=1, name="fc0"),
    ]
    graph = helper.make_graph(
        nodes, "tiny-arcface",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["n", 3, 112, 112])],
        [helper.make_tensor_value_info("fc1", TensorProto.FLOAT, ["n", 512])],
        initializer=[numpy_helper.from_array(v, k) for k, v in w.items()],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8  # what onnxruntime releases of the last years all read
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return w


def _tiny_reference(x: torch.Tensor, w) -> np.ndarray:
    """The contract by hand: (n, S, S, 3) uint8 -> bilinear to 112 px -> (x - 127.5) / 127.5 -> the graph."""
    import torch.nn.functional as F

    x = F.interpolate(x.permute(0, 3, 1, 2).float(), size=(112, 112), mode="bilinear", align_corners=False)
    c = F.conv2d((x - 127.5) / 127.5, torch.from_numpy(w["W"]), torch.from_numpy(w["B"]), stride=4)
    return (c.mean(dim=(2, 3)) @ torch.from_numpy(w["Wfc"]).T + torch.from_numpy(w["bfc"])).numpy()


def test_arcface_state_dict_loads_strictly(arcface_checkpoint):
    path, state = arcface_checkpoint
    assert len(state) == len(iresnet50().state_dict())
    ex = build("iresnet", IResNetConfig(weights=str(path)), 48, "cpu")
    assert ex.row_shape == (512, 3, 3) and map_side(48) == 3 and map_side(112) == 7
    loaded = ex.module.net.state_dict()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    frames = torch.randint(0, 256, (2, 48, 48, 3), dtype=torch.uint8)
    with torch.inference_mode():
        y = ex.forward(frames)
    assert y.shape == (2, 512, 3, 3)
    _assert_close_to_reference(y, _reference_map(state, frames))
    pooled = build("iresnet", IResNetConfig(weights=str(path), pooled=True), 48, "cpu")
    with torch.inference_mode():
        np.testing.assert_allclose(pooled.forward(frames).numpy(), y.mean(dim=(2, 3)).numpy(), rtol=1e-4, atol=1e-5)


def test_iresnet_rejects_a_foreign_state_dict(tmp_path):
    path = tmp_path / "other.pth"
    torch.save({"conv1.weight": torch.zeros(64, 3, 3, 3), "head.weight": torch.zeros(3)}, path)
    with pytest.raises(WeightsError, match="missing"):
        build("iresnet", IResNetConfig(weights=str(path)), 48, "cpu")


def test_iresnet_input_contract():
    x = torch.tensor([[[[0, 255, 128]]]], dtype=torch.uint8)  # (1, 1, 1, 3) RGB
    np.testing.assert_allclose(preprocess(x).flatten().numpy(), [-1.0, 1.0, 128 / 127.5 - 1], atol=1e-6)
    with pytest.warns(RandomInitWarning):
        ex = build("iresnet", IResNetConfig(), 48, "cpu")
    frames = torch.randint(0, 256, (2, 48, 48, 3), dtype=torch.uint8)
    with torch.inference_mode():
        y = ex.forward(frames)
    # the random init keeps activations O(1): float16 storage neither overflows nor flushes to zero
    assert 0.01 < y.std().item() < 10 and y.abs().max().item() < 1000
    assert isinstance(ex.module, IResNetFeatures)
    # and the forward pass is arcface_torch's, computed independently from the same random weights
    _assert_close_to_reference(y, _reference_map(ex.module.net.state_dict(), frames))


def test_onnx_path_reports_a_bad_file(tmp_path):
    bad = tmp_path / "w600k_r50.onnx"
    bad.write_bytes(b"not an onnx model")
    with pytest.raises(WeightsError, match="insightface ONNX"):
        build("iresnet", IResNetConfig(weights=str(bad)), 48, "cpu")


def test_onnx_recognition_model_loads_through_insightface(tmp_path):
    path = tmp_path / "tiny_r.onnx"
    w = _tiny_recognition_onnx(path, np.random.default_rng(3))
    digest = sha256_file(path)
    ex = build("iresnet", IResNetConfig(weights=str(path), sha256=digest), 48, "cpu")
    assert ex.weights == digest and ex.row_shape == (512,) and ex.params["onnx"] and ex.params["pooled"]
    assert type(ex.module.model).__name__ == "ArcFaceONNX"  # routed by insightface.model_zoo, not by us
    x = torch.randint(0, 256, (5, 48, 48, 3), dtype=torch.uint8)
    y = ex.forward(x).numpy()
    assert y.shape == (5, 512)
    np.testing.assert_allclose(y, _tiny_reference(x, w), rtol=1e-4, atol=1e-4)
    with pytest.raises(WeightsError, match="sha256"):
        build("iresnet", IResNetConfig(weights=str(path), sha256="0" * 64), 48, "cpu")


def test_extract_stage_with_an_onnx_model(make_prepared, tmp_path):
    """features.iresnet.weights = an .onnx file: the stage stores its 512-d embeddings, labelled with the digest."""
    from pipeline.io.features import FeatureStore
    from pipeline.io.prepared import FrameReader
    from pipeline.stages import extract

    path = tmp_path / "tiny_r.onnx"
    w = _tiny_recognition_onnx(path, np.random.default_rng(4))
    index = make_prepared({"a": {"n": 20}, "b": {"n": 9}}, size=16)
    cfg = IResNetConfig(weights=str(path), sha256=sha256_file(path), batch=8)
    extract.run("iresnet", cfg, index.root, tmp_path / "o.zarr", device="cpu", progress=False)
    s = FeatureStore.open(tmp_path / "o.zarr")
    assert s.row_shape == (512,) and s.attrs["weights"] == cfg.sha256 and s.attrs["parameters"]["onnx"]
    with FrameReader(index.root / "frames.h5") as r:
        for t in ("a", "b"):
            ref = _tiny_reference(torch.from_numpy(r.frames(t)), w)
            np.testing.assert_allclose(s.read(t).astype(np.float32), ref, rtol=2e-3, atol=2e-3)  # float16 store

