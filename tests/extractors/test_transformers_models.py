"""transformers-audio and transformers-image: tiny models saved as a user's local folders, run through the extract
stage, compared row by row with an independent forward pass of the same model at the same frame times; chunk
seams; the errors a user can fix."""

from __future__ import annotations

import json

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.common.config import AudioModelConfig, ConfigError, ImageModelConfig
from pipeline.extractors import build
from pipeline.extractors.weights import WeightsError, sha256_file
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import FrameReader
from pipeline.stages import extract
from tests.helpers import backbones

pytest.importorskip("transformers")
torch.set_num_threads(2)

TRIALS = {
    "a": {"n": 60, "audio": 3.0},  # 2.4 s of video over 3 s of audio
    "late": {"n": 40, "audio": 1.0, "offset": 0.3},  # the track starts 0.3 s after the first frame
    "silent": {"n": 20, "audio": None},  # no audio stream
}


@pytest.fixture(scope="module")
def wavlm(tmp_path_factory):
    return backbones.transformers_audio(tmp_path_factory.mktemp("wavlm") / "wavlm-tiny")


@pytest.fixture(scope="module")
def vit(tmp_path_factory):
    return backbones.transformers_image(tmp_path_factory.mktemp("vit") / "vit-tiny", resample=2)


def _noise(index, seed=0):
    """Replace each WAV by noise (a tone gives every frame nearly the same row)."""
    rng = np.random.default_rng(seed)
    for v in index.videos.values():
        if v.has_audio:
            n = len(sf.read(index.audio_path(v.name))[0])
            sf.write(index.audio_path(v.name), (0.3 * rng.normal(size=n)).astype(np.float32), 16000, subtype="FLOAT")


def _run(name, cfg, prepared, out, **kw):
    extract.run(name, cfg, prepared, out, device="cpu", progress=False, **kw)
    return FeatureStore.open(out)


def reference_audio(folder, wave, track_times, layers):
    """The independent definition: the library's feature extractor and model on the whole track, then the hidden
    frame whose window (400 samples from 320 k) is centred nearest each time, clipped to the track."""
    from transformers import AutoFeatureExtractor, AutoModel

    fe = AutoFeatureExtractor.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    x = fe(wave, sampling_rate=16000, return_tensors="pt").input_values
    with torch.no_grad():
        hidden = model(x, output_hidden_states=True).hidden_states
    h = torch.stack([hidden[i] for i in layers]).mean(0)[0].numpy()  # (T, D)
    k = np.floor((np.asarray(track_times) * 16000 - 200) / 320 + 0.5).astype(int)
    return h[np.clip(k, 0, len(h) - 1)]


def test_audio_store_equals_the_model_on_the_whole_track_at_frame_times(make_prepared, tmp_path, wavlm):
    index = make_prepared(TRIALS)
    _noise(index)
    cfg = AudioModelConfig(model=str(wavlm), dtype="float32", layers=(-1, 1), batch=16)
    s = _run("wavlm", cfg, index.root, tmp_path / "w.zarr")
    assert s.row_shape == (32,) and s.attrs["kind"] == "transformers-audio" and s.attrs["weights"] == sha256_file(wavlm / "model.safetensors")
    assert s.attrs["parameters"]["layers"] == [2, 1] and s.attrs["parameters"]["hop"] == 320
    for name, offset in (("a", 0.0), ("late", 0.3)):
        t = index.trial(name)
        wave = sf.read(index.audio_path(t.video), dtype="float32")[0]
        track = t.times - offset
        heard = (np.rint(track * 16000) >= 0) & (np.rint(track * 16000) < len(wave))
        ref = reference_audio(wavlm, wave, track[heard], [2, 1])
        np.testing.assert_allclose(s.read(name)[heard], ref, rtol=1e-4, atol=1e-4)
        np.testing.assert_array_equal(s.mask(name), heard)
    late = s.read("late")
    assert not late[:8].any()  # 0.3 s at 25 fps: frames 1..8 come before the track
    np.testing.assert_array_equal(late[33:], np.repeat(late[32:33], 7, axis=0))  # after it: the last row repeated
    assert not s.read("silent").any() and not s.mask("silent").any()


