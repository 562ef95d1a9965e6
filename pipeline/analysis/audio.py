"""Audio tracks for the streaming chain: the ``src`` the audio extractors read (``read(start, stop)``, ``n_samples``,
``key``; pipeline/extractors/__init__.py), without ever holding a whole track.

- :class:`FileTrack`: a file's first audio stream, decoded by :class:`~pipeline.io.media.AudioDecoder` (the decoder
  behind ``prepare``'s WAV files, so the samples are the same). One counting pass gives ``n_samples`` and where the
  track starts; reads are then served from the pieces of a running decode, which restarts from the beginning when a
  read goes back further than it kept (MFCC's ``top_db`` reference reads the whole track once before the first
  rows; after that, reads move forward with the frames).
- :class:`LiveTrack`: the track of a live stream, fed as packets arrive; ``n_samples`` grows. A read before what it
  kept, or past what has arrived, gives zeros: the live loop asks only for frames whose audio has arrived.

Both keep pieces in a :class:`PieceStore` and drop those more than ``retain_s`` seconds behind the latest read.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from pipeline.io.media import AudioDecoder
from pipeline.io.timebase import SAMPLE_RATE

RETAIN_S = 30.0  # seconds of samples kept behind the latest read (reads of one chunk go back by its length)


class PieceStore:
    """Consecutive float32 pieces of a track, by sample position: ``[start, end)`` are held."""

    def __init__(self) -> None:
        self.pieces: deque[tuple[int, np.ndarray]] = deque()  # (first sample, samples (k,))
        self.start = 0  # first sample held
        self.end = 0  # one past the last sample held

    def add(self, piece: np.ndarray) -> None:
        if len(piece):
            self.pieces.append((self.end, piece))
            self.end += len(piece)

    def drop_before(self, sample: int) -> None:
        """Forget pieces that end at or before ``sample``."""
        while self.pieces and self.pieces[0][0] + len(self.pieces[0][1]) <= sample:
            self.pieces.popleft()
        self.start = self.pieces[0][0] if self.pieces else self.end

    def reset(self) -> None:
        self.pieces.clear()
        self.start = self.end = 0

    def copy(self, lo: int, hi: int, out: np.ndarray, at: int) -> None:
        """Samples ``[lo, hi)`` (within ``[start, end)``) into ``out[at : at + hi - lo]``."""
        for first, x in self.pieces:
            a, b = max(lo, first), min(hi, first + len(x))
            if a < b:
                out[at + a - lo : at + b - lo] = x[a - first : b - first]
            if first >= hi:
                break


class FileTrack:
    """The first audio stream of ``path`` as an audio extractor's ``src`` (see the module docstring). ``present``:
    the file has an audio stream; ``start``: seconds on the container's clock of sample 0; ``warnings``: what
    decoding found (holes in the timestamps)."""

    def __init__(self, path: Path, key: str, retain_s: float = RETAIN_S, sample_rate: int = SAMPLE_RATE) -> None:
        self.key = key
        self._decoder = AudioDecoder(path, sample_rate)
        for _ in self._decoder:  # counting pass: n_samples, start, warnings; nothing kept
            pass
        self.present, self.start = self._decoder.present, self._decoder.start
        self.n_samples, self.warnings = self._decoder.n_samples, self._decoder.warnings
        self.retain = int(retain_s * sample_rate)
        self._store = PieceStore()
        self._pieces: Iterator[np.ndarray] | None = None
        self.restarts = 0  # decodes from the beginning after the counting pass (tests, benchmark)

    def _restart(self) -> None:
        self.close()
        self._pieces = iter(self._decoder)
        self._store.reset()
        self.restarts += 1

    def read(self, start: int, stop: int) -> np.ndarray:
        """float32 samples ``[start, stop)``, zeros where the range lies outside the track."""
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        lo, hi = max(start, 0), min(stop, self.n_samples)
        if hi <= lo:
            return out
        if self._pieces is None or lo < self._store.start:
            self._restart()
        keep_from = max(0, lo - self.retain)
        while self._store.end < hi:
            piece = next(self._pieces, None)  # type: ignore[arg-type]
            if piece is None:  # shorter than counted: cannot happen with one decoder; zeros, as past the end
                break
            self._store.add(piece)
            self._store.drop_before(keep_from)
        self._store.drop_before(keep_from)
        self._store.copy(lo, min(hi, self._store.end), out, lo - start)
        return out

    def close(self) -> None:
        if self._pieces is not None:
            close = getattr(self._pieces, "close", None)
            if close is not None:
                close()  # the generator closes its container
            self._pieces = None


class LiveTrack:
    """A live stream's audio as an extractor's ``src``: pieces are added by the reader thread as they are decoded
    (:meth:`add`), reads come from the analysing thread. ``n_samples`` is what has arrived so far; ``ended`` turns
    true when the stream's audio ends (or the stream has none)."""

    def __init__(self, key: str, retain_s: float = RETAIN_S, sample_rate: int = SAMPLE_RATE) -> None:
        self.key = key
        self.rate = sample_rate
        self.retain = int(retain_s * sample_rate)
        self.start: float | None = None  # seconds on the stream's clock of sample 0, once known
        self.ended = False
        self._store = PieceStore()
        self._lock = threading.Lock()

    @property
    def n_samples(self) -> int:
        return self._store.end

    def add(self, pieces: list[np.ndarray], start: float | None) -> None:
        with self._lock:
            if self.start is None:
                self.start = start
            for p in pieces:
                self._store.add(p)

    def end(self) -> None:
        self.ended = True

    def read(self, start: int, stop: int) -> np.ndarray:
        """float32 samples ``[start, stop)``: zeros before the track, past what has arrived, and before what is
        kept."""
        out = np.zeros(max(0, stop - start), dtype=np.float32)
        with self._lock:
            lo, hi = max(start, self._store.start), min(stop, self._store.end)
            if hi > lo:
                self._store.copy(lo, hi, out, lo - start)
            self._store.drop_before(max(0, start - self.retain))
        return out
