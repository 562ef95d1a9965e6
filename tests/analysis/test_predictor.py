"""Online whole-trial inference equals :func:`pipeline.training.inference.predict` (what ``predict`` runs), fed in
chunks of any size: the seams between chunks change nothing; live rolling windows see the frames so far."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.analysis.predictor import Fold, RollingWindows, TrialWindows, fold_mean, run_ready
from pipeline.io.features import FeatureStore
from pipeline.nn import FusionModel
from pipeline.training.bank import FeatureBank
from pipeline.training.inference import predict
from tests.helpers.tiny import MODEL
from tests.helpers.tiny import SMALL_SHAPES as SHAPES

CPU = torch.device("cpu")
MODS = list(SHAPES)


def folds_for(bank: FeatureBank, settings: list[tuple[int, int, bool]]) -> list[Fold]:
    """Random-init models (eval mode) with ``(window, hop, zero_missing)`` each, normalised on the bank's trials."""
    norm = bank.fit_normaliser(bank.trials)
    out = []
    for k, (window, hop, zero) in enumerate(settings):
        torch.manual_seed(k)
        model = FusionModel(MODEL, SHAPES, max_len=window).eval()
        out.append(Fold(Path(f"fold{k}"), model, norm, window, hop, zero))
    return out


def reference(bank: FeatureBank, folds: list[Fold], trial: str) -> np.ndarray:
    return fold_mean([predict(f.model, bank, f.norm, [trial], f.window, f.hop, f.zero_missing)[trial] for f in folds])


def rows_of(features: Path, trial: str) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    stores = {m: FeatureStore.open(features / f"{m}.zarr") for m in MODS}
    return {m: s.read(trial) for m, s in stores.items()}, {m: s.mask(trial) for m, s in stores.items()}


def streamed(folds: list[Fold], rows: dict, present: dict, chunk: int) -> np.ndarray:
    n = len(present[MODS[0]])
    tw = TrialWindows(n, folds, {m: not present[m].any() for m in MODS})
    out = []
    for lo in range(0, n, chunk):
        tw.push({m: r[lo : lo + chunk] for m, r in rows.items()}, {m: p[lo : lo + chunk] for m, p in present.items()})
        run_ready([tw], CPU)
        out.append(tw.final())
        assert tw.buf.end - tw.buf.origin <= max(f.window for f in folds) + chunk  # one window plus a chunk held
    return np.concatenate(out)


@pytest.mark.parametrize("chunk", [1, 7, 23, 64, 1000])
def test_chunks_of_any_size_give_whole_trial_inference(small_stores, chunk):
    _, features = small_stores
    names = FeatureStore.open(features / "mfcc.zarr").trials
    bank = FeatureBank.build(features, MODS, names, CPU, "device", progress=False)
    folds = folds_for(bank, [(16, 5, False), (24, 24, True), (40, 13, False)])
    for t in names:  # syn00 starts without a face, syn05 has no audio; lengths around 60 (some below a window)
        rows, present = rows_of(features, t)
        got = streamed(folds, rows, present, chunk)
        np.testing.assert_allclose(got, reference(bank, folds, t), atol=2e-6, err_msg=f"{t}, chunk {chunk}")


def test_windows_of_several_trials_batched_together(small_stores):
    """run_ready over the trials of several videos at once (the back end batches across videos) changes nothing."""
    _, features = small_stores
    names = FeatureStore.open(features / "mfcc.zarr").trials
    bank = FeatureBank.build(features, MODS, names, CPU, "device", progress=False)
    folds = folds_for(bank, [(16, 5, False), (20, 8, False)])
    data = {t: rows_of(features, t) for t in names}
    tws = {t: TrialWindows(len(p[MODS[0]]), folds, {m: not p[m].any() for m in MODS}) for t, (_, p) in data.items()}
    out: dict[str, list[np.ndarray]] = {t: [] for t in names}
    for lo in range(0, max(tw.n for tw in tws.values()), 9):
        for t, (rows, present) in data.items():
            if lo < tws[t].n:
                tws[t].push({m: r[lo : lo + 9] for m, r in rows.items()}, {m: p[lo : lo + 9] for m, p in present.items()})
        run_ready(list(tws.values()), CPU)
        for t in names:
            out[t].append(tws[t].final())
    for t in names:
        np.testing.assert_allclose(np.concatenate(out[t]), reference(bank, folds, t), atol=2e-6, err_msg=t)


def test_a_frame_is_final_once_no_window_left_contains_it(small_stores):
    _, features = small_stores
    bank = FeatureBank.build(features, MODS, ["syn01"], CPU, "device", progress=False)
    (fold,) = folds_for(bank, [(16, 5, False)])
    rows, present = rows_of(features, "syn01")
    n = len(present["mfcc"])
    tw = TrialWindows(n, [fold], {m: False for m in MODS})
    tw.push({m: r[:30] for m, r in rows.items()}, {m: p[:30] for m, p in present.items()})
    run_ready([tw], CPU)
    # windows of 16 at 0, 5 and 10 fit in 30 frames; the next starts at 15: frames 0..14 are final, and no row
    # before 15 is needed any more
    assert tw.take_ready(0) == [] and len(tw.final()) == 15 and tw.buf.origin == 15
    tw.push({m: r[30:31] for m, r in rows.items()}, {m: p[30:31] for m, p in present.items()})
    run_ready([tw], CPU)
    assert len(tw.final()) == 5  # the window at 15 is in: the next starts at 20


def test_live_rolling_windows_use_the_frames_so_far(small_stores):
    """A live step over k < window frames is the whole-trial inference of a trial of those k frames (one padded
    window); later steps give the newest frames the outputs of the window that ends on them."""
    _, features = small_stores
    bank = FeatureBank.build(features, MODS, ["syn02"], CPU, "device", progress=False)
    folds = folds_for(bank, [(16, 5, False), (12, 4, True)])
    rows, present = rows_of(features, "syn02")
    live = RollingWindows(folds)
    live.push({m: r[:10] for m, r in rows.items()}, {m: p[:10] for m, p in present.items()})
    first = live.step(CPU)
    head = FeatureBank.from_rows(CPU, ["head"], [10], {m: torch.from_numpy(r[:10]) for m, r in rows.items()},
                                 {m: torch.from_numpy(p[:10]) for m, p in present.items()},
                                 {m: [not present[m][:10].any()] for m in MODS})
    want = fold_mean([predict(f.model, head, f.norm, ["head"], f.window, f.hop, f.zero_missing)["head"] for f in folds])
    np.testing.assert_allclose(first, want, atol=2e-6)
    for lo in range(10, 40, 3):
        live.push({m: r[lo : lo + 3] for m, r in rows.items()}, {m: p[lo : lo + 3] for m, p in present.items()})
        assert live.step(CPU).shape == (3, 2)
    assert live.buf.end - live.buf.origin <= 16
