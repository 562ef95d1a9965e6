"""The backbone stage: a tiny fine-tune on the demo's generated AffectNet set; its checkpoint loads strictly into the
extractor and into an independently built arcface_torch-shaped network; the loss falls; kill -9 and resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import f1_score

from pipeline.common.config import BackboneConfig, DemoConfig, IResNetConfig
from pipeline.extractors import build, iresnet
from pipeline.extractors.iresnet import iresnet50, preprocess, random_init
from pipeline.extractors.weights import RANDOM_INIT, RandomInitWarning, sha256_file
from pipeline.io.affectnet import read_split
from pipeline.nn.backbone import BackboneNet
from pipeline.scoring import metrics
from pipeline.stages import backbone as B
from pipeline.stages import demo
from pipeline.training import backbone as T
from pipeline.training.schedule import lr_factor
from tests.helpers import ROOT
from tests.helpers.arcface import (
    ArcfaceIResNet50,  # an independent transcription of arcface_torch's
)
from tests.helpers.cli import invoke, write_params

SIZE = 32  # input side of the tiny runs (2 x 2 maps)
TINY = {"freeze": "layer3", "epochs": 3, "batch": 16, "lr": 3e-3, "warmup_epochs": 0.0, "size": SIZE}


@pytest.fixture(scope="module")
def affectnet(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("affectnet") / "affectnet"
    demo.write_affectnet(DemoConfig(affectnet_train=50, affectnet_val=26, size=64), out)
    return out


@pytest.fixture(scope="module")
def trained(affectnet, tmp_path_factory) -> tuple[Path, dict]:
    """One tiny run from random init: 48 training images, 3 epochs, layer4 and heads trained, 32 px."""
    work = tmp_path_factory.mktemp("run")
    cfg = BackboneConfig(data=str(affectnet), **TINY)
    with pytest.warns(RandomInitWarning):
        result = B.run(cfg, 48, work / "models" / "backbone", work / "metrics" / "backbone.json",
                       work / "metrics" / "backbone", device="cpu")
    return work, result


def test_checkpoint_loads_strictly_into_the_extractor_and_arcface_network(trained):
    work, _ = trained
    path = work / "models" / "backbone" / "backbone.pth"
    state = torch.load(path, map_location="cpu", weights_only=True)
    assert set(state) == set(iresnet50().state_dict())  # arcface_torch names, nothing else
    ref = ArcfaceIResNet50()
    ref.load_state_dict(state, strict=True)
    ex = build("iresnet", IResNetConfig(weights=str(path)), SIZE, "cpu")  # strict, as for any user's file
    assert ex.weights == sha256_file(path)
    start = random_init(iresnet50()).state_dict()
    loaded = ex.module.net.state_dict()
    for k, v in state.items():
        assert torch.equal(loaded[k], v), k
    # frozen through layer3: those weights and BN statistics are the start's; layer4 and bn2 were fine-tuned
    assert all(torch.equal(state[k], start[k]) for k in state if k.startswith(("conv1", "layer1", "layer3", "fc.")))
    assert not torch.equal(state["layer4.2.conv2.weight"], start["layer4.2.conv2.weight"])
    assert not torch.equal(state["bn2.running_mean"], start["bn2.running_mean"])
    frames = torch.randint(0, 256, (3, SIZE, SIZE, 3), dtype=torch.uint8)
    model = BackboneNet(iresnet50()).eval()
    model.net.load_state_dict(state)
    with torch.inference_mode():
        np.testing.assert_allclose(ex.forward(frames).numpy(), model.net.forward_map(preprocess(frames)).numpy(), rtol=1e-4, atol=1e-5)


def test_outputs_label_the_random_start(trained):
    work, result = trained
    meta = json.loads((work / "models" / "backbone" / "meta.json").read_text())
    written = json.loads((work / "metrics" / "backbone.json").read_text())
    assert written == result
    assert written["random_init_start"] is True and written["init"] == RANDOM_INIT
    assert meta["random_init_start"] is True and meta["init"]["sha256"] == RANDOM_INIT
    assert meta["backbone_sha256"] == sha256_file(work / "models" / "backbone" / "backbone.pth")
    assert meta["input"] == {"size": SIZE, "contract": "RGB uint8 -> (x / 255 - 0.5) / 0.5", "features": "bn2 map"}
    assert written["train_images"] == 48 and written["val_images"] == 25 and written["size"] == SIZE
    assert meta["data"]["skipped"]["train"] == {"expression 8 (None)": 1, "expression 9 (Uncertain)": 1}
    for k in ("accuracy", "macro_f1", "ccc_valence", "ccc_arousal", "ccc_mean"):
        assert written[k] is None or -1 <= written[k] <= 1
    assert written["best_epoch"] == max(range(3), key=lambda e: meta["history"][e]["val/ccc_mean"])
    curve = (work / "metrics" / "backbone" / "plots" / "metrics" / "val" / "ccc_mean.tsv").read_text().splitlines()
    assert len(curve) == 1 + 3  # header + one row per epoch
    assert not (work / "models" / "backbone" / "last.pt").exists()  # the resume state goes once complete
    assert not (work / "metrics" / "backbone" / "metrics.json").exists()
    heads = torch.load(work / "models" / "backbone" / "heads.pth", weights_only=True)
    assert set(heads) == {"expression.weight", "expression.bias", "va.weight", "va.bias"}


def test_a_tiny_run_reduces_the_loss(trained):
    work, _ = trained
    history = json.loads((work / "models" / "backbone" / "meta.json").read_text())["history"]
    losses = [h["train/loss"] for h in history]
    assert losses[-1] < losses[0], losses


def test_batches():
    batches = T.epoch_batches(50, 16, seed=0, epoch=3)
    assert [len(b) for b in batches] == [16, 16, 16]  # the short last batch is dropped
    assert len(set(np.concatenate(batches))) == 48
    assert all((a == b).all() for a, b in zip(batches, T.epoch_batches(50, 16, seed=0, epoch=3)))
    assert not (T.epoch_batches(50, 16, seed=0, epoch=4)[0] == batches[0]).all()
    assert [len(b) for b in T.epoch_batches(5, 16, 0, 0)] == [5]
    w = T.class_weights(np.array([10, 0, 30, 60, 0, 0, 0, 0]), balance=True)
    assert w[1] == 0 and w[[0, 2, 3]].mean() == pytest.approx(1.0) and w[0] == pytest.approx(6 * w[3])


def test_accuracy_and_macro_f1_against_sklearn():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 8, 300), rng.integers(0, 6, 300)
    assert metrics.macro_f1(p, t) == pytest.approx(f1_score(t, p, average="macro"))
    assert metrics.accuracy(p, t) == pytest.approx(np.mean(p == t))
    assert metrics.macro_f1([0, 1, 1], [0, 1, 2]) == pytest.approx((1 + 2 / 3 + 0) / 3)  # hand-computed
    assert np.isnan(metrics.macro_f1([], []))


def test_fingerprint_follows_what_decides_the_result(affectnet):
    train, val = read_split(affectnet, "train"), read_split(affectnet, "val")
    cfg = BackboneConfig(data=str(affectnet), **TINY)
    fp = B.fingerprint(cfg, SIZE, RANDOM_INIT, train, val)
    assert fp == B.fingerprint(BackboneConfig(data=str(affectnet), **{**TINY, "workers": 3, "cache_gb": 0}), SIZE, RANDOM_INIT, train, val)
    assert fp != B.fingerprint(BackboneConfig(data=str(affectnet), **{**TINY, "lr": 1e-3}), SIZE, RANDOM_INIT, train, val)
    assert fp != B.fingerprint(cfg, 48, RANDOM_INIT, train, val)
    assert fp != B.fingerprint(cfg, SIZE, "ab" * 32, train, val)
    assert fp != B.fingerprint(cfg, SIZE, RANDOM_INIT, val, train)


def test_meta_contract_is_derived_from_the_extractors_contract():
    assert B.contract_text(iresnet.CONTRACT) == "RGB uint8 -> (x / 255 - 0.5) / 0.5"
    assert B.contract_text(iresnet.InputContract(color="BGR", mean=0.0, std=1.0)) == "BGR uint8 -> (x / 255 - 0) / 1"


def test_resume_fingerprint_and_dvc_cover_the_same_code():
    deps = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]["backbone"]["deps"]
    code = {Path(m.__file__).resolve().relative_to(ROOT).as_posix() for m in B.CODE}
    assert code == {d for d in deps if d.endswith(".py")}
    assert "pipeline/stages/backbone.py" in code and "pipeline/faces/stills.py" in code


def test_step_plan_follows_the_schedule():
    cfg = BackboneConfig(batch=16, epochs=3, warmup_epochs=0.5, lr=1e-3)
    plan = T.StepPlan.of(50, cfg)
    assert (plan.per_epoch, plan.warmup, plan.total) == (3, 2, 9)  # 50 images: 3 full batches of 16
    assert [plan.lr(cfg.lr, 0, k) for k in range(3)] == [cfg.lr * lr_factor(k, 2, 9) for k in range(3)]
    assert plan.lr(cfg.lr, 2, 1) == cfg.lr * lr_factor(7, 2, 9) and plan.lr(cfg.lr, 0, 0) == pytest.approx(cfg.lr / 2)


def test_training_batches_from_the_trunk_bank(affectnet):
    crops = T.Crops(read_split(affectnet, "val"), SIZE, cache_gb=1.0, workers=0, pin=False)
    bank = torch.arange(len(crops), dtype=torch.float32).view(-1, 1, 1, 1).expand(-1, 2, 1, 1)  # (N, 2, 1, 1)
    idx = [np.array([4, 1, 9]), np.array([0, 2, 3])]
    cpu = torch.device("cpu")
    for i, (x, e, v) in zip(idx, T.train_batches(crops, bank, idx, cpu)):
        assert x[:, 0, 0, 0].tolist() == i.tolist() and torch.equal(e, crops.expression[i]) and torch.equal(v, crops.va[i])
    for (fa, ea, _), (fb, eb, _) in zip(T.train_batches(crops, None, idx, cpu), crops.batches(idx)):
        assert torch.equal(fa, fb) and torch.equal(ea, eb)


def test_decoding_per_batch_equals_the_cache(affectnet):
    split = read_split(affectnet, "val")
    cached = T.Crops(split, SIZE, cache_gb=1.0, workers=0, pin=False)
    streamed = T.Crops(split, SIZE, cache_gb=0.0, workers=0, pin=False)
    assert cached.cache is not None and streamed.cache is None
    idx = [np.array([3, 0, 7]), np.array([1, 2])]
    for (fa, ea, va), (fb, eb, vb) in zip(cached.batches(idx), streamed.batches(idx)):
        assert torch.equal(fa, fb) and torch.equal(ea, eb) and torch.equal(va, vb)


def test_cli_from_an_arcface_file_and_bad_input(affectnet, tmp_path):
    torch.manual_seed(1)
    start = ArcfaceIResNet50().state_dict()
    init = tmp_path / "arcface.pth"
    torch.save(start, init)
    params = write_params(tmp_path / "params.yaml", {"backbone": {**TINY, "data": str(affectnet), "init": str(init), "epochs": 1, "augment": False}}, base=ROOT / "params.yaml")
    out = tmp_path / "m"
    args = ["backbone", "--params", str(params), "--out", str(out), "--metrics", str(tmp_path / "b.json"),
            "--plots", str(tmp_path / "p"), "--device", "cpu"]
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    state = torch.load(out / "backbone.pth", weights_only=True)
    assert torch.equal(state["layer2.1.conv1.weight"], start["layer2.1.conv1.weight"])  # frozen: as loaded
    meta = json.loads((out / "meta.json").read_text())
    assert meta["init"]["sha256"] == sha256_file(init) and meta["random_init_start"] is False

    write_params(params, {"backbone": {"data": str(affectnet), "init": str(init), "sha256": "0" * 64}}, base=ROOT / "params.yaml")
    r = invoke(*args)
    assert r.exit_code == 2 and "backbone.sha256 expects" in r.output and "Traceback" not in r.output
    write_params(params, {"backbone": {"data": str(tmp_path / "nowhere")}}, base=ROOT / "params.yaml")
    r = invoke(*args)
    assert r.exit_code == 2 and "nowhere: backbone.data does not exist" in r.output


def _cli(params: Path, out: Path) -> list[str]:
    return [sys.executable, "-m", "pipeline", "backbone", "--params", str(params), "--out", str(out / "m"),
            "--metrics", str(out / "b.json"), "--plots", str(out / "p"), "--device", "cpu"]


@pytest.mark.slow
def test_resume_after_kill_9_ends_as_an_uninterrupted_run(affectnet, tmp_path):
    params = write_params(tmp_path / "params.yaml", {"backbone": {**TINY, "data": str(affectnet), "epochs": 4}}, base=ROOT / "params.yaml")
    # PYTHONPATH: the subprocesses run this checkout's code, not an installed copy of the package
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    subprocess.run(_cli(params, whole), check=True, capture_output=True, env=env, cwd=tmp_path)

    p = subprocess.Popen(_cli(params, cut), stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=tmp_path)
    for line in p.stdout:
        if line.startswith("backbone epoch   1 "):  # epoch 1 is complete: kill before epoch 2 ends
            os.kill(p.pid, signal.SIGKILL)
            break
    p.wait()
    assert p.returncode == -signal.SIGKILL
    assert (cut / "m" / "last.pt").exists() and not (cut / "m" / "meta.json").exists()
    again = subprocess.run(_cli(params, cut), check=True, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert "resuming after epoch 1" in again.stdout
    assert "backbone epoch   0 " not in again.stdout and "backbone epoch   1 " not in again.stdout

    a = torch.load(whole / "m" / "backbone.pth", weights_only=True)
    b = torch.load(cut / "m" / "backbone.pth", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ma, mb = (json.loads((d / "b.json").read_text()) for d in (whole, cut))
    for k in ("seconds", "train_images_per_s"):
        ma.pop(k), mb.pop(k)
    assert ma == mb
    ha, hb = (json.loads((d / "m" / "meta.json").read_text())["history"] for d in (whole, cut))
    assert ha == hb
    assert (cut / "p" / "plots" / "metrics" / "train" / "loss.tsv").read_text().count("\n") == 1 + 4


def test_bench_prints_one_line_per_setting(capsys):
    from pipeline.bench import backbone as bench

    lines = bench.run(BackboneConfig(batch=4), 48, devices=("cpu",), size=16, freezes=("layer3", "none"), seconds=0.2, images=1000)
    out = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert out == lines and [o["freeze"] for o in out] == ["layer3", "none"]
    for o in out:
        assert o["batch"] == 4 and o["size"] == 16 and o["train_images_per_s"] > 0 and o["eval_images_per_s"] > 0
        assert o["epoch_projected_s"] == pytest.approx(1000 / o["train_images_per_s"], abs=1)
        assert o["decode_images_per_s_per_core"] > 0


def test_split_forward_and_the_trunk_bank_equal_the_whole(affectnet):
    x = torch.randn(2, 3, SIZE, SIZE)
    for freeze in ("none", "stem", "layer2"):
        m = BackboneNet(random_init(iresnet50()), freeze).eval()
        with torch.inference_mode():
            logits, va = m(x)
            z = m.net.forward_map(x).mean(dim=(2, 3))  # the extractor's own forward, pooled
            assert torch.equal(logits, m.expression(z)) and torch.equal(va, torch.tanh(m.va(z))), freeze
    crops = T.Crops(read_split(affectnet, "val"), SIZE, cache_gb=1.0, workers=0, pin=False)
    m = BackboneNet(random_init(iresnet50()), "layer3")
    cpu = torch.device("cpu")
    bank = T.trunk_bank(m, crops, 8, cpu, None, cache_gb=1.0)
    assert bank.shape == (25, 256, 4, 4)  # layer3 output at 32 px (layer4 halves it to 2 x 2)
    assert T.evaluate(m, crops, 8, cpu, None, bank) == T.evaluate(m, crops, 8, cpu, None)
    assert T.trunk_bank(m, crops, 8, cpu, None, cache_gb=1e-6) is None  # too large for the budget
    assert T.trunk_bank(BackboneNet(iresnet50()), crops, 8, cpu, None, cache_gb=1.0) is None  # nothing frozen
