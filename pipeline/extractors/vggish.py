"""VGGish audio embeddings, one 128-d row per video frame (the paper's "hop synchronised with the annotations").

The network is ``torchvggish``'s ``VGG(make_layers(), postprocess=False)``, so ``vggish-10086976.pth`` loads with
``strict=True``. Input contract (:data:`CONTRACT`, VGGish's own ``vggish_params``): 16 kHz mono; log-mel with a
25 ms window, 10 ms hop, 512-point FFT, 64 mel bands 125-7500 Hz, ``log(mel + 0.01)``; one example = 96 log-mel
frames (0.96 s + one window) -> (1, 96, 64).

Per frame: the example whose centre is nearest the frame time (:func:`pipeline.timebase.centred_example_start`,
at most 5 ms off). Log-mel frames are computed once per batch over the contiguous sample range the batch needs and
sliced, rather than once per frame; they equal torchvggish's ``waveform_to_examples`` on the same samples because
uncentred STFT frames depend only on their own 400 samples. Windows that reach past either end of the track see
zeros (silence).

Optional PCA (``pca: true``): torchvggish's ``Postprocessor`` formula (PCA with whitening, clip to [-2, 2],
8-bit quantisation to 0..255) with the matrices of ``vggish_pca_params-970ea276.pth`` (keys ``pca_eigen_vectors``,
``pca_means``), loaded from the file here because the torchvggish class downloads it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn
from torchvggish import mel_features, vggish_params
from torchvggish.torchvggish import VGG, make_layers

from pipeline.extractors.audio import AudioSource, runs
from pipeline.timebase import SAMPLE_RATE, centred_example_start


@dataclass(frozen=True)
class InputContract:
    sample_rate: int = vggish_params.SAMPLE_RATE  # 16000, the prepared rate
    win: int = int(round(vggish_params.SAMPLE_RATE * vggish_params.STFT_WINDOW_LENGTH_SECONDS))  # 400 samples
    hop: int = int(round(vggish_params.SAMPLE_RATE * vggish_params.STFT_HOP_LENGTH_SECONDS))  # 160 samples
    n_frames: int = vggish_params.NUM_FRAMES  # 96 log-mel frames per example
    n_bands: int = vggish_params.NUM_BANDS  # 64
    dim: int = vggish_params.EMBEDDING_SIZE  # 128


CONTRACT = InputContract()
assert CONTRACT.sample_rate == SAMPLE_RATE
MAX_RUN = 4096  # log-mel frames analysed at once (~41 s): bounds memory for long videos


def log_mel(samples: np.ndarray) -> np.ndarray:
    """VGGish's log-mel spectrogram of ``samples`` (16 kHz): (1 + (n - 400) // 160, 64) float64."""
    return mel_features.log_mel_spectrogram(
        samples,
        audio_sample_rate=vggish_params.SAMPLE_RATE,
        log_offset=vggish_params.LOG_OFFSET,
        window_length_secs=vggish_params.STFT_WINDOW_LENGTH_SECONDS,
        hop_length_secs=vggish_params.STFT_HOP_LENGTH_SECONDS,
        num_mel_bins=vggish_params.NUM_MEL_BINS,
        lower_edge_hertz=vggish_params.MEL_MIN_HZ,
        upper_edge_hertz=vggish_params.MEL_MAX_HZ,
    )


def example_samples(times: np.ndarray) -> tuple[np.ndarray, int]:
    """First sample of the example centred nearest each time, and the example length in samples (15 600)."""
    c = CONTRACT
    k0 = centred_example_start(times, c.hop, c.win, c.n_frames)
    return k0 * c.hop, (c.n_frames - 1) * c.hop + c.win


def examples_at(audio: AudioSource, times: np.ndarray) -> np.ndarray:
    """(n,) frame times in seconds -> (n, 96, 64) float32 log-mel examples, one centred on each time."""
    c = CONTRACT
    times = np.asarray(times, dtype=np.float64)
    k0 = centred_example_start(times, c.hop, c.win, c.n_frames)
    out = np.empty((len(times), c.n_frames, c.n_bands), dtype=np.float32)
    uniq, inverse = np.unique(k0, return_inverse=True)
    done = np.empty((len(uniq), c.n_frames, c.n_bands), dtype=np.float32)
    at = 0
    for lo, hi, members in runs(uniq, c.n_frames, MAX_RUN):
        # log-mel frames lo .. hi-1 cover samples [lo * hop, (hi - 1) * hop + win)
        spec = log_mel(audio.read(lo * c.hop, (hi - 1) * c.hop + c.win))  # (hi - lo, 64)
        idx = (members - lo)[:, None] + np.arange(c.n_frames)[None, :]  # (m, 96) rows of spec
        done[at : at + len(members)] = spec[idx]
        at += len(members)
    out[:] = done[inverse.reshape(-1)]
    return out


class VGGishFeatures(nn.Module):
    """(B, 1, 96, 64) log-mel examples -> (B, 128) embeddings; PCA-whitened and quantised to 0..255 when PCA
    matrices are given (torchvggish ``Postprocessor.postprocess``, without its final squeeze)."""

    def __init__(self, net: VGG, pca: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.net = net
        self.pca = pca is not None
        if pca is not None:
            self.register_buffer("pca_matrix", torch.as_tensor(pca["pca_eigen_vectors"]).float())  # (128, 128)
            self.register_buffer("pca_means", torch.as_tensor(pca["pca_means"]).float().reshape(-1, 1))  # (128, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(x)  # (B, 1, 96, 64) -> (B, 128)
        if not self.pca:
            return y
        pca_applied = torch.mm(self.pca_matrix, (y.float().t() - self.pca_means)).t()  # (B, 128)
        clipped = torch.clamp(pca_applied, vggish_params.QUANTIZE_MIN_VAL, vggish_params.QUANTIZE_MAX_VAL)
        span = vggish_params.QUANTIZE_MAX_VAL - vggish_params.QUANTIZE_MIN_VAL
        return torch.round((clipped - vggish_params.QUANTIZE_MIN_VAL) * (255.0 / span))


def build_network() -> VGG:
    """torchvggish's VGG without its downloading postprocessor; parameter names match vggish-10086976.pth."""
    return VGG(make_layers(), postprocess=False)


def check_pca(state: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    from pipeline.extractors.weights import WeightsError

    keys = (vggish_params.PCA_EIGEN_VECTORS_NAME, vggish_params.PCA_MEANS_NAME)
    if any(k not in state for k in keys):
        raise WeightsError(f"{path}: PCA params need keys {list(keys)}, found {sorted(state)[:5]}")
    d = CONTRACT.dim
    if tuple(state[keys[0]].shape) != (d, d) or state[keys[1]].numel() != d:
        raise WeightsError(f"{path}: PCA shapes {tuple(state[keys[0]].shape)}, {tuple(state[keys[1]].shape)}; expected ({d}, {d}), ({d},)")
    return {k: state[k] for k in keys}
