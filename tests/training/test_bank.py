"""The feature bank: batches equal windows built one by one from the stores, every placement gives the same rows,
streaming statistics equal the two-pass ones, and placement choice. (Overlapping inference: tests/test_inference.py.)"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.io.features import FeatureStore
from pipeline.io.prepared import read_labels
from pipeline.training import bank as bank_mod
from pipeline.training.bank import FeatureBank, choose_placement
from pipeline.training.normalise import Normaliser
from tests.helpers.tiny import SMALL_SHAPES as SHAPES

MODS = list(SHAPES)
CPU = torch.device("cpu")


def trials_of(features: Path) -> list[str]:
    return FeatureStore.open(features / "mfcc.zarr").trials


def reference_window(features: Path, norm: Normaliser, labels: dict, trial: str, start: int, window: int,
                     zero_missing: bool) -> dict[str, np.ndarray]:
    """A window built the slow way, one store read at a time (the data path before the bank)."""
    out = {}
    k = None
    for m in MODS:
        s = FeatureStore.open(features / f"{m}.zarr")
        n = s.n_rows(trial)
        stop = min(start + window, n)
        k = stop - start
        rows = norm.apply(m, torch.from_numpy(s.read(trial, start, stop))).numpy()
        present = s.mask(trial)[start:stop]
        if zero_missing:
            rows[~present] = 0
        if not s.mask(trial).any():  # nothing real in this trial (a video without audio)
            rows[:] = 0
        x = np.zeros((window, *SHAPES[m]), np.float32)
        x[:k] = rows
        out[m] = x
    out["mask"] = np.arange(window) < k
    y = np.zeros((window, 2), np.float32)
    y[:k] = labels[trial][start : start + k]
    out["labels"] = y
    return out


@pytest.mark.parametrize("placement", ["device", "mmap"])
@pytest.mark.parametrize("zero_missing", [False, True])
def test_bank_batch_equals_windows_built_one_by_one(small_stores, placement, zero_missing):
    prepared, features = small_stores
    names = [t for t in trials_of(features) if t not in ("syn04",)]  # syn04 is a test trial without labels
    labels = read_labels(prepared, [t for t in names if t != "syn05"])
    labels["syn05"] = np.zeros((FeatureStore.open(features / "mfcc.zarr").n_rows("syn05"), 2), np.float32)
    bank = FeatureBank.build(features, MODS, names, CPU, placement, labels, progress=False)
    assert set(bank.placement.values()) == {placement}
    norm = bank.fit_normaliser(names[:3])
    rng = np.random.default_rng(1)
    trial = rng.integers(0, len(names), 12)
    window = 25
    start = np.array([rng.integers(0, bank.lengths[i] + 5) if j % 3 else 0 for j, i in enumerate(trial)])
    start = np.minimum(start, bank.lengths[trial] - 1)
    start[0], trial[0] = 0, names.index("syn00")  # the trial without a face in its first 10 frames
    trial[1] = names.index("syn05")  # the video without audio
    got = bank.batch(bank.windows(trial, start, window), norm, zero_missing)
    for b, (i, s) in enumerate(zip(trial, start)):
        ref = reference_window(features, norm, labels, names[i], int(s), window, zero_missing)
        for k, v in ref.items():
            np.testing.assert_array_equal(got[k][b].numpy(), v, err_msg=f"{k} of window {b} ({names[i]}, {s})")
    # the first frames of syn00 have no face: filled crops reach the model only without zero_missing
    first = got["iresnet"][0, :10].abs().sum().item()
    assert (first == 0) == zero_missing
    assert got["vggish"][1].abs().sum().item() == 0  # no audio stream: the training mean either way


def test_streaming_statistics_equal_two_pass(small_stores):
    _, features = small_stores
    names = trials_of(features)
    bank = FeatureBank.build(features, MODS, names, CPU, "device", progress=False)
    norm = bank.fit_normaliser(names, chunk_rows=7)  # chunks that cut trials at odd places
    for m in MODS:
        s = FeatureStore.open(features / f"{m}.zarr")
        x = np.concatenate([s.read(t)[s.mask(t)] for t in names]).astype(np.float64)
        mean = x.mean(0)
        std = np.sqrt(((x - mean) ** 2).mean(0))
        np.testing.assert_allclose(norm.mean[m].numpy(), mean, rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(norm.std[m].numpy(), std, rtol=1e-5)
    back = Normaliser.from_state(norm.state())
    assert torch.equal(back.mean["vggish"], norm.mean["vggish"])


def test_placements_read_the_same_rows(small_stores):
    _, features = small_stores
    names = trials_of(features)
    a = FeatureBank.build(features, MODS, names, CPU, "device", progress=False)
    b = FeatureBank.build(features, MODS, names, CPU, "mmap", progress=False)
    rows = torch.from_numpy(np.random.default_rng(0).integers(0, a.n_rows, 200))
    for m in MODS:
        assert torch.equal(a.take(m, rows), b.take(m, rows))


def test_auto_placement_keeps_small_modalities_in_fast_memory(monkeypatch):
    class Mem:
        available = 10 * 2**30

    monkeypatch.setattr(bank_mod.psutil, "virtual_memory", lambda: Mem)
    sizes = {"iresnet": 26 * 2**30, "vggish": 700 * 2**20, "mfcc": 400 * 2**20}
    assert choose_placement(sizes, CPU, "auto") == {"iresnet": "mmap", "vggish": "device", "mfcc": "device"}
    monkeypatch.setattr(bank_mod.torch.cuda, "mem_get_info", lambda d: (5 * 2**30, 80 * 2**30))
    gpu = torch.device("cuda", 0)
    assert choose_placement(sizes, gpu, "auto") == {"iresnet": "mmap", "vggish": "pinned", "mfcc": "device"}
    Mem.available = 100 * 2**30
    assert choose_placement(sizes, gpu, "auto")["iresnet"] == "pinned"
    assert choose_placement(sizes, CPU, "pinned") == {m: "device" for m in sizes}  # no pinned memory without CUDA


def test_lengths_of_follows_the_order_asked_and_windows_use_bank_rows(small_stores):
    _, features = small_stores
    names = trials_of(features)
    bank = FeatureBank.build(features, ["mfcc"], names, CPU, "device", progress=False)
    store = FeatureStore.open(features / "mfcc.zarr")
    asked = names[::-1]
    assert list(bank.lengths_of(asked)) == asked and bank.lengths_of(asked) == {t: store.n_rows(t) for t in asked}
    i = bank.index[names[2]]
    n = int(bank.lengths[i])
    w = bank.windows(np.array([i]), np.array([n - 3]), 5)
    assert w.rows[0].tolist() == [int(bank.offsets[i]) + n - 3 + k for k in (0, 1, 2, 2, 2)]
    np.testing.assert_array_equal(bank.take("mfcc", w.rows[0, :3]).numpy(), store.read(names[2])[n - 3 :])
