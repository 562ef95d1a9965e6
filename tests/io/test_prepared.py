"""The prepared-data contract (pipeline/io/prepared.py): index round trip, labels.h5 apart from frames.h5, digests
that describe what is stored, frame times, and the format version."""

import json

import h5py
import numpy as np
import pytest

from pipeline.common.errors import InputError
from pipeline.io.prepared import (
    INDEX_FORMAT,
    FrameReader,
    audio_sha256,
    frames_sha256,
    load_index,
    read_labels,
)
from pipeline.io.timebase import Timestamps
from tests.helpers.media import read_wav

SPEC = {
    "a": {"n": 30, "split": "train"},
    "b_left": {"n": 20, "video": "b", "split": "val", "offset": -0.25},
    "b_right": {"n": 20, "video": "b", "split": "val", "offset": -0.25},
    "c": {"n": 10, "split": "test", "audio": None},
    "vfr": {"n": 4, "split": "test", "timestamps": Timestamps((1, 600), ((20, 2), (25, 1)))},
}


def test_fixture_round_trip_labels_and_digests(make_prepared, tmp_path):
    idx = make_prepared(SPEC)
    prepared = tmp_path / "prepared"
    assert json.loads((prepared / "index.json").read_text())["format"] == INDEX_FORMAT == "va-pipeline-prepared/2"
    assert load_index(prepared) == idx
    with h5py.File(prepared / "frames.h5", "r") as h5:
        assert all("labels" not in h5[t] for t in h5)  # labels live in labels.h5 only
    labels = read_labels(prepared, ["a", "b_left"])
    assert labels["a"].shape == (30, 2) and labels["a"].dtype == np.float32
    with pytest.raises(InputError, match="labels.h5: trial 'c' has no labels"):
        read_labels(prepared, ["c"])
    with FrameReader(prepared / "frames.h5") as r:
        for t in idx.trials:
            assert t.frames_sha256 == frames_sha256(r.frames(t.name), r.face(t.name))
    v = idx.videos["b"]
    assert v.audio_offset == -0.25 and v.audio_sha256 == audio_sha256(read_wav(idx.audio_path("b")))
    assert read_wav(idx.audio_path("a")).shape == (30 * 640,)


def test_trial_times_constant_and_variable_rate(make_prepared):
    idx = make_prepared(SPEC)
    np.testing.assert_allclose(idx.trial("a").times[:3], [0.0, 0.04, 0.08])  # (f - 1) / 25
    np.testing.assert_allclose(idx.trial("vfr").times, [0.0, 20 / 600, 40 / 600, 65 / 600])
    assert idx.trial("vfr").times.dtype == np.float64


def test_old_format_is_refused_with_the_fix(make_prepared, tmp_path):
    make_prepared({"a": {"n": 3}})
    path = tmp_path / "prepared" / "index.json"
    doc = json.loads(path.read_text())
    doc["format"] = "va-pipeline-prepared/1"
    path.write_text(json.dumps(doc))
    with pytest.raises(InputError, match="re-run `python -m pipeline prepare`"):
        load_index(tmp_path / "prepared")
