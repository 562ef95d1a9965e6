"""The feature bank: a set of trials' feature rows in one tensor per modality, gathered into training and inference
windows with one indexing operation (DESIGN.md "Scale", STYLE.md 15).

Bank order: the trials sorted by name, concatenated; trial ``i`` occupies rows ``offsets[i] .. offsets[i] +
lengths[i]``. Beside the rows, in bank order on the compute device: ``present`` (the store's mask: a face crop was
read, audio exists at that frame time), ``labels`` (valence, arousal, when given) and, per trial, whether a modality
has no real row at all (a video without an audio stream, a trial without a single crop).

Where the rows live (``train.bank``, decided per modality, smallest first, so the small audio modalities stay in
fast memory when the IResNet maps do not fit):

- ``device``: on the compute device (GPU memory; on a CPU run, process memory);
- ``pinned``: page-locked host memory, gathered on the host and copied to the GPU asynchronously (CUDA only);
- ``mmap``: the store's own shard files mapped read-only (:meth:`FeatureStore.bucket_memmap`): no copy and no
  load time, the page cache does the rest;
- ``auto``: ``device`` when it fits (GPU: free memory minus a reserve for the model; CPU: half the available RAM),
  else ``pinned`` on a GPU machine when half the available RAM holds it, else ``mmap``.

A window of ``T`` frames starting at row ``s`` of trial ``i`` reads bank rows ``offsets[i] + min(s + t, n_i - 1)``;
rows past the trial's end (``s + t >= n_i``) are padding: masked out and set to 0 after normalisation, as are
(paper 3.2 aside) the rows of a modality the trial has no real input for. With ``zero_missing`` every row without
real input (``present`` False: a forward-filled crop, a repeated audio row) is set to 0 (the training mean) too;
without it those rows reach the model as the paper describes them: the last available frame, the last audio row.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import numpy as np
import psutil
import torch
from tqdm import tqdm

from pipeline.io.features import FeatureStore, StoreError
from pipeline.training.normalise import CHUNK_ROWS, Normaliser
from pipeline.training.windows import Windows, window_rows

Placement = Literal["auto", "device", "pinned", "mmap"]
GPU_RESERVE_BYTES = 4 * 2**30  # GPU memory kept free for the model, activations and the allocator's slack
HOST_SHARE = 0.5  # share of the host's available memory a bank may take
CPU_BLOCK_ROWS = 256  # rows gathered and normalised together on the CPU: they stay in cache between the two


class FeatureBank:
    """Rows of ``trials`` for ``modalities``; build with :meth:`build`."""

    def __init__(
        self,
        device: torch.device,
        trials: list[str],
        lengths: np.ndarray,
        modalities: list[str],
        row_shapes: dict[str, tuple[int, ...]],
        attrs: dict[str, dict[str, Any]],
    ) -> None:
        self.device = device
        self.trials = trials
        self.index = {t: i for i, t in enumerate(trials)}
        self.lengths = np.asarray(lengths, dtype=np.int64)  # (n_trials,)
        self.offsets = np.concatenate([[0], np.cumsum(self.lengths)[:-1]]).astype(np.int64)  # (n_trials,)
        self.n_rows = int(self.lengths.sum())
        self.modalities = modalities
        self.row_shapes = row_shapes
        self.attrs = attrs  # each store's attributes: extractor, weights, parameters, fingerprint, ...
        self.placement: dict[str, str] = {}
        self.present: dict[str, torch.Tensor] = {}  # (R,) bool on device
        self.no_input: dict[str, torch.Tensor] = {}  # (n_trials,) bool on device: the trial has no real row
        self.labels: torch.Tensor | None = None  # (R, 2) float32 on device
        self._rows: dict[str, torch.Tensor] = {}  # device / pinned placement: (R, *row_shape), store dtype
        self._maps: dict[str, list[np.ndarray | None]] = {}  # mmap placement: per bucket
        self._store_row: dict[str, np.ndarray] = {}  # mmap placement: (n_trials,) first row in the bucket
        self._bucket: dict[str, np.ndarray] = {}  # mmap placement: (n_trials,) bucket of the trial
        self._t_lengths = torch.from_numpy(self.lengths)
        self._t_offsets = torch.from_numpy(self.offsets)

    # ------------------------------------------------------------------------------------------------ building
    @classmethod
    def build(
        cls,
        features: Path,
        modalities: Sequence[str],
        trials: Sequence[str],
        device: torch.device,
        placement: Placement = "auto",
        labels: Mapping[str, np.ndarray] | None = None,
        progress: bool = True,
    ) -> "FeatureBank":
        """Load (or map) the rows of ``trials`` from ``features/<m>.zarr`` for every modality ``m``."""
        features = Path(features)
        trials = sorted(trials)
        stores = {m: FeatureStore.open(features / f"{m}.zarr") for m in modalities}
        for m, s in stores.items():
            missing = [t for t in trials if t not in s.layout]
            if missing:
                raise StoreError(f"{s.path}: no rows for trial {missing[0]!r} ({len(missing)} missing)")
        first = modalities[0]
        lengths = np.array([stores[first].n_rows(t) for t in trials], dtype=np.int64)
        for m, s in stores.items():
            for t, n in zip(trials, lengths):
                if s.n_rows(t) != n:
                    raise StoreError(f"{s.path}: trial {t!r} has {s.n_rows(t)} rows, {stores[first].path} has {n}")
        bank = cls(
            device, trials, lengths, list(modalities), {m: tuple(s.row_shape) for m, s in stores.items()},
            {m: dict(s.attrs) for m, s in stores.items()},
        )
        sizes = {m: bank.n_rows * int(np.prod(s.row_shape)) * s.dtype.itemsize for m, s in stores.items()}
        where = choose_placement(sizes, device, placement)
        bar = tqdm(total=bank.n_rows * len(modalities), unit="row", desc="feature bank", disable=not progress,
                   mininterval=1.0, file=sys.stderr)
        for m, s in stores.items():
            bank._load(m, s, where[m], bar)
        bar.close()
        if labels is not None:
            y = np.zeros((bank.n_rows, 2), np.float32)
            for t, o, n in zip(trials, bank.offsets, lengths):
                if len(labels[t]) != n:
                    raise StoreError(f"{stores[first].path}: trial {t!r} has {n} feature rows but {len(labels[t])} labels")
                y[o : o + n] = labels[t]
            bank.labels = torch.from_numpy(y).to(device)
        return bank

    @classmethod
    def from_rows(
        cls,
        device: torch.device,
        trials: list[str],
        lengths: Sequence[int],
        rows: Mapping[str, torch.Tensor],
        present: Mapping[str, torch.Tensor],
        no_input: Mapping[str, Sequence[bool]],
    ) -> "FeatureBank":
        """A bank of rows already in memory (``analyze``'s streaming chain): ``rows[m]`` (R, *row_shape) in the
        store dtype and ``present[m]`` (R,) bool, the trials concatenated in the order of ``trials`` (which need not
        be sorted); ``no_input[m]`` (n_trials,) says which trials have no real row of ``m`` at all (a whole-trial
        property the caller knows). Placement ``device``."""
        shapes = {m: tuple(x.shape[1:]) for m, x in rows.items()}
        bank = cls(device, list(trials), np.asarray(lengths, dtype=np.int64), list(rows), shapes,
                   {m: {"dtype": str(x.dtype).removeprefix("torch.")} for m, x in rows.items()})
        for m, x in rows.items():
            bank._rows[m] = x.to(device)
            bank.placement[m] = "device"
            bank.present[m] = present[m].to(device)
            bank.no_input[m] = torch.as_tensor(list(no_input[m]), dtype=torch.bool).to(device)
        return bank

    def _load(self, m: str, store: FeatureStore, where: str, bar: tqdm) -> None:
        present = np.zeros(self.n_rows, bool)
        for t, o, n in zip(self.trials, self.offsets, self.lengths):
            present[o : o + n] = store.mask(t)
        self.present[m] = torch.from_numpy(present).to(self.device)
        self.no_input[m] = torch.tensor(
            [not present[o : o + n].any() for o, n in zip(self.offsets, self.lengths)], dtype=torch.bool
        ).to(self.device)
        self.placement[m] = where
        if where == "mmap":
            self._maps[m] = [store.bucket_memmap(b) if rows else None for b, rows in enumerate(store.bucket_rows)]
            self._bucket[m] = np.array([store.layout[t][0] for t in self.trials], dtype=np.int64)
            self._store_row[m] = np.array([store.layout[t][1] for t in self.trials], dtype=np.int64)
            bar.update(self.n_rows)
            return
        pin = where == "pinned"
        target = torch.device("cpu") if pin else self.device
        rows = torch.empty((self.n_rows, *store.row_shape), dtype=_torch_dtype(store.dtype), device=target,
                           pin_memory=pin)
        for t, o, n in zip(self.trials, self.offsets, self.lengths):
            rows[o : o + n].copy_(torch.from_numpy(store.read(t)), non_blocking=False)
            bar.update(int(n))
        self._rows[m] = rows

    # ------------------------------------------------------------------------------------------------ reading
    def nbytes(self, m: str) -> int:
        return self.n_rows * int(np.prod(self.row_shapes[m])) * np.dtype(self.attrs[m]["dtype"]).itemsize

    def real_rows(self, m: str, trials: Sequence[str], chunk_rows: int) -> Iterator[torch.Tensor]:
        """The rows of ``trials`` with real input (``present``), in chunks of at most ``chunk_rows`` rows, on the
        compute device in the store dtype: what normalisation statistics are computed from."""
        for t in trials:
            i = self.index[t]
            o, n = int(self.offsets[i]), int(self.lengths[i])
            for lo in range(0, n, chunk_rows):
                hi = min(n, lo + chunk_rows)
                keep = self.present[m][o + lo : o + hi]
                if not bool(keep.any()):
                    continue
                yield self.take(m, torch.arange(o + lo, o + hi))[keep]

    def fit_normaliser(self, trials: Sequence[str], chunk_rows: int = CHUNK_ROWS) -> Normaliser:
        """Per-element statistics of the real rows of ``trials`` (the training folds), one streaming pass."""
        return Normaliser.fit({m: self.real_rows(m, trials, chunk_rows) for m in self.modalities}, self.row_shapes)

    def lengths_of(self, trials: Sequence[str]) -> dict[str, int]:
        """``{trial: frames}`` of ``trials``, in that order (what the window plans take)."""
        return {t: int(self.lengths[self.index[t]]) for t in trials}

    def windows(self, trial: np.ndarray, start: np.ndarray, length: int) -> Windows:
        """Coordinates of windows ``(trial[b], start[b])`` (bank trial index, first row in the trial) of ``length``
        frames in this bank (:func:`~pipeline.training.windows.window_rows`)."""
        return window_rows(self._t_offsets, self._t_lengths, trial, start, length)

    def batch(
        self, w: Windows, norm: Normaliser, zero_missing: bool, with_labels: bool = True
    ) -> dict[str, torch.Tensor]:
        """Model inputs for windows ``w``: ``{m: (B, T, *row_shape) float32 normalised, "mask": (B, T) bool,
        "labels": (B, T, 2) float32}`` on the compute device; padding and rows without input are 0 (see the
        module docstring)."""
        b, t = w.rows.shape
        dev = self.device
        flat_cpu = w.rows.reshape(-1)  # (B, T) -> (B*T,)
        flat = flat_cpu.to(dev, non_blocking=True)
        valid = w.valid.to(dev, non_blocking=True)
        trial = w.trial.to(dev, non_blocking=True)
        pad = ~valid.reshape(-1)  # (B*T,)
        out: dict[str, torch.Tensor] = {}
        for m in self.modalities:
            x = self._gather_normalised(m, flat if self.placement[m] == "device" else flat_cpu, norm)
            zero = pad | self.no_input[m][trial].repeat_interleave(t)
            if zero_missing:
                zero = zero | ~self.present[m][flat]
            _zero_rows(x, zero)
            out[m] = x.reshape(b, t, *self.row_shapes[m])  # (B*T, *row) -> (B, T, *row)
        out["mask"] = valid
        if with_labels:
            if self.labels is None:
                raise ValueError("this bank was built without labels")
            out["labels"] = self.labels[flat].reshape(b, t, 2) * valid[..., None]  # padding labels are 0
        return out

    def _gather_normalised(self, m: str, rows: torch.Tensor, norm: Normaliser) -> torch.Tensor:
        if self.device.type != "cpu":
            return norm.apply(m, self.take(m, rows))
        out = torch.empty((len(rows), *self.row_shapes[m]), dtype=torch.float32)
        for i in range(0, len(rows), CPU_BLOCK_ROWS):  # gather and normalise a block while it is in cache
            norm.apply(m, self.take(m, rows[i : i + CPU_BLOCK_ROWS]), out=out[i : i + CPU_BLOCK_ROWS])
        return out

    def take(self, m: str, rows: torch.Tensor) -> torch.Tensor:
        """Bank rows ``rows`` (K,) int64 of modality ``m``, as stored: (K, *row_shape) in the store dtype on the compute
        device, neither normalised nor masked. ``rows`` may be on the CPU or the compute device; they are moved to
        where the rows live (a no-op when they are there already)."""
        where = self.placement[m]
        if where == "device":
            return self._rows[m].index_select(0, rows.to(self.device))
        rows = rows.cpu()  # pinned and mapped rows are gathered on the host
        if where == "pinned":
            buf = torch.empty((len(rows), *self.row_shapes[m]), dtype=self._rows[m].dtype, pin_memory=True)
            torch.index_select(self._rows[m], 0, rows, out=buf)
            return buf.to(self.device, non_blocking=True)
        # mmap: bank row -> (bucket, row in bucket); one fancy index per bucket the rows touch
        r = rows.numpy()
        trial = np.searchsorted(self.offsets, r, side="right") - 1
        bucket = self._bucket[m][trial]
        local = self._store_row[m][trial] + (r - self.offsets[trial])
        dtype = np.dtype(self.attrs[m]["dtype"])
        out = np.empty((len(r), *self.row_shapes[m]), dtype=dtype)
        for bk in np.unique(bucket):
            sel = bucket == bk
            out[sel] = self._maps[m][int(bk)][local[sel]]
        return torch.from_numpy(out).to(self.device, non_blocking=True)

    def describe(self) -> dict[str, Any]:
        """Where each modality lives and how big it is (for the log and the metrics)."""
        return {m: {"placement": self.placement[m], "gb": round(self.nbytes(m) / 2**30, 3)} for m in self.modalities}


def _zero_rows(x: torch.Tensor, zero: torch.Tensor) -> None:
    """Set rows ``zero`` (K,) bool of ``x`` (K, ...) to 0 in place. On the CPU only those rows are written (a
    boolean mask index rewrites the whole tensor: 7 ms of a 40 ms IResNet batch); on a GPU one masked fill, which
    does not wait for the device as finding the rows would."""
    if x.device.type == "cpu":
        rows = zero.nonzero().squeeze(1)
        if len(rows):
            x.index_fill_(0, rows, 0.0)
    else:
        x.masked_fill_(zero.view(-1, *([1] * (x.dim() - 1))), 0.0)


def _torch_dtype(dtype: np.dtype) -> torch.dtype:
    return getattr(torch, np.dtype(dtype).name)


def choose_placement(sizes: Mapping[str, int], device: torch.device, requested: Placement) -> dict[str, str]:
    """Placement per modality (see the module docstring). On a CPU run ``pinned`` means process memory too."""
    if requested != "auto":
        if requested == "pinned" and device.type != "cuda":
            requested = "device"
        return {m: requested for m in sizes}
    host_budget = HOST_SHARE * psutil.virtual_memory().available
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        device_budget = free - GPU_RESERVE_BYTES
    else:
        device_budget, host_budget = host_budget, 0.0
    out: dict[str, str] = {}
    for m in sorted(sizes, key=lambda k: sizes[k]):  # the small modalities first
        if sizes[m] <= device_budget:
            out[m], device_budget = "device", device_budget - sizes[m]
        elif sizes[m] <= host_budget:
            out[m], host_budget = "pinned", host_budget - sizes[m]
        else:
            out[m] = "mmap"
    return out

