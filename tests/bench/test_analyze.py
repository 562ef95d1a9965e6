"""`bench analyze`'s raw-network figures: each extractor the models read, timed alone, and their bound."""

from __future__ import annotations

import pytest
import yaml

from pipeline.bench.analyze import networks_figures, random_init_params
from tests.helpers import ROOT

pytestmark = pytest.mark.filterwarnings("ignore::pipeline.extractors.weights.RandomInitWarning")


def test_networks_are_timed_alone_and_bound_the_command(tmp_path):
    params = random_init_params(ROOT / "params.yaml", tmp_path / "params.yaml")
    raw = yaml.safe_load(params.read_text())
    raw["model"]["modalities"] = ["vggish", "mfcc"]  # the audio kinds only: seconds, not IResNet-50's warm-up
    params.write_text(yaml.safe_dump(raw))
    got = networks_figures(params, faces_fps=200.0, min_seconds=0.2)
    assert set(got["fps"]) == {"vggish", "mfcc"} and all(r > 0 for r in got["fps"].values())
    expected = 1.0 / (1.0 / got["fps"]["vggish"] + 1.0 / got["fps"]["mfcc"] + 1.0 / 200.0)
    assert got["bound_fps"] == pytest.approx(expected, rel=0.01, abs=0.1)  # one after the other on each frame
    assert got["bound_fps"] < min(200.0, *got["fps"].values())
