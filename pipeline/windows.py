"""Feature windows for the temporal model: sources, normalisation, the training window sampler and whole-trial
inference with overlapping windows.

A window is ``window`` consecutive frames of one trial; a trial shorter than that gives one window padded with
zeros and a ``mask`` that is False on the padding. Features are normalised per feature element with statistics of
the training folds only; frames whose modality has no real input (no face crop, no audio) are set to 0 after
normalisation, i.e. to the training mean.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.io.features import FeatureStore, StoreError

STD_FLOOR = 1e-4  # a feature element constant over the training frames is centred, not blown up


# ------------------------------------------------------------------------------------------------ window starts
def window_starts(n: int, window: int, hop: int, offset: int = 0) -> list[int]:
    """Start rows of the windows that cover a trial of ``n`` frames.

    Windows start at ``offset, offset + hop, ...``; a window at 0 and one ending at the last frame are added when
    missing, so every frame is covered whatever ``offset``. A trial of at most ``window`` frames is one window at 0.
    """
    if n <= window:
        return [0]
    last = n - window
    starts = set(range(min(offset, last), last + 1, hop))
    starts.update((0, last))
    return sorted(starts)


def epoch_windows(lengths: Mapping[str, int], window: int, hop: int, rng: np.random.Generator) -> list[tuple[str, int]]:
    """The training windows of one epoch: per trial, a fresh random offset in ``[0, hop)``, so the cut points move
    from epoch to epoch (Su Zhang's windows are fixed; resampling sees more distinct windows for the same cost)."""
    out: list[tuple[str, int]] = []
    for trial in sorted(lengths):
        offset = int(rng.integers(0, hop)) if hop > 1 else 0
        out.extend((trial, s) for s in window_starts(lengths[trial], window, hop, offset))
    return out


# ------------------------------------------------------------------------------------------------------ sources
class FeatureSource:
    """Rows of the modalities' stores for a set of trials, either loaded into memory once (``preload``) or read
    window by window from the Zarr chunks. Safe to pickle into DataLoader workers (arrays reopen lazily)."""

    def __init__(self, features: Path, modalities: Sequence[str], trials: Iterable[str], preload: bool) -> None:
        self.paths = {m: Path(features) / f"{m}.zarr" for m in modalities}
        self.modalities = list(modalities)
        self.trials = sorted(trials)
        self.stores = {m: FeatureStore.open(p) for m, p in self.paths.items()}
        for m, store in self.stores.items():
            missing = [t for t in self.trials if t not in store.layout]
            if missing:
                raise StoreError(f"{store.path}: no rows for trial {missing[0]!r} ({len(missing)} missing)")
        self.row_shapes = {m: tuple(s.row_shape) for m, s in self.stores.items()}
        self.random_init = {m: s.random_init for m, s in self.stores.items()}
        self.layout = {m: dict(s.layout) for m, s in self.stores.items()}
        self.lengths = {t: self.stores[self.modalities[0]].n_rows(t) for t in self.trials}
        self.masks = {m: {t: np.asarray(s.mask(t), dtype=bool) for t in self.trials} for m, s in self.stores.items()}
        self.preloaded = preload
        self.cache: dict[str, dict[str, np.ndarray]] = {}
        if preload:
            self.cache = {m: {t: s.read(t) for t in self.trials} for m, s in self.stores.items()}
        self._pid = os.getpid()

    @staticmethod
    def nbytes(features: Path, modalities: Sequence[str], trials: Iterable[str]) -> int:
        """Bytes the rows of ``trials`` take in memory (the stores' dtype), to decide whether to preload."""
        trials = list(trials)
        total = 0
        for m in modalities:
            s = FeatureStore.open(Path(features) / f"{m}.zarr", require_complete=False)
            row = int(np.prod(s.row_shape)) * np.dtype(s.attrs["dtype"]).itemsize
            total += row * sum(s.n_rows(t) for t in trials if t in s.layout)
        return total

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["stores"] = {}  # zarr groups are reopened in the worker on demand
        return state

    def _store(self, m: str) -> FeatureStore:
        if self._pid != os.getpid() or m not in self.stores:  # a worker process: do not share open handles
            if self._pid != os.getpid():
                self.stores, self._pid = {}, os.getpid()
            self.stores[m] = FeatureStore.open(self.paths[m])
        return self.stores[m]

    def rows(self, m: str, trial: str, start: int, stop: int) -> np.ndarray:
        """Raw rows ``start:stop`` of ``trial`` in modality ``m``: (n, *row_shape), store dtype."""
        if self.preloaded:
            return self.cache[m][trial][start:stop]
        return self._store(m).read(trial, start, stop)


# ------------------------------------------------------------------------------------------------ normalisation
@dataclass
class Normaliser:
    """Per-feature-element mean and std (each of shape row_shape) per modality, from the training folds."""

    mean: dict[str, np.ndarray]
    std: dict[str, np.ndarray]

    @classmethod
    def fit(cls, source: FeatureSource, trials: Iterable[str]) -> "Normaliser":
        """Statistics over every frame of ``trials`` with real input (the store's mask), accumulated in float64."""
        trials = list(trials)
        mean, std = {}, {}
        for m in source.modalities:
            shape = source.row_shapes[m]
            s1 = np.zeros(shape, np.float64)
            s2 = np.zeros(shape, np.float64)
            n = 0
            for t in trials:
                keep = source.masks[m][t]
                if not keep.any():
                    continue
                x = source.rows(m, t, 0, source.lengths[t])[keep].astype(np.float64)
                s1 += x.sum(0)
                s2 += (x * x).sum(0)
                n += len(x)
            mu = s1 / max(n, 1)
            var = np.maximum(s2 / max(n, 1) - mu * mu, 0.0)
            mean[m] = mu.astype(np.float32)
            std[m] = np.maximum(np.sqrt(var), STD_FLOOR).astype(np.float32)
        return cls(mean, std)

    def apply(self, m: str, x: np.ndarray, present: np.ndarray) -> np.ndarray:
        """(n, *row_shape) raw rows -> float32 normalised rows, 0 where ``present`` (n,) is False."""
        y = (x.astype(np.float32) - self.mean[m]) / self.std[m]
        y[~present] = 0.0
        return y

    def state(self) -> dict[str, dict[str, torch.Tensor]]:
        """Tensors for a checkpoint (loadable with ``torch.load(weights_only=True)``)."""
        return {m: {"mean": torch.from_numpy(self.mean[m]), "std": torch.from_numpy(self.std[m])} for m in self.mean}

    @classmethod
    def from_state(cls, state: Mapping[str, Mapping[str, torch.Tensor]]) -> "Normaliser":
        return cls({m: v["mean"].numpy() for m, v in state.items()}, {m: v["std"].numpy() for m, v in state.items()})


# -------------------------------------------------------------------------------------------------- datasets
def make_window(
    source: FeatureSource,
    norm: Normaliser,
    trial: str,
    start: int,
    window: int,
    labels: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """One window: ``{modality: (window, *row_shape) float32, "mask": (window,) bool, "labels": (window, 2)}``.

    Rows past the trial's end are zero and masked out; ``labels`` (the trial's (N, 2)) is optional.
    """
    n = source.lengths[trial]
    stop = min(start + window, n)
    k = stop - start
    out: dict[str, np.ndarray] = {}
    for m in source.modalities:
        x = np.zeros((window, *source.row_shapes[m]), np.float32)
        x[:k] = norm.apply(m, source.rows(m, trial, start, stop), source.masks[m][trial][start:stop])
        out[m] = x
    mask = np.zeros(window, bool)
    mask[:k] = True
    out["mask"] = mask
    if labels is not None:
        y = np.zeros((window, 2), np.float32)
        y[:k] = labels[start:stop]
        out["labels"] = y
    return out


class WindowDataset(torch.utils.data.Dataset):
    """Training windows of a fold; call :meth:`resample` at the start of every epoch."""

    def __init__(
        self,
        source: FeatureSource,
        norm: Normaliser,
        labels: Mapping[str, np.ndarray],
        window: int,
        hop: int,
    ) -> None:
        self.source, self.norm, self.labels = source, norm, dict(labels)
        self.window, self.hop = window, hop
        self.lengths = {t: source.lengths[t] for t in self.labels}
        self.items: list[tuple[str, int]] = window_starts_all(self.lengths, window, hop)

    def resample(self, rng: np.random.Generator) -> None:
        self.items = epoch_windows(self.lengths, self.window, self.hop, rng)

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        trial, start = self.items[i]
        w = make_window(self.source, self.norm, trial, start, self.window, self.labels[trial])
        return {k: torch.from_numpy(v) for k, v in w.items()}


def window_starts_all(lengths: Mapping[str, int], window: int, hop: int) -> list[tuple[str, int]]:
    """Every trial's windows at offset 0 (deterministic; before the first :meth:`WindowDataset.resample`)."""
    return [(t, s) for t in sorted(lengths) for s in window_starts(lengths[t], window, hop)]


class Prefetcher:
    """Iterates ``loader`` in a background thread, ``depth`` batches ahead, copying them to ``device``
    (``non_blocking`` from pinned memory on CUDA), so batch assembly overlaps the training step even with
    ``train.workers = 0``."""

    def __init__(self, loader: Iterable, device: torch.device, depth: int = 2) -> None:
        self.loader, self.device, self.depth = loader, device, depth

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        q: queue.Queue = queue.Queue(self.depth)
        done = object()

        def work() -> None:
            try:
                for batch in self.loader:
                    q.put({k: v.to(self.device, non_blocking=True) for k, v in batch.items()})
            except BaseException as e:  # noqa: BLE001 - re-raised in the consumer
                q.put(e)
            q.put(done)

        thread = threading.Thread(target=work, daemon=True)
        thread.start()
        while True:
            item = q.get()
            if item is done:
                break
            if isinstance(item, BaseException):
                raise item
            yield item
        thread.join()


# ------------------------------------------------------------------------------------------------- inference
@torch.no_grad()
def predict_trial(
    model: torch.nn.Module,
    source: FeatureSource,
    norm: Normaliser,
    trial: str,
    window: int,
    hop: int,
    device: torch.device,
    batch: int = 8,
    autocast_dtype: torch.dtype | None = None,
) -> np.ndarray:
    """Whole-trial prediction (N, 2): windows every ``hop`` frames (plus one ending at the last frame), each frame's
    outputs averaged over the windows that contain it. ``model`` must be in eval mode."""
    n = source.lengths[trial]
    starts = window_starts(n, window, hop)
    total = np.zeros((n, 2), np.float64)
    count = np.zeros((n, 1), np.float64)
    for i in range(0, len(starts), batch):
        group = starts[i : i + batch]
        wins = [make_window(source, norm, trial, s, window) for s in group]
        inputs = {m: torch.from_numpy(np.stack([w[m] for w in wins])).to(device) for m in source.modalities}
        mask = torch.from_numpy(np.stack([w["mask"] for w in wins])).to(device)
        with torch.autocast(device.type, dtype=autocast_dtype, enabled=autocast_dtype is not None):
            out = model(inputs, mask)  # (b, window, 2)
        out = out.float().cpu().numpy()
        for j, s in enumerate(group):
            k = min(window, n - s)
            total[s : s + k] += out[j, :k]
            count[s : s + k] += 1
    return (total / count).astype(np.float32)
