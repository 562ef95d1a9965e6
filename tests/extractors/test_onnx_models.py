"""onnx-audio and onnx-image: small torch networks exported to ONNX with the files an optimum export keeps beside
them, run through the extract stage and compared with onnxruntime run directly at the same frame times."""

from __future__ import annotations

import json

import numpy as np
import onnxruntime as ort
import pytest
import soundfile as sf
import torch

from pipeline.common.config import AudioModelConfig, ConfigError, ImageModelConfig
from pipeline.extractors import build
from pipeline.extractors.images import from_processor, preprocess
from pipeline.extractors.weights import WeightsError
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import FrameReader
from pipeline.stages import extract
from tests.helpers import backbones

torch.set_num_threads(2)


def _run(name, cfg, prepared, out):
    extract.run(name, cfg, prepared, out, device="cpu", progress=False)
    return FeatureStore.open(out)


def test_onnx_audio_equals_onnxruntime_on_the_whole_track(make_prepared, tmp_path):
    onnx = backbones.onnx_audio(tmp_path / "conv-audio", normalise=True)
    index = make_prepared({"a": {"n": 200, "audio": 8.0}, "b": {"n": 30, "audio": 1.0, "offset": -0.2}})
    rng = np.random.default_rng(0)
    for v in ("a", "b"):
        n = len(sf.read(index.audio_path(v))[0])
        sf.write(index.audio_path(v), (0.2 * rng.normal(size=n)).astype(np.float32), 16000, subtype="FLOAT")
    cfg = AudioModelConfig(kind="onnx-audio", model=str(onnx), dtype="float32", chunk_seconds=1.0, context_seconds=0.1)
    s = _run("conv", cfg, index.root, tmp_path / "c.zarr")
    assert s.row_shape == (16,) and s.attrs["kind"] == "onnx-audio" and "layers" not in s.attrs["parameters"]
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    for name, offset in (("a", 0.0), ("b", -0.2)):
        wave = sf.read(index.audio_path(name), dtype="float32")[0]
        x = (wave - wave.mean()) / np.sqrt(wave.var() + 1e-7)  # the processor's do_normalize over the whole track
        h = session.run(None, {"input": x[None].astype(np.float32)})[0][0]  # (T, 16)
        track = index.trial(name).times - offset
        heard = (np.rint(track * 16000) >= 0) & (np.rint(track * 16000) < len(wave))
        k = np.clip(np.floor((track[heard] * 16000 - 200) / 320 + 0.5).astype(int), 0, len(h) - 1)
        np.testing.assert_allclose(s.read(name)[heard], h[k], rtol=1e-4, atol=1e-5)  # seams every second


def test_onnx_image_equals_onnxruntime(make_prepared, tmp_path):
    onnx = backbones.onnx_image(tmp_path / "patches")
    index = make_prepared({"a": {"n": 11}}, size=16)
    for tokens, shape in ((False, (24,)), (True, (24, 4, 4))):
        cfg = ImageModelConfig(kind="onnx-image", model=str(onnx), dtype="float32", tokens=tokens, batch=4)
        s = _run("p", cfg, index.root, tmp_path / f"p{tokens}.zarr")
        assert s.row_shape == shape
    session = ort.InferenceSession(str(onnx), providers=["CPUExecutionProvider"])
    contract = from_processor(json.loads((onnx.parent / "preprocessor_config.json").read_text()), "p")
    with FrameReader(index.root / "frames.h5") as r:
        x = preprocess(torch.from_numpy(r.frames("a")), contract).numpy()
    tokens = session.run(None, {"input": x})[0]  # (B, 17, 24)
    np.testing.assert_allclose(FeatureStore.open(tmp_path / "pFalse.zarr").read("a"), tokens[:, 1:].mean(1), rtol=1e-5, atol=1e-5)
    grid = tokens[:, 1:].transpose(0, 2, 1).reshape(-1, 24, 4, 4)
    np.testing.assert_allclose(FeatureStore.open(tmp_path / "pTrue.zarr").read("a"), grid, rtol=1e-5, atol=1e-5)


def test_onnx_user_errors(tmp_path):
    onnx = backbones.onnx_image(tmp_path / "patches")
    (onnx.parent / "preprocessor_config.json").unlink()
    with pytest.raises(WeightsError, match="no preprocessor_config.json beside"):
        build("p", ImageModelConfig(kind="onnx-image", model=str(onnx)), 16, "cpu")
    audio = backbones.onnx_audio(tmp_path / "a")
    (audio.parent / "config.json").unlink()
    with pytest.raises(ConfigError, match="features.a.model: .*needs the model's config.json beside it"):
        build("a", AudioModelConfig(kind="onnx-audio", model=str(audio)), 16, "cpu")
    with pytest.raises(WeightsError, match="is not an .onnx file"):
        build("a", AudioModelConfig(kind="onnx-audio", model=str(tmp_path)), 16, "cpu")
