"""The fold models over feature rows that arrive in chunks: whole-trial inference for files, rolling windows live.

Whole-trial inference (pipeline/training/inference.py, what ``predict`` runs) averages, per frame, the outputs of
the windows that contain it: windows of ``window`` frames every ``hop`` frames plus one ending on the last frame
(:func:`~pipeline.training.windows.window_starts`), each fold with its own window and hop, then the folds' per-frame
means averaged. :class:`TrialWindows` computes the same windows as soon as their rows are in; a frame is final
once no window left to compute contains it, so it holds the rows of one window plus a chunk, whatever the trial's
length. A window's model input is built by the feature bank's own gather (:meth:`FeatureBank.batch`: training-fold
normalisation, padding, ``zero_missing``, and the zeroing of a modality the trial has no real row of), from a bank
made of the buffered rows (:meth:`FeatureBank.from_rows`); the windows of every trial that has some ready are batched
together (:func:`run_ready`), across videos.

Live (:class:`RollingWindows`): each step runs every fold over the latest ``window`` frames (fewer at the start,
padded as a short trial) and keeps the outputs of the frames that arrived since the previous step; a window is its
own trial (a modality without a real row in it is zeroed).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from pipeline.common.devices import amp_dtype
from pipeline.nn import FusionModel
from pipeline.training import checkpoint
from pipeline.training.bank import FeatureBank
from pipeline.training.inference import INFER_BATCH
from pipeline.training.normalise import Normaliser
from pipeline.training.windows import window_starts


@dataclass
class Fold:
    """One fold's model (eval mode, on the device) with what it was trained with."""

    path: Path
    model: FusionModel
    norm: Normaliser
    window: int  # frames per window
    hop: int  # frames between window starts
    zero_missing: bool


def load_folds(root: Path, folds: Sequence[int], device: torch.device) -> list[Fold]:
    """``<root>/fold<k>/model.pt`` for each fold, loaded by the checkpoint loader ``predict`` uses."""
    out = []
    for k in folds:
        path = Path(root) / f"fold{k}" / "model.pt"
        model, norm, ckpt = checkpoint.load(path, device)
        out.append(Fold(path, model, norm, int(ckpt["window"]), int(ckpt["hop"]), bool(ckpt["model"]["zero_missing"])))
    return out


