"""``extract@<name>``: ``data/prepared/`` -> ``features/<name>.zarr`` (format: pipeline/io/features.py).

The driver around an extractor (pipeline/extractors): which trials, in what batches, on which device, and writing.

- Trials come from ``index.json``; every trial gets N rows, one per frame of ``frames`` (at ``Trial.times`` on the
  video timeline). ``frames`` extractors (``iresnet``, the image models) read the crops of ``frames.h5``, mask =
  ``face``. ``audio`` extractors (``vggish``, ``mfcc``, the audio models) read
  ``audio/<video>.wav`` around each frame time moved onto the track by the video's ``audio_offset``
  (pipeline/io/timebase.py), mask = the video has audio and the frame is heard within the track; frames past the end of
  a short track repeat the last row (paper 3.2), frames before a late-starting track and a video without audio give
  zero rows.
- Batches cross trial boundaries: a batch is a list of pieces ``(trial, lo, hi)`` filled to ``batch`` frames.
- Three threads overlap: a reader prepares batch inputs (HDF5 reads, log-mel slicing) ahead of the model, the main
  thread runs the model (``torch.inference_mode``; on CUDA with float16 autocast, channels-last and pinned memory),
  and a writer appends rows to the store. Memory: a few batches plus one chunk per store bucket.
- Resuming: only incomplete trials of this ``--shard i/n`` run, each from its first row not on disk. The store's
  fingerprint (extractor parameters, weights digest, code version, digests of the prepared inputs that decide its
  rows) decides whether an existing store is resumed or rebuilt, which is what dvc.yaml's ``persist: true`` relies
  on.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from collections import OrderedDict, deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import closing, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pipeline.common import provenance
from pipeline.common.prefetch import read_ahead
from pipeline.extractors import Extractor, build, code_version
from pipeline.extractors import weights as W
from pipeline.extractors.audio import AudioSource
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import FrameReader, PreparedIndex, Trial, load_index
from pipeline.io.timebase import (
    SAMPLE_RATE,
    audio_mask,
    audio_source_rows,
    track_seconds,
)

PREFETCH = 3  # batches prepared ahead of the model
# Python's thread switch interval during a CUDA run (default 5 ms). The thread that launches GPU work holds the
# interpreter lock almost all the time; at 5 ms the reader waits up to that long each time it needs the lock back.
# Measured on a 2-core CPU, reading crops beside a busy Python thread: 12 000-14 000 frames/s at 5 ms, 45 000-51 000
# at 1 ms (alone: 330 000-400 000). On the CPU the network runs in native code and 1 ms measured worse (iresnet
# ratio 0.81-0.94 against 1.02-1.06), so CPU runs keep the default.
SWITCH_INTERVAL_S = 0.001


@dataclass(frozen=True)
class Piece:
    trial: str
    lo: int  # first row
    hi: int  # one past the last row
    write_from: int = -1  # first row to write (rows before it are on disk already); -1: ``lo``

    @property
    def first_new(self) -> int:
        return self.lo if self.write_from < 0 else max(self.lo, self.write_from)


@dataclass
class Batch:
    pieces: list[Piece]
    x: Any  # m model inputs (a (m, ...) tensor, or the extractor's packed form), m <= rows
    take: np.ndarray | None  # (rows,) int: row i is output take[i], or zeros when -1; None: row i is output i
    mask: np.ndarray  # (rows,) bool

    @property
    def rows(self) -> int:
        return len(self.mask)

    def pin_memory(self) -> "Batch":
        """The batch with its inputs in page-locked memory (what a DataLoader's pinning thread calls)."""
        return Batch(self.pieces, self.x.pin_memory() if len(self.x) else self.x, self.take, self.mask)


def plan_batches(store: FeatureStore, trials: list[str], batch: int) -> Iterator[list[Piece]]:
    """Batches of ``batch`` rows (the last one shorter) over ``trials`` in the store's write order, crossing trial
    boundaries, cut from row 0 as an uninterrupted run cuts them. Batches whose rows are all on disk are skipped;
    a batch that is partly on disk keeps its rows (``Piece.write_from`` says which to write), so that every batch a
    resumed run computes holds exactly the frames it held in an uninterrupted run: kernels whose last bits depend on
    the batch (BLAS, oneDNN) give the same rows, and a resumed store equals an uninterrupted one bit for bit."""
    cur: list[Piece] = []
    room = batch
    for t in trials:
        r, n, done = 0, store.n_rows(t), store.resume_row(t)
        while r < n:
            k = min(room, n - r)
            cur.append(Piece(t, r, r + k, done))
            r += k
            room -= k
            if room == 0:
                if any(p.first_new < p.hi for p in cur):
                    yield cur
                cur, room = [], batch
    if cur and any(p.first_new < p.hi for p in cur):
        yield cur


class Inputs:
    """Reader side: prepared data -> :class:`Batch` (runs in the reader thread; one instance per thread)."""

    def __init__(self, ex: Extractor, index: PreparedIndex, pin: bool) -> None:
        self.ex = ex
        self.index = index
        self.trials = {t.name: t for t in index.trials}
        self.pin = pin
        self._frames: FrameReader | None = None
        self._face_of: tuple[str, np.ndarray] = ("", np.zeros(0, dtype=bool))
        self._audio: OrderedDict[str, AudioSource] = OrderedDict()
        self._timing: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}

    def close(self) -> None:
        if self._frames is not None:
            self._frames.close()
        for a in self._audio.values():
            a.close()

    def _audio_source(self, video: str) -> AudioSource:
        if video not in self._audio:
            path = self.index.audio_path(video) if self.index.videos[video].has_audio else None
            self._audio[video] = AudioSource(path, key=video) if path else AudioSource.silent(video)
            if len(self._audio) > 4:  # trials of one video are rarely far apart; keep a few files open
                self._audio.popitem(last=False)[1].close()
        return self._audio[video]

    def _face(self, trial: str) -> np.ndarray:
        """The trial's face mask, read once (batches visit a trial in consecutive pieces)."""
        if self._face_of[0] != trial:
            assert self._frames is not None
            self._face_of = (trial, self._frames.face(trial))
        return self._face_of[1]

    def timing(self, t: Trial, n_samples: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Per trial: frame times on the WAV's timeline (N,), audio mask (N,), audio source row (N,) (see
        pipeline.io.timebase)."""
        if t.name not in self._timing:
            times = track_seconds(t.times, self.index.videos[t.video].audio_offset)
            mask = audio_mask(times, n_samples)
            self._timing = {t.name: (times, mask, audio_source_rows(mask))}  # one trial at a time is enough
        return self._timing[t.name]

    def __call__(self, pieces: list[Piece]) -> Batch:
        rows = sum(p.hi - p.lo for p in pieces)
        mask = np.empty(rows, dtype=bool)
        if self.ex.kind == "frames":
            if self._frames is None:
                self._frames = FrameReader(self.index.root / "frames.h5")
            s = self.index.frames_size
            x = torch.empty((rows, s, s, 3), dtype=torch.uint8, pin_memory=self.pin)
            xn = x.numpy()
            at = 0
            for p in pieces:
                n = p.hi - p.lo
                self._frames.frames(p.trial, p.lo, p.hi, out=xn[at : at + n])
                mask[at : at + n] = self._face(p.trial)[p.lo : p.hi]
                at += n
            return Batch(pieces, x, None, mask)
        # audio: compute each distinct source row once (frames past a short track share the last one)
        take = np.full(rows, -1, dtype=np.int64)
        parts: list[np.ndarray] = []
        at, m = 0, 0
        for p in pieces:
            t = self.trials[p.trial]
            src = self._audio_source(t.video)
            times, amask, srcrow = self.timing(t, src.n_samples)
            n = p.hi - p.lo
            mask[at : at + n] = amask[p.lo : p.hi]
            rows_src = srcrow[p.lo : p.hi]
            need = rows_src >= 0
            if need.any():
                uniq, inv = np.unique(rows_src[need], return_inverse=True)
                parts.append(self.ex.audio_inputs(src, times[uniq]))
                take[at : at + n][need] = m + inv.reshape(-1)
                m += len(uniq)
            at += n
        if not parts:
            x: Any = torch.zeros((0, *self.ex.row_shape))
        elif self.ex.collate is not None:
            x = self.ex.collate(parts)
        else:
            arr = np.concatenate(parts) if len(parts) > 1 else parts[0]
            x = torch.from_numpy(np.ascontiguousarray(arr, dtype=np.float32))
        return Batch(pieces, x.pin_memory() if self.pin and len(x) else x, take, mask)


def fingerprint(ex: Extractor, index: PreparedIndex) -> dict[str, Any]:
    """Everything that decides the rows: extractor parameters, weights digest, code version, and the digests `prepare`
    recorded of exactly the inputs this store reads, never file dates (a ``dvc checkout`` or a copy rebuilds nothing):
    ``frames`` stores take each trial's ``frames_sha256``; ``audio`` stores take each trial's frame times and video,
    and each video's ``audio_sha256`` and ``audio_offset``. So new audio leaves the iresnet store alone, and new
    crops the audio stores. (Trial names and row counts are in the store's layout, which is compared as well.)"""
    if ex.kind == "frames":
        inputs: dict[str, Any] = {"frames": {t.name: t.frames_sha256 for t in index.trials}}
    else:
        inputs = {
            "trials": {
                t.name: [t.video, hashlib.sha256(np.ascontiguousarray(t.times, dtype="<f8").data).hexdigest()]
                for t in index.trials
            },
            "audio": {
                v: [vid.audio_sha256, vid.audio_offset] if vid.has_audio else None for v, vid in sorted(index.videos.items())
            },
        }
    return {
        "extractor": ex.name,
        "kind": ex.model_kind,
        "params": ex.params,
        "weights": ex.weights,
        "code_version": code_version(ex.model_kind),
        "inputs": inputs,
    }


def open_store(ex: Extractor, index: PreparedIndex, out: Path, weights_origin: str | None = None) -> FeatureStore:
    mask_doc = (
        "face: the row's crop was read, not filled" if ex.kind == "frames"
        else "audio: the video has audio and the frame time lies within the track"
    )
    return FeatureStore.open_or_create(
        out,
        extractor=ex.name,
        row_shape=ex.row_shape,
        dtype=ex.dtype,
        trials={t.name: t.n_frames for t in index.trials},
        fps={t.name: t.fps for t in index.trials},
        fingerprint=fingerprint(ex, index),
        attrs={
            "kind": ex.model_kind,
            "weights": ex.weights,
            "weights_origin": weights_origin,  # e.g. "fine-tuned from random init" (pipeline.extractors.weights.origin)
            "parameters": ex.params,
            "code_version": code_version(ex.model_kind),
            "input_contract": ex.contract,
            "mask": mask_doc,
            "precision": ex.precision,
            "sample_rate": SAMPLE_RATE,
            "provenance": provenance.record(),  # not in the fingerprint: a new commit alone rebuilds nothing
        },
    )


@dataclass
class RunStats:
    """Where one :func:`run` spent its time (seconds, wall clock of the main thread)."""

    rows: int  # rows written by this run
    setup_s: float  # index, network build and weights, store open
    first_batch_s: float  # the first batch through the model (device warm-up, kernel selection)
    total_s: float  # the whole call
    wait_input_s: float  # main thread waiting for the reader
    wait_output_s: float  # main thread waiting for the writer (which waits for the device's results)

    def as_dict(self) -> dict[str, float | int]:
        return {k: round(v, 3) if isinstance(v, float) else v for k, v in self.__dict__.items()}


def _to_host(y: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.cuda.Event | None]:
    """Start copying model outputs to host memory in the store's dtype (converted on the device: half the bytes
    for float16 stores). On CUDA the copy is asynchronous into pinned memory; the returned event marks its end,
    so the main thread can queue the next batch while the writer waits for this one."""
    y = y.detach().to(dtype)
    if y.device.type != "cuda":
        return y, None
    host = torch.empty(y.shape, dtype=dtype, pin_memory=True)
    host.copy_(y, non_blocking=True)
    done = torch.cuda.Event()
    done.record()
    return host, done


class _Planned(torch.utils.data.Dataset):
    """Batch ``i`` of the plan, read by a DataLoader worker process (forked: the reader needs no pickling)."""

    def __init__(self, reader: Inputs, plan: list[list[Piece]]) -> None:
        self.reader, self.plan = reader, plan

    def __len__(self) -> int:
        return len(self.plan)

    def __getitem__(self, i: int) -> Batch:
        return self.reader(self.plan[i])


def _read_ahead(reader: Inputs, plan: list[list[Piece]], workers: int, pin: bool) -> Iterator[Batch]:
    """The plan's batches in order, read ahead of the model: by a thread (``workers`` 0, :data:`PREFETCH` ahead) or
    by a DataLoader's worker processes."""
    if workers:
        loader = torch.utils.data.DataLoader(
            _Planned(reader, plan), batch_size=None, shuffle=False, num_workers=workers, pin_memory=pin,
            prefetch_factor=max(1, PREFETCH // workers + 1), multiprocessing_context="fork",
        )
        yield from loader
        return
    yield from read_ahead((reader(p) for p in plan), PREFETCH)


class _Writer:
    """Writer side: model outputs of a batch -> rows appended to the store (runs in the writer thread)."""

    def __init__(self, store: FeatureStore, row_shape: tuple[int, ...], bar: tqdm) -> None:
        self.store, self.row_shape, self.bar = store, row_shape, bar

    def __call__(self, b: Batch, host: torch.Tensor, done: torch.cuda.Event | None) -> None:
        """Append the rows of batch ``b`` from ``host`` (m, *row_shape) model outputs, once ``done`` has fired."""
        if done is not None:
            done.synchronize()  # releases the GIL while the device finishes
        y = host.numpy()
        if b.take is None:
            rows = y
        else:  # rows by `take`; zeros where no audio row exists
            rows = np.zeros((b.rows, *self.row_shape), dtype=y.dtype)
            have = b.take >= 0
            if have.any():
                rows[have] = y[b.take[have]]
        at, written = 0, 0
        for p in b.pieces:
            skip, n = p.first_new - p.lo, p.hi - p.lo
            if skip < n:
                self.store.append(p.trial, p.first_new, rows[at + skip : at + n], b.mask[at + skip : at + n])
                written += n - skip
            at += n
        self.bar.update(written)


@contextmanager
def _switch_interval(device: torch.device) -> Iterator[None]:
    """A short interpreter switch interval during a CUDA run (:data:`SWITCH_INTERVAL_S`), restored afterwards."""
    switch = sys.getswitchinterval()
    if device.type == "cuda":
        sys.setswitchinterval(min(switch, SWITCH_INTERVAL_S))
    try:
        yield
    finally:
        sys.setswitchinterval(switch)


def _drive(ex: Extractor, batches: Iterator[Batch], write: _Writer, stats: RunStats, t_start: float) -> None:
    """The main thread's loop: each batch through the network, its outputs handed to the writer thread (at most two
    batches in flight); waits are added to ``stats``. A write error is raised here."""
    out_dtype = getattr(torch, ex.dtype)  # the store dtype, "float16" or "float32"
    with ThreadPoolExecutor(1, thread_name_prefix="write") as write_pool, torch.inference_mode():
        writes: deque[Future[None]] = deque()
        first = True
        while True:
            t0 = time.perf_counter()
            b = next(batches, None)
            stats.wait_input_s += time.perf_counter() - t0
            if b is None:
                break
            y = ex.forward(b.x) if len(b.x) else torch.zeros((0, *ex.row_shape))
            writes.append(write_pool.submit(write, b, *_to_host(y, out_dtype)))
            t0 = time.perf_counter()
            if first:  # time the warm-up batch on its own
                writes[-1].result()
                stats.first_batch_s = time.perf_counter() - t_start - stats.setup_s
                first = False
            while len(writes) > 2 or (writes and writes[0].done()):
                writes.popleft().result()
            stats.wait_output_s += time.perf_counter() - t0
        t0 = time.perf_counter()
        while writes:
            writes.popleft().result()
        stats.wait_output_s += time.perf_counter() - t0


def run(
    name: str,
    cfg: Any,
    prepared: Path,
    out: Path,
    shard: tuple[int, int] = (0, 1),
    device: str = "auto",
    extractor: Extractor | None = None,
    progress: bool = True,
    workers: int = 0,
) -> RunStats:
    """Fill ``out`` with the ``name`` features of every trial in ``prepared`` (this process: ``--shard i/n``).
    ``extractor`` (tests, benchmark): an already built extractor instead of building one from ``cfg``.
    ``workers``: 0 reads batch inputs in a thread of this process; N > 0 in N worker processes (a torch DataLoader,
    pinned by its pinning thread on CUDA), out of reach of the interpreter lock the thread launching the network
    holds."""
    t_start = time.perf_counter()
    prepared, out = Path(prepared), Path(out)
    index = load_index(prepared)
    ex = extractor or build(name, cfg, index.frames_size, device)
    store = open_store(ex, index, out, W.origin(getattr(cfg, "weights", None), ex.weights))
    pending = store.pending(shard)
    total = sum(store.n_rows(t) - store.resume_row(t) for t in pending)
    stats = RunStats(total, time.perf_counter() - t_start, 0.0, 0.0, 0.0, 0.0)
    if not pending:
        print(f"extract {name}: {out} is complete for shard {shard[0]}/{shard[1]}", file=sys.stderr)
        stats.total_s = time.perf_counter() - t_start
        return stats
    pin = ex.device.type == "cuda"
    reader = Inputs(ex, index, pin and not workers)  # worker processes cannot pin: the loader's thread does
    bar = tqdm(total=total, unit="frame", desc=f"extract {name}", disable=not progress, mininterval=1.0, smoothing=0.1)
    try:
        with _switch_interval(ex.device):
            # the whole shard's grid (complete trials included), planned before the writer moves `flushed`
            plan = list(plan_batches(store, store.write_order(shard), ex.batch))
            with closing(_read_ahead(reader, plan, workers, pin)) as batches:  # the reader stops before it closes
                _drive(ex, batches, _Writer(store, ex.row_shape, bar), stats, t_start)
    finally:
        store.flush()
        reader.close()
        bar.close()
    stats.total_s = time.perf_counter() - t_start
    if os.environ.get("VA_EXTRACT_VERBOSE"):
        print(f"extract {name}: wrote {total} rows to {out}: {json.dumps(stats.as_dict())}", file=sys.stderr)
    return stats
