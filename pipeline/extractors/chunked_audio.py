"""Audio models that give a hidden-state sequence at a fixed rate (the wav2vec2 family: WavLM, HuBERT, wav2vec2;
50 Hz), run over any track length in chunks, sampled at the video's frame times.

Definition (what the numbers test compares with): the model's hidden states over the whole prepared 16 kHz track,
``H = model(track)`` (T, D) with ``T = (n - win) // hop + 1`` frames (:func:`~pipeline.io.timebase.conv_stack`:
hop 320, window 400 samples for wav2vec2's feature encoder), and a frame at time ``t`` (seconds on the track) takes
``H[k]``, ``k`` the frame whose window centre is nearest ``t``, clipped to the track
(:func:`~pipeline.io.timebase.nearest_uncentred_frame`). Frames before or after the track are the extract stage's
business, with VGGish's and MFCC's rules (zeros before a late track, the last row repeated after it).

Chunks bound memory for any track length: hidden frames are cut into a fixed grid of ``chunk`` frames per track
(independent of batches, so a resumed or re-batched run gives the same rows); chunk ``c`` is computed from the
frames ``[c * chunk - context, (c + 1) * chunk + context)`` clipped to the track, and only its own ``chunk`` frames
are kept. A layer whose receptive field fits in ``context`` (the convolutional encoder, the convolutional position
embedding: +-64 frames) gives exactly the rows of the whole-track run; self-attention layers see the chunk and its
context instead of the whole track, as every long-audio extractor does. With ``normalise`` (the processor's
``do_normalize``), the track is scaled to zero mean and unit variance with statistics over the whole track (one
streaming pass per video, cached), as the processor would scale the whole track.

Reader side: :class:`ChunkInputs` packs, per batch, the chunks the batch's times fall into
(:class:`PackedChunks`); device side: :class:`ChunkedSequence` runs the network once per chunk (the last few
chunks are cached, since consecutive batches share them) and gathers each time's row.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.extractors import Extractor
from pipeline.extractors.audio import AudioSource
from pipeline.io.timebase import (
    SAMPLE_RATE,
    frame_span,
    n_uncentred_frames,
    nearest_uncentred_frame,
)

NORM_EPS = 1e-7  # transformers' Wav2Vec2FeatureExtractor.zero_mean_unit_var_norm
STATS_BLOCK = SAMPLE_RATE * 60  # samples read at once for the track statistics (one minute)
CACHED_CHUNKS = 4  # hidden states of the last chunks kept on the device


@dataclass(frozen=True)
class ChunkGrid:
    """Hidden frames of a track: ``hop`` samples apart, each computed from ``win`` samples; chunks of ``chunk``
    frames, each computed with ``context`` more frames on either side."""

    hop: int
    win: int
    chunk: int
    context: int

    @classmethod
    def from_seconds(cls, hop: int, win: int, chunk_s: float, context_s: float) -> "ChunkGrid":
        frames_per_s = SAMPLE_RATE / hop
        return cls(hop, win, max(1, round(chunk_s * frames_per_s)), round(context_s * frames_per_s))

    def n_frames(self, n_samples: int) -> int:
        """Hidden frames of a track; a track shorter than one window is zero-padded to one frame."""
        return max(1, n_uncentred_frames(n_samples, self.hop, self.win))

    def window(self, c: int, n_frames: int) -> tuple[int, int]:
        """Hidden frames ``[lo, hi)`` computed for chunk ``c`` of a track of ``n_frames``."""
        return max(0, c * self.chunk - self.context), min(n_frames, (c + 1) * self.chunk + self.context)


@dataclass
class PackedChunks:
    """The chunk windows a batch needs and, per requested time, where its row is; concatenable."""

    keys: list[tuple[str, int]]  # (track key, chunk index) per window
    waves: list[torch.Tensor]  # (n_i,) float32 samples per window
    chunk: torch.Tensor  # (m,) int64: the window of each requested time
    frame: torch.Tensor  # (m,) int64: its hidden frame inside that window's output

    def __len__(self) -> int:
        return len(self.chunk)

    def to(self, device: torch.device, non_blocking: bool = False) -> "PackedChunks":
        return PackedChunks(self.keys, [w.to(device, non_blocking=non_blocking) for w in self.waves],
                            self.chunk.to(device, non_blocking=non_blocking), self.frame.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> "PackedChunks":
        return PackedChunks(self.keys, [w.pin_memory() for w in self.waves], self.chunk.pin_memory(), self.frame.pin_memory())

    @staticmethod
    def concat(parts: list["PackedChunks"]) -> "PackedChunks":
        if len(parts) == 1:
            return parts[0]
        keys, waves, chunks, frames = [], [], [], []
        for p in parts:
            chunks.append(p.chunk + len(keys))
            keys += p.keys
            waves += p.waves
            frames.append(p.frame)
        return PackedChunks(keys, waves, torch.cat(chunks), torch.cat(frames))


class ChunkInputs:
    """Reader side: ``(source, times)`` -> :class:`PackedChunks` (times in seconds on the track's timeline, within
    it). Caches each track's normalisation statistics."""

    def __init__(self, grid: ChunkGrid, normalise: bool) -> None:
        self.grid = grid
        self.normalise = normalise
        self._stats: dict[str, tuple[float, float]] = {}

    def stats(self, src: AudioSource) -> tuple[float, float]:
        """(mean, 1 / sqrt(var + eps)) of the whole track, in one streaming pass (float64 sums)."""
        if src.key not in self._stats:
            s = s2 = 0.0
            for lo in range(0, src.n_samples, STATS_BLOCK):
                x = src.read(lo, min(src.n_samples, lo + STATS_BLOCK)).astype(np.float64)
                s, s2 = s + x.sum(), s2 + (x * x).sum()
            n = max(src.n_samples, 1)
            mean = s / n
            self._stats[src.key] = (mean, 1.0 / np.sqrt(max(s2 / n - mean * mean, 0.0) + NORM_EPS))
        return self._stats[src.key]

    def __call__(self, src: AudioSource, times: np.ndarray) -> PackedChunks:
        g = self.grid
        n = g.n_frames(src.n_samples)
        k = nearest_uncentred_frame(np.asarray(times, dtype=np.float64), g.hop, g.win, n)
        c = k // g.chunk
        keys, waves = [], []
        chunk_of = np.empty(len(k), dtype=np.int64)
        frame_of = np.empty(len(k), dtype=np.int64)
        for i, ci in enumerate(np.unique(c)):
            lo, hi = g.window(int(ci), n)
            wave = src.read(*frame_span(lo, hi, g.hop, g.win, centred=False))
            if self.normalise:
                mean, inv = self.stats(src)
                wave = ((wave - mean) * inv).astype(np.float32)
            keys.append((src.key, int(ci)))
            waves.append(torch.from_numpy(wave))
            sel = c == ci
            chunk_of[sel], frame_of[sel] = i, k[sel] - lo
        return PackedChunks(keys, waves, torch.from_numpy(chunk_of), torch.from_numpy(frame_of))


