"""Feature stores: ``features/<name>.zarr``, one logical (N, *row_shape) array per trial, rows aligned 1:1 with the
trial's frames.

Physical layout (Zarr v3, sharded). DVC hashes every file of an output, so a store must stay at tens of files
however many trials and frames it holds; one array per trial would be 600+ ``zarr.json`` files on Aff-Wild2. Instead
trials are concatenated into ``n_buckets`` (16) buckets, and each bucket array is one shard file::

    <name>.zarr/zarr.json        root attributes: extractor, dim, row_shape, dtype, weights, parameters,
                                 code_version, fingerprint, fps {trial: fps}, layout {trial: [bucket, start, stop]}
    <name>.zarr/b00/rows         (R, *row_shape) float16/float32, chunks of ``CHUNK_ROWS`` rows, one shard
    <name>.zarr/b00/mask         (R,) bool: the row is backed by real input (a face crop, audio at that time)
    <name>.zarr/b00 attrs        {"flushed": rows on disk so far}

So a store has at most ``1 + 5 * n_buckets`` = 81 files, whatever the dataset size.

Writing streams. Zarr-python rewrites a whole shard on every partial write, so a writer that goes through zarr must
hold a whole shard in memory (hundreds of MiB on Aff-Wild2). Instead :meth:`FeatureStore.append` writes each
completed chunk's raw bytes straight into the shard file (uncompressed ``bytes`` codec: chunk ``k`` sits at offset
``k * chunk_bytes``), and when a bucket's last row arrives it pads the tail chunk and appends the shard index
(``(offset, nbytes)`` uint64 pairs + crc32c, exactly what zarr's ``sharding_indexed`` codec writes and reads). Memory
is one chunk per bucket, independent of trial and dataset size. The shards stay plain zarr (any zarr reader opens
them); this class reads a trial's rows as the one contiguous byte range they occupy, and the feature bank maps
finished buckets into memory (:meth:`FeatureStore.bucket_memmap`).

Resuming. ``flushed`` moves forward only after the chunk bytes are in the file, so a trial is complete when
``stop <= flushed`` of its bucket. ``flushed`` is rewritten at most every ``RECORD_EVERY_S`` (and at the end of a bucket
or a run), so a killed process loses at most about a second of rows per bucket, and a re-run truncates the
shard file to ``flushed`` and redoes the partial trial. ``--shard i/n`` processes own disjoint buckets
(``b % n == i``), so several processes fill one store without touching the same file.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import google_crc32c
import numpy as np
import zarr

from pipeline.common.errors import PipelineError
from pipeline.common.provenance import RANDOM_INIT

CHUNK_ROWS = 64  # rows per inner chunk: the unit of a partial read and of resuming
RECORD_EVERY_S = 1.0  # a killed run redoes at most this much work per bucket
N_BUCKETS = 16  # buckets per store: the most `--shard` processes that get work; 1 + 5 * 16 = 81 files
FORMAT = "va-pipeline-features/2"


class StoreError(PipelineError):
    """A feature store that is missing, incomplete or does not match what the caller asked for."""


def bucket_name(b: int) -> str:
    return f"b{b:02d}"


def plan_layout(trials: Mapping[str, int], n_buckets: int) -> dict[str, list[int]]:
    """Deterministic placement ``{trial: [bucket, start, stop]}``: trials sorted by name, dealt round-robin to
    buckets (so a shard of ``--shard i/n`` gets a similar share), concatenated in that order inside a bucket."""
    layout: dict[str, list[int]] = {}
    fill = [0] * n_buckets
    for j, name in enumerate(sorted(trials)):
        b = j % n_buckets
        n = int(trials[name])
        layout[name] = [b, fill[b], fill[b] + n]
        fill[b] += n
    return layout


def shard_rows_for(bucket_rows: int) -> int:
    """Rows of the bucket's single shard: the bucket rounded up to whole chunks (at least one chunk)."""
    return max(CHUNK_ROWS, math.ceil(bucket_rows / CHUNK_ROWS) * CHUNK_ROWS)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    """Exclusive lock on ``<store>.lock`` beside the store, so `--shard` processes that start together do not both
    create (and delete each other's) store."""
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = path.parent / (path.name + ".lock")
    with open(lock, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


class _ShardWriter:
    """Streams one bucket array (rows or mask) into its shard file, chunk by chunk (see the module docstring)."""

    def __init__(self, file: Path, total_rows: int, row_shape: tuple[int, ...], dtype: np.dtype, flushed: int) -> None:
        self.file = file
        self.total = total_rows
        self.row_shape = row_shape
        self.dtype = dtype.newbyteorder("<")  # the `bytes` codec is little-endian
        self.chunk_bytes = CHUNK_ROWS * int(np.prod(row_shape, dtype=np.int64)) * self.dtype.itemsize
        self.n_chunks = shard_rows_for(total_rows) // CHUNK_ROWS
        file.parent.mkdir(parents=True, exist_ok=True)
        self.f = open(file, "r+b" if file.exists() else "w+b")
        # drop whatever a crashed run wrote past the last chunk that `flushed` vouches for
        self.f.truncate(flushed // CHUNK_ROWS * self.chunk_bytes)
        self.f.seek(0, os.SEEK_END)

    def write_chunks(self, rows: np.ndarray) -> None:
        """``rows``: whole chunks (a multiple of CHUNK_ROWS rows), or the bucket's padded last chunk."""
        self.f.write(memoryview(np.ascontiguousarray(rows, dtype=self.dtype)).cast("B"))

    def finish(self) -> None:
        """Append the shard index and its crc32c checksum: the shard becomes readable by zarr."""
        assert self.f.tell() == self.n_chunks * self.chunk_bytes, (self.f.tell(), self.n_chunks, self.chunk_bytes)
        index = np.empty((self.n_chunks, 2), dtype="<u8")
        index[:, 0] = np.arange(self.n_chunks, dtype=np.uint64) * np.uint64(self.chunk_bytes)
        index[:, 1] = self.chunk_bytes
        raw = index.tobytes()
        self.f.write(raw + np.array([google_crc32c.value(raw)], dtype="<u4").tobytes())
        self.close()

    def sync(self) -> None:
        if not self.f.closed:
            self.f.flush()

    def close(self) -> None:
        if not self.f.closed:
            self.f.close()


@dataclass
class _Bucket:
    """Writing state of one bucket: the writers and rows of the unfinished chunk (fewer than CHUNK_ROWS)."""

    flushed: int  # rows in the shard files (whole chunks)
    rows: _ShardWriter
    mask: _ShardWriter
    recorded: float = field(default_factory=time.monotonic)  # when `flushed` was last written to the attributes
    tail_rows: list[np.ndarray] = field(default_factory=list)
    tail_mask: list[np.ndarray] = field(default_factory=list)
    tail_n: int = 0


class FeatureStore:
    """A feature store opened for reading (:meth:`open`) or filling (:meth:`open_or_create`)."""

    def __init__(self, path: Path, group: zarr.Group) -> None:
        self.path = path
        self._group = group
        self.attrs: dict[str, Any] = dict(group.attrs)
        if self.attrs.get("format") != FORMAT:
            raise StoreError(f"{path}: not a feature store of this pipeline (format {self.attrs.get('format')!r})")
        self.layout: dict[str, list[int]] = self.attrs["layout"]
        self.row_shape: tuple[int, ...] = tuple(self.attrs["row_shape"])
        self.dtype = np.dtype(self.attrs["dtype"])
        self._writing: dict[int, _Bucket] = {}
        self._subgroups: dict[int, zarr.Group] = {}
        self._finished: set[int] = set()  # buckets whose shard is complete (their `flushed` is final)
        totals = [0] * int(self.attrs["n_buckets"])
        for b, _, stop in self.layout.values():
            totals[b] = max(totals[b], stop)
        self._totals = totals

    # ------------------------------------------------------------------------------------------- opening
    @classmethod
    def open(cls, path: str | Path, require_complete: bool = True) -> "FeatureStore":
        """Open an existing store read-only; with ``require_complete`` every trial must be complete."""
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"{path}: no feature store here (run `python -m pipeline extract` first)")
        store = cls(path, zarr.open_group(str(path), mode="r"))
        if require_complete:
            missing = [t for t in store.trials if not store.is_complete(t)]
            if missing:
                raise StoreError(f"{path}: {len(missing)} trial(s) not extracted yet, e.g. {missing[0]!r}")
        return store

    @classmethod
    def open_or_create(
        cls,
        path: str | Path,
        *,
        extractor: str,
        row_shape: tuple[int, ...],
        dtype: str,
        trials: Mapping[str, int],
        fps: Mapping[str, float],
        fingerprint: Mapping[str, Any],
        attrs: Mapping[str, Any] | None = None,
        n_buckets: int = N_BUCKETS,
    ) -> "FeatureStore":
        """Open the store at ``path`` for filling, creating it when absent or when it was made from other inputs.

        ``fingerprint`` is everything that decides the rows (extractor parameters, weights digest, code version,
        prepared-data digest): a store whose fingerprint or layout differs is deleted and rebuilt, one that matches is
        resumed. ``trials`` maps trial name to its row count N.
        """
        path = Path(path)
        layout = plan_layout(trials, n_buckets)
        meta = {
            "format": FORMAT,
            "extractor": extractor,
            "row_shape": list(row_shape),
            "dim": int(np.prod(row_shape)),
            "dtype": dtype,
            "chunk_rows": CHUNK_ROWS,
            "fingerprint": json.loads(json.dumps(dict(fingerprint), sort_keys=True)),
            "fps": {k: float(v) for k, v in sorted(fps.items())},
            "layout": layout,
            "n_buckets": n_buckets,
            **json.loads(json.dumps(dict(attrs or {}))),
        }
        with _locked(path):
            if (path / "zarr.json").exists():
                try:
                    old = dict(zarr.open_group(str(path), mode="r").attrs)
                except Exception:  # noqa: BLE001 - an unreadable store is rebuilt, not trusted
                    old = {}
                keys = ("format", "fingerprint", "layout", "row_shape", "dtype", "chunk_rows", "n_buckets")
                if all(old.get(k) == meta[k] for k in keys):
                    return cls(path, zarr.open_group(str(path), mode="r+"))
                shutil.rmtree(path)
            return cls._create(path, meta, row_shape, dtype, n_buckets)

    @classmethod
    def _create(cls, path: Path, meta: dict[str, Any], row_shape: tuple[int, ...], dtype: str, n_buckets: int):
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        totals = [0] * n_buckets
        for b, _, stop in meta["layout"].values():
            totals[b] = max(totals[b], stop)
        for b, rows in enumerate(totals):
            if not rows:  # an empty bucket (fewer trials than buckets) has no files
                continue
            sub = group.create_group(bucket_name(b), attributes={"flushed": 0})
            shard = shard_rows_for(rows)
            # compressors=None: the streaming writer relies on fixed-size chunks (float features barely compress)
            sub.create_array(
                "rows",
                shape=(rows, *row_shape),
                dtype=dtype,
                chunks=(CHUNK_ROWS, *row_shape),
                shards=(shard, *row_shape),
                compressors=None,
                fill_value=0,
            )
            sub.create_array(
                "mask", shape=(rows,), dtype=bool, chunks=(CHUNK_ROWS,), shards=(shard,), compressors=None,
                fill_value=False,
            )
        group.update_attributes(meta)  # one zarr.json write, last: a store without `format` is not a store yet
        return cls(path, group)

    # ------------------------------------------------------------------------------------------- reading
    @property
    def trials(self) -> list[str]:
        return sorted(self.layout)

    @property
    def dim(self) -> int:
        return int(self.attrs["dim"])

    @property
    def random_init(self) -> bool:
        return self.attrs.get("weights") == RANDOM_INIT

    def n_rows(self, trial: str) -> int:
        _, start, stop = self._where(trial)
        return stop - start

    def _where(self, trial: str) -> list[int]:
        try:
            return self.layout[trial]
        except KeyError:
            raise StoreError(f"{self.path}: no trial {trial!r} in this store") from None

    def _sub(self, b: int) -> zarr.Group:
        if b not in self._subgroups:
            self._subgroups[b] = self._group[bucket_name(b)]
        return self._subgroups[b]

    def flushed(self, b: int) -> int:
        """Rows of bucket ``b`` on disk, read from its ``zarr.json`` (written by another process under --shard).
        A finished bucket never changes again, so its count is read once per open store."""
        if not self._totals[b]:
            return 0
        if b in self._finished:
            return self._totals[b]
        meta = json.loads((self.path / bucket_name(b) / "zarr.json").read_text())
        n = int(meta["attributes"]["flushed"])
        if n >= self._totals[b] and b not in self._writing:
            self._finished.add(b)
        return n

    def is_complete(self, trial: str) -> bool:
        b, _, stop = self._where(trial)
        return stop <= self.flushed(b)

    def _chunk_key(self, ndim: int) -> str:
        return "c/" + "/".join("0" * ndim)

    def _file(self, b: int, which: str) -> Path:
        """The shard file of bucket ``b``'s ``rows`` or ``mask`` array."""
        ndim = 1 + len(self.row_shape) if which == "rows" else 1
        return self.path / bucket_name(b) / which / self._chunk_key(ndim)

    def _read(self, trial: str, which: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        b, start, stop = self._where(trial)
        if stop > self.flushed(b):
            raise StoreError(f"{self.path}: trial {trial!r} is not extracted yet")
        hi = stop - start if hi is None else min(hi, stop - start)
        start, stop = start + lo, start + hi
        # Chunks are uncompressed and stored in row order from offset 0 (finished shard or not; the index, when
        # present, sits after them), so rows [start, stop) are one contiguous byte range: one read, no zarr
        # decoding and no zarr.json parsing per call. test_feature_store checks the bytes against zarr's reading.
        shape = self.row_shape if which == "rows" else ()
        dtype = self.dtype.newbyteorder("<") if which == "rows" else np.dtype(bool)
        per_row = int(np.prod(shape, dtype=np.int64))
        out = np.fromfile(
            self._file(b, which), dtype=dtype, count=(stop - start) * per_row, offset=start * per_row * dtype.itemsize
        )
        return out.reshape(stop - start, *shape).astype(dtype.newbyteorder("="), copy=False)

    def bucket_memmap(self, b: int) -> np.ndarray:
        """Read-only memory map of finished bucket ``b``'s rows: (shard rows, *row_shape) in the store dtype, bucket
        row ``r`` at index ``r`` (rows past the bucket's last one are zero padding). Nothing is read until touched."""
        if self.flushed(b) < self._totals[b]:
            raise StoreError(f"{self.path}: bucket {b} is not complete")
        shape = (shard_rows_for(self._totals[b]), *self.row_shape)
        return np.memmap(self._file(b, "rows"), dtype=self.dtype.newbyteorder("<"), mode="r", shape=shape)

    @property
    def bucket_rows(self) -> list[int]:
        """Rows of each bucket (0 for an empty bucket)."""
        return list(self._totals)

    def read(self, trial: str, lo: int = 0, hi: int | None = None) -> np.ndarray:
        """The trial's rows ``lo:hi`` (default: all N), shape (n, *row_shape), in the store's dtype; one contiguous
        read of exactly those rows."""
        return self._read(trial, "rows", lo, hi)

    def mask(self, trial: str) -> np.ndarray:
        """(N,) bool: True where the row comes from real input (a face crop; audio at that frame time)."""
        return self._read(trial, "mask")

    # ------------------------------------------------------------------------------------------- writing
    def pending(self, shard: tuple[int, int] = (0, 1)) -> list[str]:
        """Trials of buckets ``b % n == i`` not complete yet, in write order (bucket, then row)."""
        i, n = shard
        flushed = {b: self.flushed(b) for b in range(len(self._totals)) if b % n == i}
        todo = [(b, start, t) for t, (b, start, stop) in self.layout.items() if b in flushed and stop > flushed[b]]
        return [t for _, _, t in sorted(todo)]

    def write_order(self, shard: tuple[int, int] = (0, 1)) -> list[str]:
        """Every trial of buckets ``b % n == i``, complete or not, in write order (bucket, then row)."""
        i, n = shard
        return [t for _, _, t in sorted((b, start, t) for t, (b, start, _) in self.layout.items() if b % n == i)]

    def resume_row(self, trial: str) -> int:
        """First row of ``trial`` not on disk yet (0 for a fresh trial); rows before it need no writing."""
        b, start, stop = self._where(trial)
        return min(max(self.flushed(b) - start, 0), stop - start)

    def _writer(self, b: int) -> _Bucket:
        w = self._writing.get(b)
        if w is None:
            flushed = self.flushed(b)
            total = self._totals[b]
            w = self._writing[b] = _Bucket(
                flushed=flushed // CHUNK_ROWS * CHUNK_ROWS,
                rows=_ShardWriter(self._file(b, "rows"), total, self.row_shape, self.dtype, flushed),
                mask=_ShardWriter(self._file(b, "mask"), total, (), np.dtype(bool), flushed),
            )
        return w

    def append(self, trial: str, first_row: int, rows: np.ndarray, mask: np.ndarray) -> None:
        """Add ``rows`` (n, *row_shape) and ``mask`` (n,) as the trial's rows ``first_row .. first_row + n``.

        Rows of a bucket must arrive in order (trials in :meth:`pending` order, each from :meth:`resume_row` on);
        whole chunks go to disk as soon as they fill, and the bucket's shard is finished with its last row.
        """
        b, start, stop = self._where(trial)
        if rows.shape[1:] != self.row_shape or len(rows) != len(mask):
            raise StoreError(f"{self.path}: rows {rows.shape} / mask {mask.shape} do not fit row shape {self.row_shape}")
        at = start + first_row
        if at + len(rows) > stop:
            raise StoreError(f"{self.path}: {trial!r} has {stop - start} rows, got rows up to {first_row + len(rows)}")
        w = self._writer(b)
        if at != w.flushed + w.tail_n:
            raise StoreError(
                f"{self.path}: bucket {b}: rows must be appended in order (expected row {w.flushed + w.tail_n}, got {at})"
            )
        w.tail_rows.append(np.asarray(rows, dtype=self.dtype))
        w.tail_mask.append(np.asarray(mask, dtype=bool))
        w.tail_n += len(rows)
        end = w.flushed + w.tail_n
        total = self._totals[b]
        upto = total if end == total else end // CHUNK_ROWS * CHUNK_ROWS  # last chunk boundary reached
        if upto > w.flushed:
            self._write(b, w, upto)

    def _write(self, b: int, w: _Bucket, upto: int) -> None:
        rows = np.concatenate(w.tail_rows) if len(w.tail_rows) > 1 else w.tail_rows[0]
        mask = np.concatenate(w.tail_mask) if len(w.tail_mask) > 1 else w.tail_mask[0]
        k = upto - w.flushed
        out_rows, out_mask = rows[:k], mask[:k]
        finished = upto == self._totals[b]
        if finished and k % CHUNK_ROWS:  # pad the bucket's last chunk to full chunk shape, as zarr stores it
            pad = CHUNK_ROWS - k % CHUNK_ROWS
            out_rows = np.concatenate([out_rows, np.zeros((pad, *self.row_shape), dtype=self.dtype)])
            out_mask = np.concatenate([out_mask, np.zeros(pad, dtype=bool)])
        w.rows.write_chunks(out_rows)
        w.mask.write_chunks(out_mask)
        if finished:
            w.rows.finish()
            w.mask.finish()
        w.flushed = upto
        if finished or time.monotonic() - w.recorded >= RECORD_EVERY_S:
            self._record(b, w)
        w.tail_rows = [rows[k:]] if k < len(rows) else []
        w.tail_mask = [mask[k:]] if k < len(mask) else []
        w.tail_n = len(rows) - k
        if finished:
            del self._writing[b]

    def flush(self) -> None:
        """End of a run: record each bucket's progress and close the shard files. Rows of an unfinished chunk (only possible when the run stopped
        before its buckets were complete) are dropped and redone by the next run."""
        for b, w in self._writing.items():
            self._record(b, w)
            w.rows.close()
            w.mask.close()
        self._writing.clear()

    def _record(self, b: int, w: _Bucket) -> None:
        """Write the bucket's ``flushed`` attribute; the bytes reach the files first, so a crash in between only
        costs a redo. Recorded at most every RECORD_EVERY_S (a zarr.json rewrite costs milliseconds), at the end
        of a bucket and at the end of a run."""
        w.rows.sync()
        w.mask.sync()
        self._sub(b).attrs["flushed"] = w.flushed
        w.recorded = time.monotonic()

    def files(self) -> Iterator[Path]:
        """Every file of the store (what DVC hashes)."""
        return (p for p in self.path.rglob("*") if p.is_file())