@pytest.mark.parametrize("model_type", ["wavlm", "wav2vec2"])
def test_chunk_seams_match_an_unchunked_run(make_prepared, tmp_path, model_type):
    """A 12 s track in 2 s chunks with 1.5 s of context: the layers whose receptive field fits in the context (the
    convolutional encoder and position embedding: hidden state 0) give the whole-track rows at every seam."""
    folder = backbones.transformers_audio(tmp_path / model_type, model_type=model_type)
    index = make_prepared({"long": {"n": 300, "audio": 12.0}})
    _noise(index, seed=1)
    cfg = AudioModelConfig(model=str(folder), dtype="float32", layers=(0,), chunk_seconds=2.0, context_seconds=1.5, batch=32)
    s = _run("x", cfg, index.root, tmp_path / "x.zarr")
    t = index.trial("long")
    wave = sf.read(index.audio_path("long"), dtype="float32")[0]
    np.testing.assert_allclose(s.read("long"), reference_audio(folder, wave, t.times, [0]), rtol=1e-4, atol=1e-4)
    # the chunk grid belongs to the track, not to the batches: any batch size gives the same rows (all layers)
    deep = AudioModelConfig(model=str(folder), dtype="float32", chunk_seconds=2.0, context_seconds=0.5, batch=7)
    a = _run("x", deep, index.root, tmp_path / "b7.zarr").read("long")
    b = _run("x", AudioModelConfig(**{**deep.__dict__, "batch": 64}), index.root, tmp_path / "b64.zarr").read("long")
    np.testing.assert_array_equal(a, b)


def reference_image(folder, crops, layers, pool):
    """The library's own (PIL) image processor and the model, hidden states averaged, patch tokens pooled."""
    from transformers import AutoModel
    from transformers.models.vit.image_processing_pil_vit import ViTImageProcessorPil

    proc = ViTImageProcessorPil.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    x = proc(images=list(crops), return_tensors="pt").pixel_values
    with torch.no_grad():
        hidden = model(pixel_values=x, output_hidden_states=True).hidden_states
    h = torch.stack([hidden[i] for i in layers]).mean(0).numpy()  # (B, 1 + 16, D)
    return h[:, 0] if pool == "cls" else h[:, 1:].mean(1)


@pytest.mark.parametrize("pool", ["mean", "cls"])
def test_image_store_equals_the_processor_and_model(make_prepared, tmp_path, vit, pool):
    index = make_prepared({"a": {"n": 20}, "b": {"n": 13}}, size=16)
    cfg = ImageModelConfig(kind="transformers-image", model=str(vit), dtype="float32", pool=pool, batch=8)
    s = _run("vit", cfg, index.root, tmp_path / "v.zarr")
    assert s.row_shape == (32,) and s.attrs["parameters"]["preprocess"]["resize"] == [32, 32]
    with FrameReader(index.root / "frames.h5") as r:
        for t in ("a", "b"):
            ref = reference_image(vit, r.frames(t), [2], pool)
            # torch's bilinear resize on the device vs PIL's: a few 1/255 steps on some pixels
            np.testing.assert_allclose(s.read(t), ref, atol=0.02 * np.abs(ref).max())


def test_image_token_map_feeds_la_se(make_prepared, tmp_path, vit):
    index = make_prepared({"a": {"n": 9}}, size=16)
    cfg = ImageModelConfig(kind="transformers-image", model=str(vit), tokens=True, layers=(-1, -2), batch=4)
    s = _run("vit", cfg, index.root, tmp_path / "v.zarr")
    assert s.row_shape == (32, 4, 4) and s.read("a").dtype == np.float16  # (D, h, w): 32 px / 8 px patches


def test_vit_mae_keeps_every_patch_in_order(tmp_path):
    """ViT-MAE masks 75 % of the patches and shuffles the rest by default; features need all of them, in order."""
    folder = backbones.transformers_image(tmp_path / "mae", model_type="vit_mae")
    ex = build("mae", ImageModelConfig(kind="transformers-image", model=str(folder), tokens=True), 16, "cpu")
    assert ex.row_shape == (32, 4, 4)
    frames = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (3, 16, 16, 3), dtype=np.uint8))
    with torch.inference_mode():
        np.testing.assert_array_equal(ex.forward(frames).numpy(), ex.forward(frames).numpy())  # no random masking


def test_user_errors_name_the_key(tmp_path, wavlm, vit):
    def err(cfg, kind=WeightsError):
        with pytest.raises(kind) as e:
            build("wavlm", cfg, 16, "cpu")
        return str(e.value)

    assert "features.wavlm.model: 'microsoft/wavlm-large' is a hub id" in err(AudioModelConfig(model="microsoft/wavlm-large"))
    assert "features.wavlm.model: /nowhere/wavlm not found" in err(AudioModelConfig(model="/nowhere/wavlm"))
    wrong = "0" * 64
    assert f"features.wavlm.sha256 expects {wrong}" in err(AudioModelConfig(model=str(wavlm), sha256=wrong))
    assert "features.wavlm.layers: 3 is out of range" in err(AudioModelConfig(model=str(wavlm), layers=(3,)), ConfigError)
    assert "transformers-audio reads the wav2vec2 family" in err(AudioModelConfig(model=str(vit)), ConfigError)
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "config.json").write_text(json.dumps(json.loads((wavlm / "config.json").read_text())))
    assert "holds no weights file" in err(AudioModelConfig(model=str(tmp_path / "empty")))
    vit_cfg = ImageModelConfig(kind="transformers-image", model=str(vit), tokens=True)
    assert build("v", vit_cfg, 16, "cpu").row_shape == (32, 4, 4)
