"""`bench extract`'s own machinery: the repeated-trial datasets it sizes to the model, the null-model ceiling, the
stage's RunStats it reports, and the command itself through typer."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from pipeline.bench import extract as bench
from pipeline.common.config import IResNetConfig, VGGishConfig
from pipeline.extractors import build
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import FrameReader, load_index
from pipeline.stages import extract
from tests.helpers.cli import invoke

pytestmark = pytest.mark.filterwarnings("ignore::pipeline.extractors.weights.RandomInitWarning")
TRIALS = {"a": {"n": 20}, "b": {"n": 13, "fps": 30.0}, "c": {"n": 9, "audio": None}}


def test_tiled_prepared_repeats_trials(make_prepared, tmp_path):
    src = make_prepared(TRIALS, size=16)
    total = sum(t.n_frames for t in src.trials)
    tiled = bench._tiled_prepared(src.root, tmp_path / "w", 2 * total + 1, frames=True)
    assert tiled.name == "tiled3"
    index = load_index(tiled)
    assert len(index.trials) == 3 * len(TRIALS) and sum(t.n_frames for t in index.trials) == 3 * total
    assert bench._tiled_prepared(src.root, tmp_path / "w", 3 * total, frames=True) == tiled  # reused
    with FrameReader(src.root / "frames.h5") as a, FrameReader(tiled / "frames.h5") as b:
        for t in src.trials:
            np.testing.assert_array_equal(b.frames(f"{t.name}~002"), a.frames(t.name))
            np.testing.assert_array_equal(b.face(f"{t.name}~000"), a.face(t.name))
    audio = bench._tiled_prepared(src.root, tmp_path / "w", 2 * total, frames=False)
    assert audio.name == "tiled2-audio" and not (audio / "frames.h5").exists()


def test_audio_copies_share_rows_and_stats_count_them(make_prepared, tmp_path):
    src = make_prepared(TRIALS, size=16)
    tiled = bench._tiled_prepared(src.root, tmp_path / "w", 2 * 42, frames=False)
    cfg = VGGishConfig(batch=16)
    stats = extract.run("vggish", cfg, tiled, tmp_path / "v.zarr", device="cpu", progress=False)
    assert stats.rows == 2 * 42 and stats.total_s >= stats.setup_s + stats.first_batch_s > 0
    s = FeatureStore.open(tmp_path / "v.zarr")
    np.testing.assert_array_equal(s.read("a~000"), s.read("a~001"))  # same video, same frame times
    assert not s.mask("c~001").any()  # no audio
    again = extract.run("vggish", cfg, tiled, tmp_path / "v.zarr", device="cpu", progress=False)
    assert again.rows == 0  # complete: nothing to do


def test_ceiling_runs_the_stage_with_a_null_network(make_prepared, tmp_path, monkeypatch):
    """Every frame goes through the real stage with a network that returns zeros, and the rate is frames over the
    stage's wall time (a fake clock on which the stage takes 2.5 s)."""
    src = make_prepared(TRIALS, size=16)
    ex = build("iresnet", IResNetConfig(batch=8), 16, "cpu")
    runs, written = [], {}
    real_run = extract.run

    class Clock:  # stands still but for the stage's run, which takes 2.5 s of it
        now = 100.0

        @classmethod
        def perf_counter(cls):
            return cls.now

    def spy(*args, **kwargs):
        runs.append(kwargs["extractor"])
        stats = real_run(*args, **kwargs)
        Clock.now += 2.5
        store = FeatureStore.open(args[3])  # read back before the bench removes it
        written.update({t: store.read(t) for t in store.trials})
        return stats

    monkeypatch.setattr(bench.stage, "run", spy)
    monkeypatch.setattr(bench, "time", Clock)
    fps = bench._ceiling_fps(ex, src.root, tmp_path / "c.zarr")
    frames = sum(t.n_frames for t in src.trials)
    assert fps == round(frames / 2.5, 1)
    assert not (tmp_path / "c.zarr").exists()  # measured, then removed
    (null,) = runs
    assert null.module is not ex.module and null.name == ex.name and null.row_shape == ex.row_shape
    assert sorted(written) == sorted(TRIALS)
    for t in src.trials:
        assert written[t.name].shape == (t.n_frames, *ex.row_shape) and not written[t.name].any()


@pytest.mark.slow
def test_bench_extract_command(tmp_path):
    """Fresh work folder: demo + prepare are built, the trials repeated to the asked network time, one JSON line."""
    r = invoke(*["bench", "extract", "--work", str(tmp_path), "--device", "cpu", "--seconds", "3", "--only", "vggish",
              "--min-model-seconds", "15"],
    )
    assert r.exit_code == 0, r.output
    line = json.loads([x for x in r.output.splitlines() if x.startswith("{")][-1])
    assert line["extractor"] == "vggish" and line["data"].startswith("tiled") and line["data"].endswith("-audio")
    assert line["frames"] >= 15 * line["model_fps"] * 0.99
    assert line["ratio"] == pytest.approx(line["pipeline_fps"] / line["model_fps"], rel=1e-2)
    for k in ("setup_s", "first_batch_s", "steady_fps", "ceiling_fps"):
        assert line[k] is not None and line[k] >= 0


def test_model_fps_of_a_chunked_audio_kind_computes_every_chunk(make_prepared, tmp_path):
    """The network alone on the chunk windows of the data's tracks, cache cleared before each pass: every pass
    runs the network once per chunk (as the stage computes each chunk once)."""
    from pipeline.bench import stand_ins
    from pipeline.common.config import AudioModelConfig

    cfg = AudioModelConfig(model=str(stand_ins.transformers_audio(tmp_path / "w")), chunk_seconds=20.0, context_seconds=1.0)
    ex = build("wavlm", cfg, 16, "cpu")
    calls = []

    class Counted(torch.nn.Module):
        def __init__(self, net):
            super().__init__()
            self.net = net

        def forward(self, wave):
            calls.append(wave.shape[-1])
            return self.net(wave)

    ex.module.net = Counted(ex.module.net)
    index = make_prepared({"a": {"n": 1500}, "a_left": {"n": 1500, "video": "a"}})  # 60 s, two trials of one video
    fps = bench._model_fps("wavlm", ex, 16, min_seconds=0.0, min_batches=2, prepared=index.root)
    assert fps > 0 and len(calls) == 3 * (1 + 2)  # 3 chunks of 20 s per pass; one warm-up pass and two timed
