"""Fold checkpoints: written whole or not at all, loaded with weights_only, refused when foreign, truncated, or
given features other than those the model was trained on."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch

from pipeline.common.config import ModelConfig, as_dict
from pipeline.common.errors import InputError
from pipeline.nn import FusionModel
from pipeline.training import checkpoint
from pipeline.training.normalise import Normaliser

SHAPES = {"iresnet": (16, 3, 3), "vggish": (12,)}
MODEL = ModelConfig(modalities=("iresnet", "vggish"), tcn_channels=8, tcn_levels=1, d_model=16, heads=2, layers=1,
                    ff_dim=16, head_hidden=8)
STORE = {"extractor": "iresnet", "weights": "ab" * 32, "parameters": {"pooled": False, "frames_size": 48}}


def write(path: Path) -> dict:
    model = FusionModel(MODEL, SHAPES, max_len=20)
    norm = Normaliser({m: torch.zeros(s) for m, s in SHAPES.items()}, {m: torch.ones(s) for m, s in SHAPES.items()})
    doc = {
        "fold": 0, "epoch": 1, "model": as_dict(MODEL), "row_shapes": {m: list(s) for m, s in SHAPES.items()},
        "window": 20, "hop": 10, "norm": norm.state(), "state_dict": model.state_dict(),
        "features": {"iresnet": checkpoint.feature_record(STORE),
                     "vggish": checkpoint.feature_record({**STORE, "extractor": "vggish", "weights": "random-init"})},
    }
    checkpoint.save(path, doc)
    return doc


def stores() -> dict:
    return {"iresnet": {**STORE, "row_shape": [16, 3, 3]},
            "vggish": {**STORE, "extractor": "vggish", "weights": "random-init", "row_shape": [12]}}


def test_round_trip_and_no_temporary_left(tmp_path):
    write(tmp_path / "m" / "model.pt")
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["model.pt"]
    model, norm, ckpt = checkpoint.load(tmp_path / "m" / "model.pt", torch.device("cpu"))
    assert not model.training and ckpt["window"] == 20 and torch.equal(norm.std["vggish"], torch.ones(12))
    checkpoint.check_features(tmp_path / "m" / "model.pt", ckpt, stores())  # the same features: accepted


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda s: s["iresnet"].update(weights="cd" * 32), "iresnet: trained on features from weights abab.*, features/iresnet.zarr has cdcd"),
        (lambda s: s["iresnet"]["parameters"].update(pooled=True), "iresnet: extractor parameter 'pooled' is False in training, True in features/iresnet.zarr"),
        (lambda s: s["iresnet"].update(row_shape=[512]), r"iresnet: rows of shape \[512\] in features/iresnet.zarr, but the model was trained on \[16, 3, 3\]"),
        (lambda s: s["vggish"].update(extractor="mfcc"), "vggish: trained on extractor 'vggish', features/vggish.zarr has 'mfcc'"),
        (lambda s: s.pop("vggish"), "the model needs 'vggish' features"),
    ],
)
def test_other_features_are_refused(tmp_path, change, message):
    write(tmp_path / "model.pt")
    _, _, ckpt = checkpoint.load(tmp_path / "model.pt", torch.device("cpu"))
    s = copy.deepcopy(stores())
    change(s)
    with pytest.raises(InputError, match=message):
        checkpoint.check_features(tmp_path / "model.pt", ckpt, s)


def test_truncated_foreign_and_other_config_checkpoints_are_one_line_errors(tmp_path):
    write(tmp_path / "model.pt")
    data = (tmp_path / "model.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="cut.pt: not a readable checkpoint"):
        checkpoint.load(tmp_path / "cut.pt", torch.device("cpu"))
    torch.save({"state_dict": {}}, tmp_path / "foreign.pt")
    with pytest.raises(InputError, match="not a checkpoint of this pipeline version"):
        checkpoint.load(tmp_path / "foreign.pt", torch.device("cpu"))
    doc = torch.load(tmp_path / "model.pt", weights_only=True)
    doc["model"]["d_model"] = 32  # params that do not match the saved weights
    torch.save(doc, tmp_path / "other.pt")
    with pytest.raises(InputError, match="other.pt: weights do not fit its own model params"):
        checkpoint.load(tmp_path / "other.pt", torch.device("cpu"))
    with pytest.raises(InputError, match="not found"):
        checkpoint.load(tmp_path / "absent.pt", torch.device("cpu"))
