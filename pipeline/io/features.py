"""Feature stores: ``features/<name>.zarr``, one logical (N, *row_shape) array per trial, rows aligned 1:1 with the
trial's frames.

Physical layout (Zarr v3, sharded). DVC hashes every file of an output, so a store must stay at tens of files
however many trials it holds; one array per trial would be 600+ ``zarr.json`` files on Aff-Wild2. Instead trials are
concatenated into ``n_buckets`` buckets::

    <name>.zarr/zarr.json        root attributes: extractor, dim, row_shape, dtype, weights, parameters,
                                 code_version, fingerprint, fps {trial: fps}, layout {trial: [bucket, start, stop]}
    <name>.zarr/b00/rows         (R, *row_shape) float16/float32, chunks of ``chunk_rows``, shards of ~256 MiB
    <name>.zarr/b00/mask         (R,) bool: the row is backed by real input (a face crop, audio at that time)
    <name>.zarr/b00 attrs        {"flushed": rows written so far}

A trial is complete when ``stop <= flushed`` of its bucket. Rows are buffered and written one whole shard at a
time (a partial shard write rewrites the shard), so ``flushed`` only moves forward after a shard is on disk; a crash
loses at most one shard of work and a re-run redoes the partial trial. ``--shard i/n`` processes own disjoint
buckets (``b % n == i``), so several processes fill one store without touching the same file.
"""

from __future__ import annotations

import json
import math
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from pipeline.errors import PipelineError

SHARD_BYTES = 256 * 2**20  # target shard size: ~100 files for Aff-Wild2's IResNet maps, bounded write buffer
CHUNK_ROWS = 64  # rows per inner chunk: the unit of a partial read
FORMAT = "va-pipeline-features/1"


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


