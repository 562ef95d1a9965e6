"""Training on a tiny store: outputs, CPU determinism, every placement of the bank, the eight LA-SE / TCN /
Transformer combinations, bank versus window-by-window batches, resuming, a fold without a defined CCC, the CLI."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.common.config import ModelConfig, TrainConfig
from pipeline.common.errors import PipelineError
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import load_folds, read_labels
from pipeline.nn import FusionModel
from pipeline.stages import train
from pipeline.training import checkpoint, fusion
from pipeline.training.bank import FeatureBank
from pipeline.training.synthetic import make_synthetic
from tests.helpers.cli import invoke
from tests.helpers.tiny import MODEL, SHAPES

TRAIN = TrainConfig(window=40, hop=20, batch=4, epochs=3, lr=3e-3, warmup_epochs=1, patience=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tinytrain")
    return make_synthetic(root, n_trials=6, n_test=1, frames=90, n_folds=3, row_shapes=SHAPES, noise=0.5)


def fit(tiny, out: Path, fold: int = 0, model=MODEL, cfg=TRAIN, **kw) -> dict:
    prepared, features = tiny
    return train.run(fold, model, cfg, prepared, features, out / "models" / f"fold{fold}", out / "metrics" / f"fold{fold}.json", out / "metrics" / f"fold{fold}", **kw)


def preds_of(out: Path, fold: int) -> dict[str, np.ndarray]:
    with np.load(out / "models" / f"fold{fold}" / "val_predictions.npz") as z:
        return {k: z[k] for k in z.files}


def test_train_smoke_writes_outputs(tiny, tmp_path):
    res = fit(tiny, tmp_path)
    fold_dir = tmp_path / "models" / "fold0"
    metrics = json.loads((tmp_path / "metrics" / "fold0.json").read_text())
    assert {"ccc_valence", "ccc_arousal", "ccc_mean", "best_epoch", "random_init_backbones"} <= set(metrics)
    assert metrics["random_init_backbones"] == ["iresnet", "mfcc", "vggish"]
    assert metrics["ccc_mean"] == res["ccc_mean"]
    meta = json.loads((fold_dir / "meta.json").read_text())
    preds = np.load(fold_dir / "val_predictions.npz")
    assert sorted(preds.files) == meta["val_trials"] and set(meta["per_trial"]) == set(meta["val_trials"])
    assert all(np.abs(preds[t]).max() < 1 for t in preds.files)
    curves = tmp_path / "metrics" / "fold0" / "plots" / "metrics"
    for name in ("train/loss.tsv", "val/ccc_mean.tsv", "val/ccc_valence.tsv", "val/ccc_arousal.tsv"):
        assert len((curves / name).read_text().splitlines()) == 1 + metrics["epochs_run"]
    model, norm, ckpt = checkpoint.load(fold_dir / "model.pt", torch.device("cpu"))
    assert ckpt["row_shapes"]["iresnet"] == [16, 3, 3] and not model.training
    assert ckpt["features"]["vggish"]["weights"] == "random-init" and metrics["bank"]["iresnet"] == "device"


def test_cpu_runs_are_deterministic_and_every_placement_trains_alike(tiny, tmp_path):
    a = fit(tiny, tmp_path / "a", fold=1)
    b = fit(tiny, tmp_path / "b", fold=1)
    c = fit(tiny, tmp_path / "c", fold=1, cfg=TrainConfig(**{**TRAIN.__dict__, "bank": "mmap"}))
    assert c["bank"] == {m: "mmap" for m in SHAPES} and a["bank"] == {m: "device" for m in SHAPES}
    for k in ("ccc_valence", "ccc_arousal", "ccc_mean", "best_epoch"):
        assert a[k] == b[k] == c[k]
    pa, pb, pc = (preds_of(tmp_path / x, 1) for x in "abc")
    assert all(np.array_equal(pa[t], pb[t]) and np.array_equal(pa[t], pc[t]) for t in pa)


COMBOS = [(lase, tcn, tr) for lase in (False, True) for tcn in (False, True) for tr in (False, True)]


@pytest.mark.parametrize(("lase", "tcn", "transformer"), COMBOS)
def test_every_combination_trains(tiny, tmp_path, lase, tcn, transformer):
    cfg = ModelConfig(**{**MODEL.__dict__, "lase": lase, "tcn": tcn, "transformer": transformer})
    res = fit(tiny, tmp_path, fold=2, model=cfg, cfg=TrainConfig(**{**TRAIN.__dict__, "epochs": 1}))
    assert res["epochs_run"] == 1 and res["ccc_mean"] is not None
    model, _, _ = checkpoint.load(tmp_path / "models" / "fold2" / "model.pt", torch.device("cpu"))
    assert (model.encoder is not None) == transformer and bool(len(model.tcn)) == tcn
    assert (model.pool["iresnet"].attention is not None) == lase
    init = FusionModel(cfg, {m: s for m, s in SHAPES.items()}, max_len=TRAIN.window)
    trained = model.state_dict()
    assert set(trained) == set(init.state_dict())
    assert any(not torch.equal(v, trained[k]) for k, v in init.state_dict().items() if v.is_floating_point())


def test_bank_batches_train_exactly_like_windows_read_one_by_one(tiny):
    """One epoch from the bank and one from windows read trial by trial from the stores (the pre-bank data path),
    over the same plan and seeds: the same weights, bit for bit, on the CPU."""
    prepared, features = tiny
    folds = load_folds(prepared / "folds.json")
    trials = sorted(t for f in folds[1:] for t in f)
    labels = read_labels(prepared, trials)
    bank = FeatureBank.build(features, list(SHAPES), trials, torch.device("cpu"), "device", labels, progress=False)
    norm = bank.fit_normaliser(trials)
    lengths = {t: int(bank.lengths[bank.index[t]]) for t in trials}
    stores = {m: FeatureStore.open(features / f"{m}.zarr") for m in SHAPES}

    def one_by_one(w):
        out = {m: [] for m in SHAPES}
        for i, s in zip(w.trial.tolist(), w.rows[:, 0].tolist()):
            t = bank.trials[i]
            start = s - int(bank.offsets[i])
            stop = min(start + TRAIN.window, lengths[t])
            for m, st in stores.items():
                x = torch.zeros((TRAIN.window, *SHAPES[m]))
                x[: stop - start] = norm.apply(m, torch.from_numpy(st.read(t, start, stop)))
                out[m].append(x)
        batch = {m: torch.stack(v) for m, v in out.items()}
        batch["mask"] = w.valid.clone()
        y = torch.zeros((len(w), TRAIN.window, 2))
        for b, (i, s) in enumerate(zip(w.trial.tolist(), w.rows[:, 0].tolist())):
            start = s - int(bank.offsets[i])
            k = min(TRAIN.window, lengths[bank.trials[i]] - start)
            y[b, :k] = torch.from_numpy(labels[bank.trials[i]][start : start + k])
        batch["labels"] = y
        return batch

    weights = []
    for make in (lambda w: bank.batch(w, norm, zero_missing=False), one_by_one):
        torch.manual_seed(0)
        model = FusionModel(MODEL, bank.row_shapes, max_len=TRAIN.window)
        optim = torch.optim.AdamW(model.parameters(), lr=TRAIN.lr)
        sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda s: 1.0)
        plan = fusion.epoch_batches(bank, lengths, TRAIN, [0, 0, 0], torch.Generator().manual_seed(0))
        learner = fusion.Learner(model, optim, sched, torch.amp.GradScaler("cuda", enabled=False), None)
        fusion.train_epoch(learner, (make(w) for w in plan), fusion.StepTimes())
        weights.append(model.state_dict())
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


def test_resume_after_an_interruption_ends_like_an_uninterrupted_run(tiny, tmp_path, monkeypatch):
    cfg = TrainConfig(**{**TRAIN.__dict__, "epochs": 4, "patience": 10})
    ref = fit(tiny, tmp_path / "ref", fold=0, cfg=cfg)

    real_save = train._save_resume
    calls = []

    def save_then_die(*args, **kwargs):
        real_save(*args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as if killed right after epoch 1's checkpoint

    monkeypatch.setattr(train, "_save_resume", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        fit(tiny, tmp_path / "run", fold=0, cfg=cfg)
    monkeypatch.setattr(train, "_save_resume", real_save)
    assert not (tmp_path / "run" / "models" / "fold0" / "model.pt").exists()
    assert (tmp_path / "run" / "models" / ".resume" / "fold0" / "last.pt").exists()
    res = fit(tiny, tmp_path / "run", fold=0, cfg=cfg, resume=True)
    for k in ("ccc_valence", "ccc_arousal", "ccc_mean", "best_epoch", "epochs_run"):
        assert res[k] == ref[k], k
    pr, pn = preds_of(tmp_path / "ref", 0), preds_of(tmp_path / "run", 0)
    assert all(np.array_equal(pr[t], pn[t]) for t in pr)
    curve = tmp_path / "run" / "metrics" / "fold0" / "plots" / "metrics" / "val" / "ccc_mean.tsv"
    assert len(curve.read_text().splitlines()) == 1 + 4  # the resumed run's curves hold every epoch
    # other params: the checkpoint is not resumed
    other = fit(tiny, tmp_path / "run", fold=0, cfg=TrainConfig(**{**cfg.__dict__, "lr": 1e-3}), resume=True)
    assert other["epochs_run"] == 4 and other["ccc_mean"] != res["ccc_mean"]


def test_a_fold_whose_ccc_is_never_defined_is_a_one_line_error(tiny, tmp_path, monkeypatch):
    real = train.predict

    def diverged(*args, **kwargs):  # what a model that diverged to NaN predicts
        return {t: np.full_like(p, np.nan) for t, p in real(*args, **kwargs).items()}

    monkeypatch.setattr(train, "predict", diverged)
    with pytest.raises(PipelineError, match=r"fold 0: validation CCC was undefined \(NaN\) in all 2 epoch"):
        fit(tiny, tmp_path, fold=0, cfg=TrainConfig(**{**TRAIN.__dict__, "epochs": 2}))
    assert not (tmp_path / "models" / "fold0" / "model.pt").exists()


@pytest.mark.slow
def test_training_learns_the_relation(tmp_path):
    data = make_synthetic(tmp_path / "data", n_trials=8, n_test=1, frames=300, n_folds=4, row_shapes=SHAPES, noise=0.5)
    model = ModelConfig(**{**MODEL.__dict__, "tcn_channels": 16, "d_model": 32, "ff_dim": 64})
    cfg = TrainConfig(window=100, hop=50, batch=4, epochs=20, lr=3e-3, warmup_epochs=1, patience=20)
    res = fit(data, tmp_path, fold=0, model=model, cfg=cfg)
    assert res["ccc_mean"] > 0.5


def test_cli_train(tiny, tmp_path):


    prepared, features = tiny
    params = tmp_path / "params.yaml"
    params.write_text(
        "model: {tcn_channels: 8, tcn_levels: 1, d_model: 16, heads: 2, layers: 1, ff_dim: 16, head_hidden: 8}\n"
        "train: {window: 40, hop: 20, batch: 4, epochs: 1}\n"
    )
    out = invoke("train", "--fold", "0", "--prepared", prepared, "--features", features, "--models", tmp_path / "m",
                 "--metrics", tmp_path / "x", "--params", params)
    assert out.exit_code == 0, out.output
    assert (tmp_path / "m" / "fold0" / "model.pt").exists() and (tmp_path / "x" / "fold0.json").exists()


def test_loop_state_keeps_the_best_epoch_stops_early_and_survives_a_resume_file(tmp_path):
    cfg = TrainConfig(**{**TRAIN.__dict__, "epochs": 10, "patience": 2})
    model = torch.nn.Linear(2, 2)
    state = train.LoopState()
    preds = {"a": np.ones((3, 2), np.float32)}
    for mean in (None, 0.5, 0.4, 0.7, 0.6, 0.65):  # an undefined CCC first, then a best at epoch 3
        state.end_epoch({"ccc_mean": mean, "per_trial": {}}, preds, model, cfg)
        state.history.append({"val/ccc_mean": mean})
    assert state.best.epoch == 3 and state.best.ccc_mean == 0.7 and state.done and state.epoch == 6 and state.stale == 2
    assert torch.equal(state.best.weights["weight"], model.weight) and state.best.weights["weight"] is not model.weight
    torch.save({"state": state.to_doc()}, tmp_path / "s.pt")
    back = train.LoopState.from_doc(torch.load(tmp_path / "s.pt", weights_only=True)["state"])
    assert (back.epoch, back.step, back.stale, back.done, back.history) == (6, 0, 2, True, state.history)
    assert back.best.epoch == 3 and back.best.val == state.best.val and np.array_equal(back.best.preds["a"], preds["a"])
    fresh = train.LoopState.from_doc(train.LoopState().to_doc())
    assert fresh.best.epoch == -1 and fresh.best.ccc_mean == -np.inf and not fresh.done


def test_bench_train_measures_every_rate_on_fold0(tmp_path, monkeypatch, capsys):
    """``bench train`` end to end on its demo-sized synthetic set, each rate timed over one call."""
    from pipeline.bench import train as bench

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.yaml").write_text(
        "model: {tcn_channels: 8, tcn_levels: 1, d_model: 16, heads: 2, layers: 1, ff_dim: 16, head_hidden: 8}\n"
        "train: {window: 40, hop: 20, batch: 4}\n"
    )
    per_call = {}

    def once(step, device, n, min_seconds=0.0, warmup=1):
        step()
        per_call[len(per_call)] = n
        return 10.0 * (len(per_call))  # gather, data, model, pipeline, infer: 10, 20, 30, 40, 50 windows/s

    monkeypatch.setattr(bench, "_rate", once)
    line = bench.run(tmp_path / "work", device="cpu", steps=3)
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1]) == line
    assert line["data"] == "synthetic demo size" and (tmp_path / "work" / "prepared" / "folds.json").exists()
    assert (line["gather_windows_per_s"], line["data_windows_per_s"], line["model_windows_per_s"]) == (10, 20, 30)
    assert line["data_over_gather"] == 2.0 and line["ratio"] == round(40 / 30, 3) and line["batch"] == 4
    assert per_call[3] == 3 * 4  # the pipeline rate counts k = steps batches of 4 windows per call
    folds = load_folds(tmp_path / "work" / "prepared" / "folds.json")
    assert line["frames_total"] == sum(FeatureStore.open(tmp_path / "work" / "features" / "mfcc.zarr").n_rows(t)
                                       for f in folds for t in f)
