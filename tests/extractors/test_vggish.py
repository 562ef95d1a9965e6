"""VGGish against torchvggish: its own log-mel examples, silence at the edges, alignment, PCA, weights files."""

from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch
from torch import nn
from torchvggish.torchvggish import Postprocessor
from torchvggish.vggish_input import waveform_to_examples

from pipeline.common.config import VGGishConfig
from pipeline.extractors import build
from pipeline.extractors import vggish as V
from pipeline.extractors.audio import AudioSource
from pipeline.extractors.weights import WeightsError

torch.set_num_threads(2)


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    env = np.repeat(rng.uniform(0.02, 0.5, n // 1600 + 1), 1600)[:n]
    return (rng.normal(size=n) * env).astype(np.float32)


# ------------------------------------------------------------------------------------------------ VGGish
def test_vggish_examples_equal_waveform_to_examples():
    y = _noise(6.0)
    times = np.arange(0, 150) / 25.0 + 0.013
    ex = V.examples_at(AudioSource(samples=y), times)
    assert ex.shape == (150, 96, 64) and ex.dtype == np.float32
    start, length = V.example_samples(times)
    assert length == 15600  # 96 frames of 25 ms at a 10 ms hop
    checked = 0
    for i in range(len(times)):
        if start[i] < 0 or start[i] + length > len(y):
            continue  # edges: zero-padded, not defined by waveform_to_examples
        ref = waveform_to_examples(y[start[i] : start[i] + length].astype(np.float64), 16000)
        assert ref.shape == (1, 1, 96, 64)
        np.testing.assert_allclose(ex[i], ref.detach().numpy()[0, 0], atol=1e-5)
        checked += 1
    assert checked > 100
    # and the example is centred on the frame time (within half a 10 ms hop)
    assert np.abs(start + length / 2 - times * 16000).max() <= 80


def test_vggish_edges_are_silence():
    y = _noise(2.0)
    ex = V.examples_at(AudioSource(samples=y), np.array([0.0]))
    start, length = V.example_samples(np.array([0.0]))
    assert start[0] == -7840  # k0 = round(-48.75) = -49 log-mel frames before t = 0
    padded = np.concatenate([np.zeros(-start[0], np.float32), y])
    ref = waveform_to_examples(padded[:length].astype(np.float64), 16000).detach().numpy()[0, 0]
    np.testing.assert_allclose(ex[0], ref, atol=1e-5)


def test_vggish_alignment_with_known_envelope():
    """One amplitude per video frame (1 fps, 1 s segments of the same noise snippet): the example centred on
    frame i must see amplitude a_i, so log-mel differences equal ln(a_i / a_j) (VGGish's mel of the STFT
    magnitude, not power)."""
    rng = np.random.default_rng(1)
    a = rng.uniform(0.05, 0.8, 8)
    snippet = rng.normal(size=16000).astype(np.float32)
    s = np.arange(8 * 16000)
    seg = (s + 8000) // 16000  # segment i spans t_i +- 0.5 s, t_i = i s
    y = (a[np.minimum(seg, 7)] * snippet[(s + 8000) % 16000]).astype(np.float32)
    times = np.arange(8, dtype=np.float64)  # frame f at (f - 1) / 1 s
    ex = V.examples_at(AudioSource(samples=y), times[1:-1]).astype(np.float64)  # skip the padded edges
    level = ex.mean(axis=(1, 2))
    np.testing.assert_allclose(level - level[0], np.log(a[1:-1] / a[1]), atol=0.01)


def test_vggish_pca_matches_torchvggish_postprocessor():
    rng = np.random.default_rng(2)
    pca = {"pca_eigen_vectors": torch.tensor(rng.normal(size=(128, 128)) / 11), "pca_means": torch.tensor(rng.normal(size=(128,)))}
    post = Postprocessor.__new__(Postprocessor)  # its __init__ downloads; set the matrices it would load
    post._pca_matrix = pca["pca_eigen_vectors"].float()
    post._pca_means = pca["pca_means"].reshape(-1, 1).float()
    emb = torch.tensor(rng.uniform(0, 2, size=(5, 128)), dtype=torch.float32)
    model = V.VGGishFeatures(nn.Identity(), V.check_pca(pca, "test"))  # identity network: test the formula
    np.testing.assert_array_equal(model(emb).numpy(), post.postprocess(emb).numpy())


def test_vggish_weights_file_loads_and_is_checked(tmp_path):
    torch.manual_seed(3)
    net = V.build_network()
    path = tmp_path / "vggish-10086976.pth"
    torch.save(net.state_dict(), path)
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    ex = build("vggish", VGGishConfig(weights=str(path), sha256=digest), 48, "cpu")
    assert ex.weights == digest and ex.row_shape == (128,)
    x = torch.randn(2, 1, 96, 64)
    with torch.inference_mode():
        np.testing.assert_allclose(ex.forward(x).numpy(), net.eval()(x).numpy(), rtol=1e-5, atol=1e-6)
    wrong = "0" * 64
    with pytest.raises(WeightsError) as e:
        build("vggish", VGGishConfig(weights=str(path), sha256=wrong), 48, "cpu")
    assert digest in str(e.value) and wrong in str(e.value)
    with pytest.raises(WeightsError, match="not found"):
        build("vggish", VGGishConfig(weights=str(tmp_path / "missing.pth")), 48, "cpu")