def shard_rows_for(row_shape: tuple[int, ...], dtype: str, bucket_rows: int) -> int:
    """Rows per shard: ~:data:`SHARD_BYTES`, a multiple of :data:`CHUNK_ROWS`, no more than the bucket needs."""
    row_bytes = max(1, int(np.prod(row_shape, dtype=np.int64)) * np.dtype(dtype).itemsize)
    rows = max(CHUNK_ROWS, (SHARD_BYTES // row_bytes) // CHUNK_ROWS * CHUNK_ROWS)
    needed = max(CHUNK_ROWS, math.ceil(bucket_rows / CHUNK_ROWS) * CHUNK_ROWS)
    return min(rows, needed)


@dataclass
class _Buffer:
    """Rows of one bucket waiting for a whole shard; ``start`` is the bucket row of ``rows[0]``."""

    start: int
    rows: list[np.ndarray] = field(default_factory=list)
    mask: list[np.ndarray] = field(default_factory=list)
    n: int = 0


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
        self._buffers: dict[int, _Buffer] = {}
        self._arrays: dict[int, tuple[zarr.Array, zarr.Array]] = {}

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
        n_buckets: int = 8,
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
            "fingerprint": json.loads(json.dumps(dict(fingerprint), sort_keys=True)),
            "fps": {k: float(v) for k, v in sorted(fps.items())},
            "layout": layout,
            "n_buckets": n_buckets,
            **dict(attrs or {}),
        }
        if (path / "zarr.json").exists():
            try:
                old = dict(zarr.open_group(str(path), mode="r").attrs)
            except Exception:  # noqa: BLE001 - an unreadable store is rebuilt, not trusted
                old = {}
            same = all(old.get(k) == meta[k] for k in ("format", "fingerprint", "layout", "row_shape", "dtype"))
            if same:
                group = zarr.open_group(str(path), mode="r+")
                group.attrs.update({k: v for k, v in meta.items() if k not in ("fingerprint", "layout")})
                return cls(path, group)
            shutil.rmtree(path)
        return cls._create(path, meta, row_shape, dtype, n_buckets)

    @classmethod
    def _create(cls, path: Path, meta: dict[str, Any], row_shape: tuple[int, ...], dtype: str, n_buckets: int):
        group = zarr.open_group(str(path), mode="w", zarr_format=3)
        totals = [0] * n_buckets
        for b, _, stop in meta["layout"].values():
            totals[b] = max(totals[b], stop)
        for b, rows in enumerate(totals):
            sub = group.create_group(bucket_name(b), attributes={"flushed": 0})
            shard = shard_rows_for(row_shape, dtype, rows)
            sub.create_array(
                "rows",
                shape=(rows, *row_shape),
                dtype=dtype,
                chunks=(CHUNK_ROWS, *row_shape),
                shards=(shard, *row_shape),
                compressors=None,  # float features barely compress; decoding would cost more than the disk
                fill_value=0,
            )
            sub.create_array(
                "mask", shape=(rows,), dtype=bool, chunks=(CHUNK_ROWS,), shards=(shard,), fill_value=False
            )
        group.attrs.update(meta)
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
        return self.attrs.get("weights") == "random-init"

    def n_rows(self, trial: str) -> int:
        _, start, stop = self._where(trial)
        return stop - start

    def _where(self, trial: str) -> list[int]:
        try:
            return self.layout[trial]
        except KeyError:
            raise StoreError(f"{self.path}: no trial {trial!r} in this store") from None

    def _bucket(self, b: int) -> tuple[zarr.Array, zarr.Array]:
        if b not in self._arrays:
            sub = self._group[bucket_name(b)]
            self._arrays[b] = (sub["rows"], sub["mask"])
        return self._arrays[b]

    def flushed(self, b: int) -> int:
        return int(self._group[bucket_name(b)].attrs["flushed"])

    def is_complete(self, trial: str) -> bool:
        b, _, stop = self._where(trial)
        return stop <= self.flushed(b)

    def read(self, trial: str) -> np.ndarray:
        """The trial's rows, shape (N, *row_shape), in the store's dtype."""
        b, start, stop = self._where(trial)
        return self._bucket(b)[0][start:stop]

    def mask(self, trial: str) -> np.ndarray:
        """(N,) bool: True where the row comes from real input (a face crop; audio at that frame time)."""
        b, start, stop = self._where(trial)
        return self._bucket(b)[1][start:stop]

    # ------------------------------------------------------------------------------------------- writing
    def pending(self, shard: tuple[int, int] = (0, 1)) -> list[str]:
        """Trials of buckets ``b % n == i`` not complete yet, in write order (bucket, then row)."""
        i, n = shard
        todo = [(b, start, t) for t, (b, start, stop) in self.layout.items() if b % n == i and not self.is_complete(t)]
        return [t for _, _, t in sorted(todo)]

    def resume_row(self, trial: str) -> int:
        """First row of ``trial`` not on disk yet (0 for a fresh trial); rows before it need no writing."""
        b, start, stop = self._where(trial)
        return min(max(self.flushed(b) - start, 0), stop - start)

    def append(self, trial: str, first_row: int, rows: np.ndarray, mask: np.ndarray) -> None:
        """Add ``rows`` (n, *row_shape) and ``mask`` (n,) as the trial's rows ``first_row .. first_row + n``.

        Rows of a bucket must arrive in order (trials in :meth:`pending` order, each from :meth:`resume_row` on);
        whole shards are written as soon as they fill. Call :meth:`flush` at the end.
        """
        b, start, stop = self._where(trial)
        if rows.shape[1:] != self.row_shape or len(rows) != len(mask):
            raise StoreError(f"{self.path}: rows {rows.shape} / mask {mask.shape} do not fit row shape {self.row_shape}")
        at = start + first_row
        if at + len(rows) > stop:
            raise StoreError(f"{self.path}: {trial!r} has {stop - start} rows, got rows up to {first_row + len(rows)}")
        buf = self._buffers.get(b)
        if buf is None:
            buf = self._buffers[b] = _Buffer(start=self.flushed(b))
        if at != buf.start + buf.n:
            raise StoreError(f"{self.path}: bucket {b}: rows must be appended in order (expected row {buf.start + buf.n}, got {at})")
        buf.rows.append(np.asarray(rows, dtype=self.attrs["dtype"]))
        buf.mask.append(np.asarray(mask, dtype=bool))
        buf.n += len(rows)
        arr = self._bucket(b)[0]
        shard = arr.shards[0] if arr.shards else arr.chunks[0]
        whole = (buf.start + buf.n) // shard * shard  # write only up to the last shard boundary reached
        if whole > buf.start:
            self._write(b, whole)

    def flush(self) -> None:
        """Write every buffered row (the tail of each bucket, partial shards included)."""
        for b, buf in list(self._buffers.items()):
            if buf.n:
                self._write(b, buf.start + buf.n)

    def _write(self, b: int, upto: int) -> None:
        buf = self._buffers[b]
        rows = np.concatenate(buf.rows) if len(buf.rows) > 1 else buf.rows[0]
        mask = np.concatenate(buf.mask) if len(buf.mask) > 1 else buf.mask[0]
        k = upto - buf.start
        arr_rows, arr_mask = self._bucket(b)
        arr_rows[buf.start:upto] = rows[:k]
        arr_mask[buf.start:upto] = mask[:k]
        # the rows are on disk before `flushed` says so: a crash in between only costs a redo
        self._group[bucket_name(b)].attrs["flushed"] = upto
        self._buffers[b] = _Buffer(start=upto, rows=[rows[k:]] if k < len(rows) else [], mask=[mask[k:]] if k < len(mask) else [], n=len(rows) - k)

    def files(self) -> Iterator[Path]:
        """Every file of the store (what DVC hashes)."""
        return (p for p in self.path.rglob("*") if p.is_file())