class RowBuffer:
    """A trial's feature rows for frames ``origin .. end - 1``: per modality rows (n, *row_shape) in the store
    dtype and ``present`` (n,) bool (the store's mask)."""

    def __init__(self) -> None:
        self.origin = 0
        self.rows: dict[str, np.ndarray] = {}
        self.present: dict[str, np.ndarray] = {}

    @property
    def end(self) -> int:
        return self.origin + (len(next(iter(self.present.values()))) if self.present else 0)

    def push(self, rows: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> None:
        """Append the next frames' rows ({m: (k, *row_shape)}) and masks ({m: (k,)})."""
        if len({len(x) for x in [*rows.values(), *present.values()]}) != 1:
            raise ValueError(f"rows and masks of different lengths: {[len(x) for x in [*rows.values(), *present.values()]]}")
        for m in rows:
            old = self.rows.get(m)
            self.rows[m] = rows[m] if old is None else np.concatenate([old, rows[m]])
            self.present[m] = present[m] if old is None else np.concatenate([self.present[m], present[m]])

    def drop_before(self, frame: int) -> None:
        cut = max(0, frame - self.origin)
        if cut:
            self.rows = {m: x[cut:] for m, x in self.rows.items()}
            self.present = {m: x[cut:] for m, x in self.present.items()}
            self.origin += cut


def _bank(device: torch.device, buffers: list[tuple[RowBuffer, int, int]], no_input: list[dict[str, bool]]) -> FeatureBank:
    """A feature bank whose trial ``i`` is frames ``lo .. hi - 1`` of ``buffers[i] = (buffer, lo, hi)``."""
    mods = list(buffers[0][0].rows)
    rows = {m: torch.from_numpy(np.concatenate([b.rows[m][lo - b.origin : hi - b.origin] for b, lo, hi in buffers]))
            for m in mods}
    present = {m: torch.from_numpy(np.concatenate([b.present[m][lo - b.origin : hi - b.origin] for b, lo, hi in buffers]))
               for m in mods}
    names = [str(i) for i in range(len(buffers))]
    return FeatureBank.from_rows(device, names, [hi - lo for _, lo, hi in buffers], rows, present,
                                 {m: [n[m] for n in no_input] for m in mods})


@torch.inference_mode()
def forward_windows(fold: Fold, bank: FeatureBank, trial: np.ndarray, start: np.ndarray) -> list[np.ndarray]:
    """Outputs of ``fold`` on windows ``(trial[b], start[b])`` of ``bank`` (bank trial index, first row): per
    window float64 (n_b, 2) for its real frames (padding past the trial's end left out), as inference computes
    them."""
    dev = bank.device
    amp = amp_dtype(dev)
    out: list[np.ndarray] = []
    for i in range(0, len(start), INFER_BATCH):
        w = bank.windows(trial[i : i + INFER_BATCH], start[i : i + INFER_BATCH], fold.window)
        inputs = bank.batch(w, fold.norm, fold.zero_missing, with_labels=False)
        mask = inputs.pop("mask")
        with torch.autocast(dev.type, dtype=amp, enabled=amp is not None):
            y = fold.model(inputs, mask)  # (B, T, 2)
        y = y.double().cpu().numpy()
        n_real = mask.sum(1).cpu().numpy()  # padding is only ever at a window's end
        out.extend(y[b, : n_real[b]] for b in range(len(y)))
    return out


def fold_mean(per_fold: list[np.ndarray]) -> np.ndarray:
    """float32 (n, 2): the mean of the folds' float32 per-frame values, accumulated in float64 as ``predict`` does."""
    total: np.ndarray | float = 0.0
    for v in per_fold:
        total = total + v.astype(np.float64)
    return (np.asarray(total) / len(per_fold)).astype(np.float32)


class TrialWindows:
    """Whole-trial inference of one trial of ``n`` frames fed chunk by chunk (see the module docstring).
    ``no_input[m]``: the trial has no real row of ``m`` at all (no face found, no audio)."""

    def __init__(self, n: int, folds: list[Fold], no_input: dict[str, bool]) -> None:
        self.n, self.folds, self.no_input = n, folds, no_input
        self.plans = [window_starts(n, f.window, f.hop) for f in folds]
        self.next = [0] * len(folds)  # per fold: the first window not computed yet
        self.buf = RowBuffer()
        self.total = [np.zeros((0, 2)) for _ in folds]  # per fold: sum of outputs for frames origin .. end - 1
        self.count = [np.zeros(0) for _ in folds]
        self.done = 0  # frames handed out by final()

    def push(self, rows: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> None:
        k = len(next(iter(present.values())))
        self.buf.push(rows, present)
        self.total = [np.concatenate([t, np.zeros((k, 2))]) for t in self.total]
        self.count = [np.concatenate([c, np.zeros(k)]) for c in self.count]

    def take_ready(self, k: int) -> list[int]:
        """Starts of fold ``k``'s windows whose rows are all in and that were not taken before; the caller adds
        their outputs (:meth:`add`) before asking for :meth:`final`."""
        f, plan, out = self.folds[k], self.plans[k], []
        while self.next[k] < len(plan) and plan[self.next[k]] + min(f.window, self.n) <= self.buf.end:
            out.append(plan[self.next[k]])
            self.next[k] += 1
        return out

    def add(self, k: int, start: int, y: np.ndarray) -> None:
        """Fold ``k``'s outputs ``y`` (n_b, 2) of the window starting at frame ``start``."""
        a = start - self.buf.origin
        self.total[k][a : a + len(y)] += y
        self.count[k][a : a + len(y)] += 1

    def final(self) -> np.ndarray:
        """float32 (j, 2): the values of the frames that became final since the last call (fold mean, unsmoothed)."""
        upto = min(p[i] if i < len(p) else self.n for p, i in zip(self.plans, self.next))
        if upto <= self.done:
            return np.zeros((0, 2), np.float32)
        a, b = self.done - self.buf.origin, upto - self.buf.origin
        per_fold = [(t[a:b] / np.maximum(c[a:b], 1.0)[:, None]).astype(np.float32) for t, c in zip(self.total, self.count)]
        self.done = upto
        cut = upto - self.buf.origin
        self.buf.drop_before(upto)
        self.total = [t[cut:] for t in self.total]
        self.count = [c[cut:] for c in self.count]
        return fold_mean(per_fold)


def run_ready(trials: list[TrialWindows], device: torch.device) -> None:
    """Compute every window whose rows are in, of all ``trials`` (which share their folds), batched per fold."""
    if not trials:
        return
    for k, fold in enumerate(trials[0].folds):
        jobs = [(i, s) for i, t in enumerate(trials) for s in t.take_ready(k)]
        if not jobs:
            continue
        used = sorted({i for i, _ in jobs})
        pos = {i: j for j, i in enumerate(used)}
        bank = _bank(device, [(trials[i].buf, trials[i].buf.origin, trials[i].buf.end) for i in used],
                     [trials[i].no_input for i in used])
        tidx = np.array([pos[i] for i, _ in jobs], dtype=np.int64)
        starts = np.array([s - trials[i].buf.origin for i, s in jobs], dtype=np.int64)
        for (i, s), y in zip(jobs, forward_windows(fold, bank, tidx, starts)):
            trials[i].add(k, s, y)


class RollingWindows:
    """Live inference (see the module docstring): rows are pushed as frames become ready; :meth:`step` gives the
    values of the frames pushed since the previous step."""

    def __init__(self, folds: list[Fold]) -> None:
        self.folds = folds
        self.keep = max(f.window for f in folds)
        self.buf = RowBuffer()
        self.pending = 0  # frames pushed since the last step

    def push(self, rows: dict[str, np.ndarray], present: dict[str, np.ndarray]) -> None:
        self.buf.push(rows, present)
        self.pending += len(next(iter(present.values())))

    def step(self, device: torch.device) -> np.ndarray:
        """float32 (k, 2) for the ``k`` frames pushed since the last step (fold mean of one window each)."""
        k, end = self.pending, self.buf.end
        if not k:
            return np.zeros((0, 2), np.float32)
        per_fold = []
        for fold in self.folds:
            lo = max(self.buf.origin, end - fold.window)
            no_input = {m: not bool(p[lo - self.buf.origin :].any()) for m, p in self.buf.present.items()}
            bank = _bank(device, [(self.buf, lo, end)], [no_input])
            (y,) = forward_windows(fold, bank, np.zeros(1, np.int64), np.zeros(1, np.int64))
            per_fold.append(y[-k:].astype(np.float32))
        self.pending = 0
        self.buf.drop_before(end - self.keep)
        return fold_mean(per_fold)
