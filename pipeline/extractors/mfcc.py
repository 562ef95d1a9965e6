"""MFCC: 13 coefficients + delta + delta-delta = 39 dims per video frame (librosa), 25 ms window, 10 ms hop.

Definition (what the parity test compares with): the direct librosa call on the whole track ::

    m = librosa.feature.mfcc(y=y, sr=16000, n_mfcc=13, n_fft=400, hop_length=160, n_mels=40)
    rows = concat([m, librosa.feature.delta(m), librosa.feature.delta(m, order=2)])[:, j].T

sampled at ``j = round(t * 100)``, the centred (``center=True``) frame nearest each frame time ``t``.

It is computed per batch over the frame range the batch needs (plus the 4-frame margin the width-9 deltas read),
so memory is bounded by the batch. Two whole-track dependencies of the direct call are reproduced exactly: the zero
padding of ``center=True`` at the track ends (reads outside the track return zeros) and ``power_to_db``'s
``top_db=80`` floor, which is relative to the maximum mel power of the whole track (one streaming pass per video,
cached).
"""

from __future__ import annotations

from dataclasses import dataclass

import librosa
import numpy as np

from pipeline.extractors.audio import AudioSource, runs
from pipeline.io.timebase import (
    SAMPLE_RATE,
    frame_span,
    hop_frame,
    ms_to_samples,
    n_centred_frames,
)

DELTA_WIDTH = 9  # librosa.feature.delta default
MARGIN = DELTA_WIDTH // 2  # frames either side a delta reads
TOP_DB = 80.0  # librosa.power_to_db default, used by librosa.feature.mfcc
AMIN = 1e-10
MAX_RUN = 8192  # MFCC frames analysed at once (~82 s)


@dataclass(frozen=True)
class MFCCParams:
    n_mfcc: int = 13
    n_mels: int = 40
    window_ms: float = 25.0
    hop_ms: float = 10.0
    sample_rate: int = SAMPLE_RATE

    @property
    def win(self) -> int:
        return ms_to_samples(self.window_ms, self.sample_rate)

    @property
    def hop(self) -> int:
        return ms_to_samples(self.hop_ms, self.sample_rate)

    @property
    def dim(self) -> int:
        return 3 * self.n_mfcc

    def n_frames(self, n_samples: int) -> int:
        """Frames of a ``center=True`` analysis of ``n_samples`` samples (librosa: ``1 + n // hop``)."""
        return n_centred_frames(n_samples, self.hop)


def _mel_power(audio: AudioSource, lo: int, hi: int, p: MFCCParams) -> np.ndarray:
    """Mel power spectrogram of centred frames ``lo .. hi-1`` (n_mels, hi - lo), exactly as librosa's
    ``center=True`` analysis of the whole track computes those frames (zeros beyond the track)."""
    y = audio.read(*frame_span(lo, hi, p.hop, p.win, centred=True))
    return librosa.feature.melspectrogram(
        y=y, sr=p.sample_rate, n_fft=p.win, hop_length=p.hop, n_mels=p.n_mels, center=False
    )


def max_mel_power(audio: AudioSource, p: MFCCParams) -> float:
    """Maximum mel power over the whole track: the reference of ``power_to_db``'s ``top_db`` floor."""
    total = p.n_frames(audio.n_samples)
    best = 0.0
    for lo in range(0, total, MAX_RUN):
        best = max(best, float(_mel_power(audio, lo, min(total, lo + MAX_RUN), p).max()))
    return best


def mfcc_at(audio: AudioSource, times: np.ndarray, p: MFCCParams, max_power: float | None = None) -> np.ndarray:
    """(n,) frame times (seconds on the track's timeline, within it) -> (n, 3 * n_mfcc) float32: MFCC, delta,
    delta-delta."""
    times = np.asarray(times, dtype=np.float64)
    total = p.n_frames(audio.n_samples)
    if max_power is None:
        max_power = max_mel_power(audio, p)
    floor = 10.0 * np.log10(max(AMIN, max_power)) - TOP_DB
    j = np.clip(hop_frame(times, p.hop, sample_rate=p.sample_rate), 0, max(total - 1, 0))
    uniq, inverse = np.unique(j, return_inverse=True)
    done = np.empty((len(uniq), p.dim), dtype=np.float32)
    at = 0
    for first, last_plus, members in runs(uniq, 2 * MARGIN + 1, MAX_RUN):
        last = last_plus - (2 * MARGIN + 1)
        # analyse [lo, hi): the members plus the deltas' margin; at a track end, the track end itself, so that
        # librosa's edge handling of the deltas ('interp') sees the same edge as in the whole-track call
        lo = 0 if first - MARGIN <= 0 else first - MARGIN
        hi = total if last + MARGIN + 1 >= total else last + MARGIN + 1
        db = librosa.power_to_db(_mel_power(audio, lo, hi, p), ref=1.0, amin=AMIN, top_db=None)
        db = np.maximum(db, floor)
        m = librosa.feature.mfcc(S=db, n_mfcc=p.n_mfcc)  # (n_mfcc, hi - lo)
        mode = "interp" if m.shape[1] >= DELTA_WIDTH else "nearest"  # 'interp' needs >= 9 frames (tracks < 90 ms)
        feats = np.concatenate(
            [m, librosa.feature.delta(m, width=DELTA_WIDTH, mode=mode), librosa.feature.delta(m, width=DELTA_WIDTH, order=2, mode=mode)]
        )  # (3 * n_mfcc, hi - lo)
        done[at : at + len(members)] = feats[:, members - lo].T
        at += len(members)
    return done[inverse.reshape(-1)]