class ChunkedSequence(nn.Module):
    """Device side: :class:`PackedChunks` -> (m, D) rows. ``net`` maps a (1, n) waveform to its (1, F, D) hidden
    states (``F = (n - win) // hop + 1``); each window runs once, the last :data:`CACHED_CHUNKS` are kept."""

    def __init__(self, net: Callable[[torch.Tensor], torch.Tensor], dim: int) -> None:
        super().__init__()
        self.net = net
        self.dim = dim
        self.cache: OrderedDict[tuple[str, int], torch.Tensor] = OrderedDict()

    def hidden(self, key: tuple[str, int], wave: torch.Tensor) -> torch.Tensor:
        """(F, D) hidden states of one chunk window, from the cache when it was just computed."""
        if key in self.cache:
            self.cache.move_to_end(key)
            return self.cache[key]
        h = self.net(wave[None])[0]  # (1, n) -> (1, F, D) -> (F, D)
        self.cache[key] = h
        if len(self.cache) > CACHED_CHUNKS:
            self.cache.popitem(last=False)
        return h

    def forward(self, p: PackedChunks) -> torch.Tensor:
        out = None
        for i, (key, wave) in enumerate(zip(p.keys, p.waves)):
            h = self.hidden(key, wave)
            if out is None:
                out = torch.empty((len(p), h.shape[-1]), dtype=h.dtype, device=h.device)
            sel = p.chunk == i
            out[sel] = h[p.frame[sel]]  # (F, D) gathered at each time's frame -> (m_i, D)
        return out if out is not None else torch.zeros((0, self.dim))


def audio_extractor(name: str, cfg: Any, net: nn.Module | Any, dim: int, digest: str, normalise: bool,
                    geometry: tuple[int, int], params: dict[str, Any], dev: torch.device, precision: str) -> Extractor:
    """The :class:`Extractor` of a chunked hidden-state model (``transformers-audio``, ``onnx-audio``); ``params``
    (what decides the rows) gains the frame geometry and the chunk grid."""
    hop, win = geometry
    grid = ChunkGrid.from_seconds(hop, win, cfg.chunk_seconds, cfg.context_seconds)
    params = {**params, "hop": hop, "receptive_field": win, "normalise": normalise,
              "chunk_frames": grid.chunk, "context_frames": grid.context}
    contract = {
        "sample_rate": SAMPLE_RATE, "hop": hop, "window": win, "frame_rate_hz": SAMPLE_RATE / hop,
        "normalise": "zero mean, unit variance over the whole track" if normalise else "none",
        "rows": "hidden state whose window centre is nearest the frame time, clipped to the track",
        "chunks": f"{grid.chunk} frames computed with {grid.context} frames of context on each side",
    }
    return Extractor(
        name, "audio", (dim,), cfg.dtype, cfg.batch, digest, params, contract, dev,
        module=ChunkedSequence(net, dim), audio_inputs=ChunkInputs(grid, normalise), collate=PackedChunks.concat,
        precision=precision, model_kind=cfg.kind,
    )
