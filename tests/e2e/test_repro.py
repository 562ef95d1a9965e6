"""End to end: `dvc repro` of this repository's own dvc.yaml on a shrunken demo, in a temporary git repository.

The copy holds the project's files as git sees them (tracked plus untracked-not-ignored), so the test runs the
code under test, through the real `python -m pipeline` commands that dvc.yaml names.
"""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.helpers import backbones
from tests.helpers.dvc_repo import SMALL, make_repo, sh


@pytest.fixture(scope="module")
def repo(tmp_path_factory) -> Path:
    dst = make_repo(tmp_path_factory.mktemp("e2e") / "repo")
    git = ["git", "-c", "user.name=e2e", "-c", "user.email=e2e@localhost"]
    sh([sys.executable, "-m", "dvc", "repro"], dst)
    head = sh(["git", "rev-parse", "HEAD"], dst).strip()
    sh([*git, "add", "-A"], dst)
    sh([*git, "commit", "-qm", "first run"], dst)  # the baseline `dvc metrics diff` compares with
    (dst.parent / "made_by").write_text(head)
    return dst


def test_repro_writes_metrics_and_submission(repo):
    cv = json.loads((repo / "metrics" / "cv.json").read_text())
    # random-init backbones are labelled where the numbers are (MFCC has no weights, so it is not one of them), and so
    # is the demo's IResNet, which the backbone stage fine-tunes from random init
    assert cv["random_init_backbones"] == ["vggish"]
    assert cv["backbones"] == "random-init: vggish; fine-tuned from random init: iresnet"
    (prov,) = cv["provenance"]
    assert prov["code"]["code_commit"] == (repo.parent / "made_by").read_text()  # the commit dvc repro ran
    backbone = json.loads((repo / "models" / "backbone" / "meta.json").read_text())
    assert {m: f["weights"] for m, f in prov["features"].items()} == {
        "iresnet": backbone["backbone_sha256"], "mfcc": "none", "vggish": "random-init"}
    assert prov["features"]["iresnet"]["parameters"]["frames_size"] == SMALL["frames"]["size"]
    assert prov["params"]["model"]["d_model"] == SMALL["model"]["d_model"] and prov["params"]["train"]["epochs"] == 2
    assert prov["params"]["split"] == {"scheme": "official", "n_folds": 3, "seed": 0, "folds": [0, 1, 2]}
    index = json.loads((repo / "data" / "prepared" / "index.json").read_text())
    tests = [t for t in index["trials"] if t["split"] == "test"]
    with open(repo / "predictions" / "test.txt") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["image_location", "valence", "arousal"]
    expected = [f"{t['name']}/{n:05d}.jpg" for t in tests for n in t["frames"]]
    assert [r[0] for r in rows[1:]] == expected
    assert all(-1 <= float(v) <= 1 and -1 <= float(a) <= 1 for _, v, a in rows[1:])
    for k in (0, 1, 2):
        assert (repo / "models" / f"fold{k}").is_dir() and (repo / "metrics" / f"fold{k}.json").is_file()


def test_metrics_show_is_a_short_table_with_detail_on_request(repo):
    """`dvc metrics show`: one row, CCC mean and std over folds, raw and smoothed, and the random-init label; per
    fold and per training run on request."""
    shown = json.loads(sh([sys.executable, "-m", "dvc", "metrics", "show", "--json"], repo).splitlines()[0])
    files = shown[""]["data"]
    assert list(files) == ["metrics/cv.json"]
    cv = files["metrics/cv.json"]["data"]
    numbers = {f"{b}.{k}{s}" for b in ("raw", "smoothed") for k in ("valence", "arousal", "mean") for s in ("", "_std")}
    assert {f"{b}.{k}" for b in ("raw", "smoothed") for k in cv[b]} == numbers
    assert set(cv) == {"raw", "smoothed", "n_folds", "backbones"}
    table = sh([sys.executable, "-m", "dvc", "metrics", "show"], repo).splitlines()
    assert len(table) == 2 and table[1].startswith("metrics/cv.json") and "random-init: vggish; fine-tuned from random init: iresnet" in table[1]
    folds = sh([sys.executable, "-m", "dvc", "metrics", "show", "metrics/cv_folds"], repo).splitlines()
    assert [r.split()[0] for r in folds[1:]] == [f"metrics/cv_folds/fold{k}.json" for k in (0, 1, 2)]
    assert "raw.mean" in folds[0].split() and "smoothed.arousal" in folds[0].split()
    fold0 = sh([sys.executable, "-m", "dvc", "metrics", "show", "metrics/fold0.json"], repo).splitlines()
    assert len(fold0) == 2 and "ccc_mean" in fold0[0].split()


