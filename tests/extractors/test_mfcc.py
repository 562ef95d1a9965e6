"""MFCC rows against a direct librosa call at the same frame times."""

from __future__ import annotations

import librosa
import numpy as np
import torch

from pipeline.extractors import mfcc as M
from pipeline.extractors.audio import AudioSource

torch.set_num_threads(2)


def _noise(seconds: float, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    env = np.repeat(rng.uniform(0.02, 0.5, n // 1600 + 1), 1600)[:n]
    return (rng.normal(size=n) * env).astype(np.float32)


# -------------------------------------------------------------------------------------------------- MFCC
def test_mfcc_equals_direct_librosa_call(monkeypatch):
    y = _noise(7.3)
    p = M.MFCCParams()
    m = librosa.feature.mfcc(y=y, sr=16000, n_mfcc=13, n_fft=400, hop_length=160, n_mels=40)
    full = np.concatenate([m, librosa.feature.delta(m), librosa.feature.delta(m, order=2)])  # (39, T)
    assert full.shape[1] == p.n_frames(len(y))
    times = np.arange(0, 7.3, 1 / 22.13)  # a non-integer frame rate, both track ends included
    monkeypatch.setattr(M, "MAX_RUN", 60)  # several runs per call: run joints must not show
    rows = M.mfcc_at(AudioSource(samples=y), times, p)
    j = np.rint(times * 100).astype(int)
    assert rows.shape == (len(times), 39)
    np.testing.assert_allclose(rows, full[:, j].T, rtol=1e-4, atol=2e-3)

