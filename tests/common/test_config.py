"""params.yaml -> frozen dataclasses: errors name the key; dvc.yaml only names keys that exist."""

from dataclasses import FrozenInstanceError

import pytest
import yaml

from pipeline.common import config
from pipeline.common.config import ConfigError
from tests.helpers import ROOT


def test_repository_params_load_into_every_section():
    raw = config.read_params(ROOT / "params.yaml")
    for name in config.SECTIONS:
        cfg = config.section(name, raw=raw)
        with pytest.raises(FrozenInstanceError):
            setattr(cfg, next(iter(cfg.__dataclass_fields__)), None)


def assert_config_error(tmp_path, text: str, message: str) -> None:
    """``text`` as params.yaml, every section read: a ConfigError whose message holds ``message`` (the file's
    folder left out)."""
    p = tmp_path / "params.yaml"
    p.write_text(text)
    with pytest.raises(ConfigError) as e:
        raw = config.read_params(p)
        for name in raw:
            config.section(name, p, raw)
    assert message in str(e.value).replace(str(tmp_path) + "/", "")


@pytest.mark.parametrize(
    "text, message",
    [
        ("train:\n  lr: -1\n", "params.yaml: train.lr: Input should be greater than 0"),
        ("train:\n  lrr: 0.1\n", "params.yaml: train.lrr: unknown key"),
        ("frames:\n  missing: first\n", "params.yaml: frames.missing: Input should be 'last' or 'zero'"),
        ("features:\n  iresnet:\n    weigths: x.pth\n", "params.yaml: features.iresnet.weigths: unknown key"),
        ("features:\n  vggish:\n    sha256: abc\n", "features.vggish.sha256: Value error, must be 64 hexadecimal"),
        ("split:\n  folds: [0, 6]\n", "folds must be distinct values in 0..5"),
        ("trian:\n  lr: 1\n", "unknown section 'trian'"),
        ("model:\n  d_model: 30\n  heads: 4\n", "d_model (30) must be divisible by heads (4)"),
        ("train:\n  window: 100\n  hop: 200\n", "hop (200) must not exceed window (100)"),
        ("train:\n  bank: gpu\n", "params.yaml: train.bank: Input should be 'auto', 'device', 'pinned' or 'mmap'"),
        ("model:\n  zero_missing: maybe\n", "params.yaml: model.zero_missing: Input should be a valid boolean"),
        ("train:\n  epochs: ten\n", "params.yaml: train.epochs: Input should be a valid integer"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, message):
    assert_config_error(tmp_path, text, message)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ConfigError, match="file not found"):
        config.read_params(tmp_path / "nope.yaml")
    (tmp_path / "bad.yaml").write_text("train: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        config.read_params(tmp_path / "bad.yaml")


def test_empty_section_takes_documented_defaults(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("frames:\n")
    assert config.section("frames", p) == config.FramesConfig(size=48, missing="last")


def _lookup(tree: dict, dotted: str):
    node = tree
    for part in dotted.split("."):
        assert isinstance(node, dict) and part in node, f"dvc.yaml names params key {dotted!r}, absent from params.yaml"
        node = node[part]
    return node


def test_dvc_yaml_names_only_existing_params_keys():
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    stages = yaml.safe_load((ROOT / "dvc.yaml").read_text())["stages"]
    keys = []
    for name, stage in stages.items():
        body = stage.get("do", stage)
        items = stage.get("foreach")
        if isinstance(items, str) and items.startswith("${"):  # foreach over a params section, e.g. ${features}
            items = _lookup(params, items[2:-1])
        for key in body.get("params", []):
            if "${key}" in str(key):
                keys += [key.replace("${key}", k) for k in items]
            else:
                keys.append(key)
    assert keys
    for key in keys:
        _lookup(params, key)


@pytest.mark.parametrize(
    "text, message",
    [
        ("features:\n  wavlm:\n    model: /m\n", "params.yaml: features.wavlm.kind: missing (one of: iresnet, vggish"),
        ("features:\n  w:\n    kind: whisper\n    model: /m\n", "features.w.kind: unknown kind 'whisper' (known: iresnet"),
        ("features:\n  w:\n    kind: transformers-audio\n", "params.yaml: features.w.model: Field required"),
        ("features:\n  w:\n    kind: onnx-audio\n    model: m\n    tokens: true\n", "features.w.tokens: unknown key"),
        ("features:\n  w:\n    kind: timm-image\n    model: m\n    layers: []\n", "features.w.layers: Value error"),
        ("features:\n  w-1:\n    kind: timm-image\n", "features.w-1: a feature name must be letters, digits and _"),
        ("model:\n  modalities: [iresnet, iresnet]\n", "modalities must be a non-empty list without repeats"),
    ],
)
def test_bad_feature_entries_name_the_key(tmp_path, text, message):
    assert_config_error(tmp_path, text, message)


def test_features_are_a_mapping_in_params_order(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("features:\n  wavlm:\n    kind: transformers-audio\n    model: /m\n    layers: [-1, -2]\n  mfcc:\n")
    f = config.section("features", p)
    assert list(f) == ["wavlm", "mfcc"] and f["wavlm"].layers == (-1, -2) and f.mfcc.n_mfcc == 13
    assert isinstance(f["wavlm"], config.AudioModelConfig) and f["wavlm"].chunk_seconds == 20.0
    assert list(config.FeaturesConfig()) == ["iresnet", "vggish", "mfcc"]  # no entries: the paper's three
    model = config.ModelConfig(modalities=("wavlm", "clip"))
    with pytest.raises(ConfigError, match=r"model.modalities: 'clip' has no entry in features \(declared: wavlm, mfcc\)"):
        config.check_modalities(model, f)