def test_validation_curves_are_dvc_plots(repo):
    for k in (0, 1, 2):
        assert (repo / "metrics" / "val_curves" / f"fold{k}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    out = sh([sys.executable, "-m", "dvc", "plots", "show", "--json", "-o", str(repo.parent / "plots")], repo)
    shown = json.loads(out[out.index("{"):])["data"]
    for k in (0, 1, 2):
        (image,) = shown[f"metrics/val_curves/fold{k}.png"]
        assert image["type"] == "image" and Path(image["url"]).is_file()
    assert "metrics/fold0/plots/metrics/val/ccc_mean.tsv" in shown  # the per-epoch curves stay beside them


def test_noop_repro_runs_nothing_but_scan(repo):
    out = sh([sys.executable, "-m", "dvc", "repro"], repo)
    ran = [line for line in out.splitlines() if line.startswith("Running stage")]
    assert ran == ["Running stage 'scan':"], out


def test_a_clone_without_the_stores_lock_files_is_up_to_date(repo, tmp_path):
    """The extract stage leaves `features/<name>.zarr.lock` beside each store; a clone (a `dvc pull`, a sweep's
    workspace) has none. `.dvcignore` keeps them out of the `features` folder `modalities` depends on."""
    locks = sorted((repo / "features").glob("*.zarr.lock"))
    assert locks, "the stores' lock files are where the test expects them"
    for f in locks:
        f.rename(tmp_path / f.name)
    try:
        status = sh([sys.executable, "-m", "dvc", "status", "--json"], repo)
        assert set(json.loads(status.splitlines()[-1])) == {"scan"}, status
    finally:
        for f in locks:
            (tmp_path / f.name).rename(f)


def test_changing_lr_reruns_only_training_and_after(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["train"]["lr"] = params["train"]["lr"] * 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    out = sh([sys.executable, "-m", "dvc", "repro"], repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert ran == {"scan", "train@0", "train@1", "train@2", "evaluate", "predict"}, out
    # `dvc metrics diff` compares the short table with the last commit
    diff = json.loads(sh([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], repo).splitlines()[0])
    changed = diff["metrics/cv.json"]
    assert {"raw.mean", "raw.valence", "smoothed.mean"} <= set(changed), changed
    assert changed["raw.mean"]["new"] != changed["raw.mean"]["old"]
    assert changed["raw.mean"]["diff"] == pytest.approx(changed["raw.mean"]["new"] - changed["raw.mean"]["old"])


def test_a_new_backbone_reextracts_iresnet_and_retrains_only(repo):
    params = yaml.safe_load((repo / "params.yaml").read_text())
    assert params["features"]["iresnet"]["weights"] == "models/backbone/backbone.pth"
    params["backbone"]["lr"] = params["backbone"]["lr"] / 2
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    stamps = {m: (repo / "features" / f"{m}.zarr" / "zarr.json").stat().st_mtime_ns for m in ("vggish", "mfcc")}
    out = sh([sys.executable, "-m", "dvc", "repro"], repo)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    # every extract stage depends on backbone.pth (dvc.yaml says why); the audio stores' fingerprints are unchanged,
    # so their runs rewrite nothing
    assert ran == {"scan", "backbone", "extract@iresnet", "extract@vggish", "extract@mfcc", "modalities",
                   "train@0", "train@1", "train@2", "evaluate", "predict"}, out
    assert "extract vggish: features/vggish.zarr is complete" in out and "extract mfcc: features/mfcc.zarr is complete" in out
    assert stamps == {m: (repo / "features" / f"{m}.zarr" / "zarr.json").stat().st_mtime_ns for m in ("vggish", "mfcc")}


def _status(repo: Path) -> set[str]:
    """The stages `dvc status` lists as changed."""
    return set(json.loads(sh([sys.executable, "-m", "dvc", "status", "--json"], repo).splitlines()[-1]))


def _ran(out: str) -> set[str]:
    return {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}


@pytest.mark.slow
def test_a_new_feature_entry_extracts_that_store_only(repo, tmp_path_factory):
    """Two tiny random-init models saved as a user's local folders (a 2-layer WavLM, a 2-layer ViT): declaring them
    adds extract@wavlm and extract@vit and trains nothing, since model.modalities does not name them yet."""
    models = tmp_path_factory.mktemp("user-models")
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["features"]["wavlm"] = {"kind": "transformers-audio", "model": str(backbones.transformers_audio(models / "wavlm")),
                                   "sha256": None, "layers": [-1], "dtype": "float16"}
    params["features"]["vit"] = {"kind": "transformers-image", "model": str(backbones.transformers_image(models / "vit")),
                                 "tokens": True, "dtype": "float16"}
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert _status(repo) == {"scan", "extract@wavlm", "extract@vit"}
    out = sh([sys.executable, "-m", "dvc", "repro"], repo)
    assert _ran(out) == {"scan", "extract@wavlm", "extract@vit", "modalities"}, out
    assert "Stage 'train@0' didn't change, skipping" in out


@pytest.mark.slow
def test_changing_modalities_retrains_and_extracts_nothing(repo):
    """After the entries of the test above: naming them in model.modalities re-trains, extracts nothing."""
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["model"]["modalities"] = ["iresnet", "vggish", "mfcc", "wavlm", "vit"]
    (repo / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    # train@<k> reads `model`; the modalities stage reads model.modalities; evaluate and predict follow them
    assert _status(repo) == {"scan", "modalities", "train@0", "train@1", "train@2"}
    out = sh([sys.executable, "-m", "dvc", "repro"], repo)
    assert _ran(out) == {"scan", "modalities", "train@0", "train@1", "train@2", "evaluate", "predict"}, out
    cv = json.loads((repo / "metrics" / "cv.json").read_text())
    (prov,) = cv["provenance"]
    assert set(prov["features"]) == {"iresnet", "vggish", "mfcc", "wavlm", "vit"}
    assert prov["features"]["wavlm"]["parameters"]["kind"] == "transformers-audio"
    meta = json.loads((repo / "models" / "fold0" / "meta.json").read_text())
    assert meta["modalities"] == params["model"]["modalities"]
    ckpt = torch.load(repo / "models" / "fold0" / "model.pt", weights_only=True)
    assert ckpt["row_shapes"]["vit"] == [32, 4, 4] and ckpt["row_shapes"]["wavlm"] == [32]
    diff = json.loads(sh([sys.executable, "-m", "dvc", "metrics", "diff", "--json"], repo).splitlines()[0])
    assert "raw.mean" in diff["metrics/cv.json"]
