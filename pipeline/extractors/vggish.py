"""VGGish audio embeddings, one 128-d row per video frame (the paper's "hop synchronised with the annotations").

The network is ``torchvggish``'s ``VGG(make_layers(), postprocess=False)``, so ``vggish-10086976.pth`` loads with
``strict=True``. Input contract (:data:`CONTRACT`, VGGish's own ``vggish_params``): 16 kHz mono; log-mel with a
25 ms window, 10 ms hop, 512-point FFT, 64 mel bands 125-7500 Hz, ``log(mel + 0.01)``; one example = 96 log-mel
frames (0.96 s + one window) -> (1, 96, 64).

Per frame: the example whose centre is nearest the frame time (:func:`pipeline.io.timebase.centred_example_start`,
at most 5 ms off). The reader does not build the (96, 64) examples: it packs, per batch, the contiguous sample
ranges the batch needs and where each log-mel frame and each example starts in them (:class:`PackedExamples`,
about 25 times fewer bytes than the examples, which overlap by 95 %). :class:`LogMel` computes the log-mel frames
once and cuts the examples on the model's device (the GPU when there is one); in float32 they equal torchvggish's
``waveform_to_examples`` on the same samples (uncentred STFT frames depend only on their own 400 samples) to about
1e-5. Windows that reach past either end of the track see zeros (silence).

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
from pipeline.io.timebase import (
    SAMPLE_RATE,
    centred_example_start,
    frame_span,
    frame_start,
    run_length,
    seconds_to_samples,
)


@dataclass(frozen=True)
class InputContract:
    sample_rate: int = vggish_params.SAMPLE_RATE  # 16000, the prepared rate
    win: int = int(seconds_to_samples(vggish_params.STFT_WINDOW_LENGTH_SECONDS, vggish_params.SAMPLE_RATE))  # 400
    hop: int = int(seconds_to_samples(vggish_params.STFT_HOP_LENGTH_SECONDS, vggish_params.SAMPLE_RATE))  # 160
    n_frames: int = vggish_params.NUM_FRAMES  # 96 log-mel frames per example
    n_bands: int = vggish_params.NUM_BANDS  # 64
    dim: int = vggish_params.EMBEDDING_SIZE  # 128


CONTRACT = InputContract()
assert CONTRACT.sample_rate == SAMPLE_RATE
MAX_RUN = 4096  # log-mel frames analysed at once (~41 s): bounds memory for long videos


def example_samples(times: np.ndarray) -> tuple[np.ndarray, int]:
    """First sample of the example centred nearest each time (seconds on the track's timeline), and the example
    length in samples (15 600)."""
    c = CONTRACT
    k0 = centred_example_start(times, c.hop, c.win, c.n_frames)
    return frame_start(k0, c.hop, c.win, centred=False), run_length(c.n_frames, c.hop, c.win)


@dataclass
class PackedExamples:
    """Log-mel examples described by the audio they come from (see the module docstring); concatenable."""

    samples: torch.Tensor  # (S,) float32: the sample ranges the batch needs, one after another
    frame_starts: torch.Tensor  # (F,) int64: first sample of each log-mel frame to compute, in `samples`
    example_starts: torch.Tensor  # (m,) int64: first of the 96 log-mel frames of each example, in the F frames

    def __len__(self) -> int:
        return len(self.example_starts)

    def to(self, device: torch.device, non_blocking: bool = False) -> "PackedExamples":
        return PackedExamples(*(t.to(device, non_blocking=non_blocking) for t in (self.samples, self.frame_starts, self.example_starts)))

    def pin_memory(self) -> "PackedExamples":
        return PackedExamples(*(t.pin_memory() for t in (self.samples, self.frame_starts, self.example_starts)))

    @staticmethod
    def concat(parts: list["PackedExamples"]) -> "PackedExamples":
        if len(parts) == 1:
            return parts[0]
        s_off, f_off, samples, frames, examples = 0, 0, [], [], []
        for p in parts:
            samples.append(p.samples)
            frames.append(p.frame_starts + s_off)
            examples.append(p.example_starts + f_off)
            s_off += len(p.samples)
            f_off += len(p.frame_starts)
        return PackedExamples(torch.cat(samples), torch.cat(frames), torch.cat(examples))


def pack_examples(audio: AudioSource, times: np.ndarray) -> PackedExamples:
    """(n,) frame times (seconds on the track's timeline) -> the packed examples centred on them (one per time, in
    order)."""
    c = CONTRACT
    times = np.asarray(times, dtype=np.float64)
    k0 = centred_example_start(times, c.hop, c.win, c.n_frames)
    uniq, inverse = np.unique(k0, return_inverse=True)
    samples, frame_starts, first_frame = [], [], np.empty(len(uniq), dtype=np.int64)
    s_off = f_off = at = 0
    for lo, hi, members in runs(uniq, c.n_frames, MAX_RUN):
        start, stop = frame_span(lo, hi, c.hop, c.win, centred=False)  # log-mel frames lo .. hi-1
        seg = audio.read(start, stop)
        samples.append(seg)
        frame_starts.append(s_off + frame_start(np.arange(lo, hi, dtype=np.int64), c.hop, c.win, centred=False) - start)
        first_frame[at : at + len(members)] = f_off + (members - lo)
        s_off += len(seg)
        f_off += hi - lo
        at += len(members)
    return PackedExamples(
        torch.from_numpy(np.concatenate(samples) if samples else np.zeros(0, np.float32)),
        torch.from_numpy(np.concatenate(frame_starts) if frame_starts else np.zeros(0, np.int64)),
        torch.from_numpy(first_frame[inverse.reshape(-1)]),
    )


class LogMel(nn.Module):
    """:class:`PackedExamples` -> (m, 1, 96, 64) float32 log-mel examples: VGGish's log-mel (torchvggish
    ``mel_features.log_mel_spectrogram``: periodic Hann, |rfft(512)|, mel matrix, log(x + 0.01)) in torch, so it
    runs on the model's device, always in float32 (outside autocast)."""

    def __init__(self) -> None:
        super().__init__()
        c = CONTRACT
        self.n_fft = 2 ** int(np.ceil(np.log2(c.win)))  # 512, as torchvggish rounds the window up
        self.register_buffer("window", torch.from_numpy(mel_features.periodic_hann(c.win)).float(), persistent=False)
        mel = mel_features.spectrogram_to_mel_matrix(
            num_mel_bins=c.n_bands, num_spectrogram_bins=self.n_fft // 2 + 1, audio_sample_rate=c.sample_rate,
            lower_edge_hertz=vggish_params.MEL_MIN_HZ, upper_edge_hertz=vggish_params.MEL_MAX_HZ,
        )
        self.register_buffer("mel", torch.from_numpy(mel).float(), persistent=False)  # (257, 64)
        self.register_buffer("frame_offsets", torch.arange(c.win), persistent=False)
        self.register_buffer("example_offsets", torch.arange(c.n_frames), persistent=False)

    def forward(self, p: PackedExamples) -> torch.Tensor:
        with torch.autocast(p.samples.device.type, enabled=False):
            frames = p.samples[p.frame_starts[:, None] + self.frame_offsets]  # (F, 400) windows of samples
            mag = torch.fft.rfft(frames * self.window, n=self.n_fft).abs()  # (F, 257)
            log_mel = torch.log(mag @ self.mel + vggish_params.LOG_OFFSET)  # (F, 64)
            return log_mel[p.example_starts[:, None] + self.example_offsets][:, None]  # (m, 96, 64) -> (m, 1, 96, 64)


def examples_at(audio: AudioSource, times: np.ndarray) -> np.ndarray:
    """(n,) frame times in seconds -> (n, 96, 64) float32 log-mel examples, one centred on each time (CPU)."""
    with torch.inference_mode():
        return LogMel()(pack_examples(audio, times))[:, 0].numpy()


class VGGishFeatures(nn.Module):
    """(B, 1, 96, 64) log-mel examples -> (B, 128) embeddings; PCA-whitened and quantised to 0..255 when PCA
    matrices are given (torchvggish ``Postprocessor.postprocess``, without its final squeeze)."""

    def __init__(self, net: VGG, pca: dict[str, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.net = net
        self.log_mel = LogMel()
        self.pca = pca is not None
        if pca is not None:
            self.register_buffer("pca_matrix", torch.as_tensor(pca["pca_eigen_vectors"]).float())  # (128, 128)
            self.register_buffer("pca_means", torch.as_tensor(pca["pca_means"]).float().reshape(-1, 1))  # (128, 1)

    def forward(self, x: torch.Tensor | PackedExamples) -> torch.Tensor:
        if isinstance(x, PackedExamples):
            x = self.log_mel(x)  # -> (B, 1, 96, 64)
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
