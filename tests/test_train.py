"""Training smoke test on a tiny store, CPU determinism, chunked reading, and the CLI command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline.bench.train import make_synthetic
from pipeline.config import ModelConfig, TrainConfig
from pipeline.stages import train

SHAPES = {"iresnet": (16, 3, 3), "vggish": (12,), "mfcc": (8,)}
MODEL = ModelConfig(tcn_channels=8, tcn_levels=2, tcn_kernel=3, d_model=16, heads=2, layers=1, ff_dim=32, head_hidden=8)
TRAIN = TrainConfig(window=40, hop=20, batch=4, epochs=3, lr=3e-3, warmup_epochs=1, patience=5)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, Path]:
    torch.set_num_threads(2)
    root = tmp_path_factory.mktemp("tinytrain")
    return make_synthetic(root, n_trials=6, n_test=1, frames=90, n_folds=3, row_shapes=SHAPES, noise=0.5)


def fit(tiny, out: Path, fold: int = 0, model=MODEL, cfg=TRAIN) -> dict:
    prepared, features = tiny
    return train.run(fold, model, cfg, prepared, features, out / "models" / f"fold{fold}", out / "metrics" / f"fold{fold}.json", out / "metrics" / f"fold{fold}")


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
    model, norm, ckpt = train.load_checkpoint(fold_dir / "model.pt", torch.device("cpu"))
    assert ckpt["row_shapes"]["iresnet"] == [16, 3, 3] and not model.training


def test_cpu_runs_are_deterministic_and_chunked_equals_preloaded(tiny, tmp_path):
    a = fit(tiny, tmp_path / "a", fold=1)
    b = fit(tiny, tmp_path / "b", fold=1)
    c = fit(tiny, tmp_path / "c", fold=1, cfg=TrainConfig(**{**TRAIN.__dict__, "preload_gb": 0.0}))
    assert not c["preloaded"] and a["preloaded"]
    for k in ("ccc_valence", "ccc_arousal", "ccc_mean", "best_epoch"):
        assert a[k] == b[k] == c[k]
    pa = np.load(tmp_path / "a" / "models" / "fold1" / "val_predictions.npz")
    pb = np.load(tmp_path / "b" / "models" / "fold1" / "val_predictions.npz")
    assert all(np.array_equal(pa[t], pb[t]) for t in pa.files)


def test_every_switch_trains(tiny, tmp_path):
    off = ModelConfig(**{**MODEL.__dict__, "lase": False, "tcn": False, "transformer": False, "modalities": ("iresnet",)})
    res = fit(tiny, tmp_path, fold=2, model=off, cfg=TrainConfig(**{**TRAIN.__dict__, "epochs": 1}))
    assert res["epochs_run"] == 1


@pytest.mark.slow
def test_training_learns_the_relation(tmp_path):
    data = make_synthetic(tmp_path / "data", n_trials=8, n_test=1, frames=300, n_folds=4, row_shapes=SHAPES, noise=0.5)
    model = ModelConfig(**{**MODEL.__dict__, "tcn_channels": 16, "d_model": 32, "ff_dim": 64})
    cfg = TrainConfig(window=100, hop=50, batch=4, epochs=20, lr=3e-3, warmup_epochs=1, patience=20)
    res = fit(data, tmp_path, fold=0, model=model, cfg=cfg)
    assert res["ccc_mean"] > 0.5


def test_cli_train(tiny, tmp_path):
    from typer.testing import CliRunner

    from pipeline.cli import app

    prepared, features = tiny
    params = tmp_path / "params.yaml"
    params.write_text(
        "model: {tcn_channels: 8, tcn_levels: 1, d_model: 16, heads: 2, layers: 1, ff_dim: 16, head_hidden: 8}\n"
        "train: {window: 40, hop: 20, batch: 4, epochs: 1}\n"
    )
    out = CliRunner().invoke(
        app,
        ["train", "--fold", "0", "--prepared", str(prepared), "--features", str(features), "--models", str(tmp_path / "m"), "--metrics", str(tmp_path / "x"), "--params", str(params)],
    )
    assert out.exit_code == 0, out.output
    assert (tmp_path / "m" / "fold0" / "model.pt").exists() and (tmp_path / "x" / "fold0.json").exists()
