"""The modalities stage: the stores model.modalities names, by fingerprint; the same bytes whatever other stores
exist, so DVC re-runs nothing after it when an unused store is added or rebuilt."""

from __future__ import annotations

import shutil

import pytest

from pipeline.common.config import MFCCConfig
from pipeline.io.features import StoreError
from pipeline.stages import extract, modalities


def test_record_names_only_the_models_stores(small_stores, tmp_path):
    _, features = small_stores
    out = tmp_path / "m.json"
    doc = modalities.run(["iresnet", "mfcc"], features, out)
    assert doc["modalities"] == ["iresnet", "mfcc"] and list(doc["stores"]) == ["iresnet", "mfcc"]
    assert doc["stores"]["iresnet"]["row_shape"] == [8, 2, 2] and len(doc["stores"]["mfcc"]["fingerprint"]) == 64
    before = out.read_bytes()
    local = tmp_path / "features"
    shutil.copytree(features, local)
    shutil.copytree(local / "vggish.zarr", local / "another.zarr")  # a store the model does not read
    modalities.run(["iresnet", "mfcc"], local, out)
    assert out.read_bytes() == before
    modalities.run(["mfcc", "iresnet"], local, out)  # the order is the model's input order
    assert out.read_bytes() != before


def test_a_rebuilt_store_changes_the_record(make_prepared, tmp_path):
    index = make_prepared({"a": {"n": 30}})
    extract.run("mfcc", MFCCConfig(), index.root, tmp_path / "f" / "mfcc.zarr", device="cpu", progress=False)
    first = modalities.run(["mfcc"], tmp_path / "f", tmp_path / "m.json")["stores"]["mfcc"]["fingerprint"]
    extract.run("mfcc", MFCCConfig(n_mfcc=10), index.root, tmp_path / "f" / "mfcc.zarr", device="cpu", progress=False)
    assert modalities.run(["mfcc"], tmp_path / "f", tmp_path / "m.json")["stores"]["mfcc"]["fingerprint"] != first


def test_missing_store_names_the_modality(small_stores, tmp_path):
    with pytest.raises(StoreError, match="model.modalities: 'wavlm': .*wavlm.zarr: no feature store here"):
        modalities.run(["wavlm"], small_stores[1], tmp_path / "m.json")


def test_commands_name_the_params_key(small_stores, tmp_path):
    from tests.helpers.cli import invoke, write_params

    params = write_params(tmp_path / "params.yaml", {"model": {"modalities": ["iresnet", "wavlm"]}})
    r = invoke("modalities", "--features", small_stores[1], "--out", tmp_path / "m.json", "--params", params)
    assert r.exit_code == 2 and "model.modalities: 'wavlm' has no entry in features (declared: iresnet, vggish, mfcc)" in r.output
    r = invoke("extract", "wavlm", "--prepared", small_stores[0], "--out", tmp_path / "w.zarr", "--params", params)
    assert r.exit_code == 2 and "features.wavlm: no such entry (declared: iresnet, vggish, mfcc)" in r.output
    ok = write_params(tmp_path / "ok.yaml", {"model": {"modalities": ["mfcc", "vggish"]}})
    r = invoke("modalities", "--features", small_stores[1], "--out", tmp_path / "m.json", "--params", ok)
    assert r.exit_code == 0, r.output
