"""The extract stage end to end on tiny prepared folders: row alignment, masks, padding rules, batching across
trials, resume after a crash, --shard, stale-store rebuild, and the real media."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from pipeline.common.config import IResNetConfig, MFCCConfig, VGGishConfig
from pipeline.extractors import build
from pipeline.extractors import mfcc as M
from pipeline.extractors.audio import AudioSource
from pipeline.extractors.weights import RandomInitWarning
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import audio_sha256, load_index
from pipeline.io.timebase import Timestamps, frame_times
from pipeline.stages import extract

torch.set_num_threads(2)
pytestmark = pytest.mark.filterwarnings("ignore::pipeline.extractors.weights.RandomInitWarning")

TRIALS = {
    "a": {"n": 50},  # a 50-frame trial shares its batch with the next
    "v_left": {"n": 70, "video": "v", "audio": 1.0},  # audio (1 s) shorter than the video (2.8 s)
    "v_right": {"n": 70, "video": "v", "audio": 1.0},
    "silent": {"n": 30, "audio": None, "fps": 30.0},  # no audio stream
    "test": {"n": 90, "split": "test", "fps": 30.0},
}


def _run(name, cfg, prepared, out, **kw):
    extract.run(name, cfg, prepared, out, device="cpu", progress=False, **kw)
    return FeatureStore.open(out)


def test_mfcc_rows_masks_and_padding(make_prepared, tmp_path):
    index = make_prepared(TRIALS)
    s = _run("mfcc", MFCCConfig(), index.root, tmp_path / "mfcc.zarr")
    assert s.attrs["extractor"] == "mfcc" and s.dim == 39 and s.attrs["fps"]["silent"] == 30.0
    assert s.attrs["parameters"]["n_mfcc"] == 13 and s.attrs["code_version"] and not s.random_init
    for t in index.trials:
        assert s.read(t.name).shape == (t.n_frames, 39) and s.read(t.name).dtype == np.float32
    # rows equal the extractor called directly at the frame times
    a = index.trial("a")
    src = AudioSource(index.audio_path("a"))
    np.testing.assert_array_equal(s.read("a"), M.mfcc_at(src, frame_times(a.frame_numbers, a.fps), M.MFCCParams()))
    # two trials of one video: same rows; audio shorter than the video: mask false and the last row repeated
    np.testing.assert_array_equal(s.read("v_left"), s.read("v_right"))
    m = s.mask("v_left")
    assert m[:25].all() and not m[25:].any()  # 1 s of audio at 25 fps: frames 1..25
    np.testing.assert_array_equal(s.read("v_left")[25:], np.repeat(s.read("v_left")[24:25], 45, axis=0))
    # no audio: zero rows and an all-false mask
    assert not s.mask("silent").any() and not s.read("silent").any()


def test_mfcc_alignment_with_known_envelope(make_prepared, tmp_path):
    """Each video frame gets its own amplitude over +-50 ms of the same noise snippet; MFCC c0 (orthonormal DCT
    of the dB mel bands) must then differ by sqrt(n_mels) * 20 log10(a_i / a_j) between frames."""
    index = make_prepared({"e": {"n": 20, "fps": 10.0, "audio": 2.0}})
    rng = np.random.default_rng(0)
    amp = rng.uniform(0.1, 1.0, 20)
    snippet = rng.normal(size=1600)
    s = np.arange(2 * 16000)
    seg = np.minimum((s + 800) // 1600, 19)  # frame f (time (f-1)/10 s) owns samples t +- 50 ms
    sf.write(index.audio_path("e"), (amp[seg] * snippet[(s + 800) % 1600] * 0.5).astype(np.float32), 16000, subtype="FLOAT")
    st = _run("mfcc", MFCCConfig(), index.root, tmp_path / "m.zarr")
    c0 = st.read("e")[:, 0].astype(np.float64)
    expected = np.sqrt(40) * 20 * np.log10(amp / amp[5])
    np.testing.assert_allclose((c0 - c0[5])[1:-1], expected[1:-1], atol=0.05)  # first/last: zero padding


def test_audio_of_shared_video_and_batches_cross_trials(make_prepared, tmp_path):
    index = make_prepared(TRIALS)
    st = FeatureStore.open_or_create(
        tmp_path / "x.zarr", extractor="x", row_shape=(1,), dtype="float32",
        trials={t.name: t.n_frames for t in index.trials}, fps={}, fingerprint={}, n_buckets=1,
    )
    batches = list(extract.plan_batches(st, st.pending(), 64))
    assert [sum(p.hi - p.lo for p in b) for b in batches] == [64, 64, 64, 64, 54]
    assert len(batches[0]) == 2  # the 50-frame trial does not waste a batch
    s = _run("vggish", VGGishConfig(batch=32), index.root, tmp_path / "v.zarr")
    assert s.random_init and s.attrs["weights"] == "random-init" and s.row_shape == (128,)
    np.testing.assert_allclose(s.read("v_left").astype(np.float32), s.read("v_right").astype(np.float32), atol=1e-3)
    assert not s.read("silent").any() and not s.mask("silent").any()
    np.testing.assert_array_equal(s.read("v_left")[26:], np.repeat(s.read("v_left")[24:25], 44, axis=0)[:44])


def test_iresnet_store_and_face_mask(make_prepared, tmp_path):
    index = make_prepared({"a": {"n": 20}, "b": {"n": 9}}, size=16)
    import h5py

    with h5py.File(index.root / "frames.h5", "r+") as h5:
        h5["a/face"][3:5] = False
    with pytest.warns(RandomInitWarning):
        s = _run("iresnet", IResNetConfig(batch=8), index.root, tmp_path / "i.zarr")
    assert s.row_shape == (512, 1, 1) and s.read("a").dtype == np.float16  # 16 px -> 1x1 map
    assert s.mask("a").sum() == 18 and not s.mask("a")[3:5].any()
    assert np.isfinite(s.read("a").astype(np.float32)).all()


def _crash_and_resume(name, cfg, index, tmp_path, monkeypatch, after=12):
    ref = _run(name, cfg, index.root, tmp_path / "ref.zarr")
    calls = {"n": 0}
    real = FeatureStore.append

    def dying(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == after:
            raise KeyboardInterrupt("simulated crash")
        return real(self, *a, **k)

    monkeypatch.setattr(FeatureStore, "append", dying)
    with pytest.raises(KeyboardInterrupt):
        _run(name, cfg, index.root, tmp_path / "s.zarr")
    monkeypatch.setattr(FeatureStore, "append", real)
    partial = FeatureStore.open(tmp_path / "s.zarr", require_complete=False)
    done = [t for t in partial.trials if partial.is_complete(t)]
    assert 0 < len(done) < len(partial.trials)
    s = _run(name, cfg, index.root, tmp_path / "s.zarr")
    for t in ref.trials:  # the resumed run cuts the same batches: bit for bit, BLAS / oneDNN kernels included
        np.testing.assert_array_equal(s.read(t), ref.read(t))
        np.testing.assert_array_equal(s.mask(t), ref.mask(t))


def test_a_resumed_run_cuts_the_batches_of_an_uninterrupted_one(make_prepared, tmp_path):
    """Kernels may round differently for another batch (cuDNN picks algorithms by shape): a resumed run computes
    the uninterrupted run's batches, rows already on disk included, and writes only the new rows."""
    index = make_prepared({f"t{i}": {"n": 70 + 23 * i} for i in range(4)})
    ex = build("mfcc", MFCCConfig(), 16, "cpu")
    store = extract.open_store(ex, index, tmp_path / "s.zarr")
    full = list(extract.plan_batches(store, store.write_order(), 50))
    first = store.write_order()[0]
    store.append(first, 0, np.zeros((64, *ex.row_shape)), np.ones(64, bool))  # one chunk on disk, then a crash
    store.flush()
    store = extract.open_store(ex, index, tmp_path / "s.zarr")
    resumed = list(extract.plan_batches(store, store.write_order(), 50))
    strip = lambda b: [(p.trial, p.lo, p.hi) for p in b]  # noqa: E731
    assert [strip(b) for b in resumed] == [strip(b) for b in full[1:]]  # rows 0..49 are done: batch 0 is skipped
    assert resumed[0][0].first_new == 64 and resumed[0][0].lo == 50  # rows 50..63 computed again, not written


def test_resume_after_crash_equals_uninterrupted_run_mfcc(make_prepared, tmp_path, monkeypatch):
    index = make_prepared({f"t{i}": {"n": 90 + 37 * i, "fps": 25.0 + i} for i in range(6)})
    _crash_and_resume("mfcc", MFCCConfig(), index, tmp_path, monkeypatch, after=3)


@pytest.mark.slow
def test_resume_after_crash_equals_uninterrupted_run_iresnet(make_prepared, tmp_path, monkeypatch):
    index = make_prepared({f"t{i}": {"n": 20 + 9 * i, "fps": 25.0 + i} for i in range(6)}, size=16)
    _crash_and_resume("iresnet", IResNetConfig(batch=8, pooled=True, dtype="float32"), index, tmp_path, monkeypatch, after=8)


def test_shards_fill_one_store(make_prepared, tmp_path):
    index = make_prepared({f"t{i}": {"n": 300 + 50 * i} for i in range(5)})
    ref = _run("mfcc", MFCCConfig(), index.root, tmp_path / "ref.zarr")
    for i in range(3):
        extract.run("mfcc", MFCCConfig(), index.root, tmp_path / "s.zarr", shard=(i, 3), device="cpu", progress=False)
    s = FeatureStore.open(tmp_path / "s.zarr")
    for t in ref.trials:
        np.testing.assert_allclose(s.read(t), ref.read(t), rtol=1e-5, atol=1e-5)


def _set_video(prepared: Path, video: str, **fields) -> None:
    """Change a video's entry in index.json, as a new `prepare` run would write it."""
    path = prepared / "index.json"
    doc = json.loads(path.read_text())
    doc["videos"][video].update(fields)
    path.write_text(json.dumps(doc))


def test_stale_store_rebuilds_and_matching_store_resumes(make_prepared, tmp_path, capsys):
    index = make_prepared({"a": {"n": 30}})
    out = tmp_path / "m.zarr"
    _run("mfcc", MFCCConfig(), index.root, out)
    stamp = (out / "zarr.json").stat().st_mtime_ns
    _run("mfcc", MFCCConfig(), index.root, out)  # nothing to do
    assert (out / "zarr.json").stat().st_mtime_ns == stamp and "complete" in capsys.readouterr().err
    before = _run("mfcc", MFCCConfig(n_mfcc=10), index.root, out).read("a")  # parameters changed: rebuilt
    assert before.shape == (30, 30)
    wav = index.audio_path("a")
    silence = np.zeros(16000, np.float32)
    sf.write(wav, silence, 16000, subtype="FLOAT")  # prepared audio changed (and recorded so): rebuilt
    _set_video(index.root, "a", audio_sha256=audio_sha256(silence))
    after = _run("mfcc", MFCCConfig(n_mfcc=10), index.root, out).read("a")
    assert not np.array_equal(after, before) and np.ptp(after[:20], axis=0).max() < 1e-6  # silence: constant rows
    stamp = (out / "zarr.json").stat().st_mtime_ns
    _set_video(index.root, "a", audio_offset=0.1)  # the same audio heard 0.1 s later: other rows
    moved = _run("mfcc", MFCCConfig(n_mfcc=10), index.root, out)
    assert (out / "zarr.json").stat().st_mtime_ns != stamp and not moved.mask("a")[:3].any()


def test_dates_do_not_rebuild_a_store_content_does(make_prepared, tmp_path, capsys):
    """A `touch`, `dvc checkout` or copy of frames.h5 or the WAVs changes dates only: no store rebuilds. New crops
    rebuild the frames store only; new audio the audio stores only."""
    index = make_prepared({"a": {"n": 30}, "b": {"n": 20, "fps": 30.0}})
    out = tmp_path / "m.zarr"
    _run("mfcc", MFCCConfig(), index.root, out)
    stamp = (out / "zarr.json").stat().st_mtime_ns
    for f in [index.root / "frames.h5", *sorted((index.root / "audio").iterdir())]:
        os.utime(f, ns=(10**18, 10**18))
    _run("mfcc", MFCCConfig(), index.root, out)
    assert (out / "zarr.json").stat().st_mtime_ns == stamp and "complete" in capsys.readouterr().err
    store = FeatureStore.open(out)
    assert "provenance" in store.attrs and "provenance" not in json.dumps(store.attrs["fingerprint"])

    copy = tmp_path / "copy"
    shutil.copytree(index.root, copy)  # new dates everywhere, same content
    mfcc = build("mfcc", MFCCConfig(), index.frames_size, "cpu")
    iresnet = replace(mfcc, name="iresnet", kind="frames")  # fingerprint() looks at the kind, not the network
    for ex in (mfcc, iresnet):
        assert extract.fingerprint(ex, load_index(copy)) == extract.fingerprint(ex, index)

    copied = load_index(copy)
    new_frames = replace(copied, trials=tuple(replace(t, frames_sha256="0" * 64) if t.name == "a" else t for t in copied.trials))
    assert extract.fingerprint(iresnet, new_frames) != extract.fingerprint(iresnet, index)
    assert extract.fingerprint(mfcc, new_frames) == extract.fingerprint(mfcc, index)
    new_audio = replace(index, videos={**index.videos, "a": replace(index.videos["a"], audio_sha256="1" * 64)})
    assert extract.fingerprint(mfcc, new_audio) != extract.fingerprint(mfcc, index)
    assert extract.fingerprint(iresnet, new_audio) == extract.fingerprint(iresnet, index)


def test_frame_times_and_audio_offset_reach_the_rows(make_prepared, tmp_path):
    """A late track (offset +0.2 s): the first 5 frames (t < 0.2 s at 25 fps) have no audio row; frame 6 reads the
    track's first sample. A variable-rate video: rows follow the recorded frame times."""
    stamps = Timestamps((1, 100), ((4, 5), (10, 4)))  # 10 frames: 0, 0.04 .. 0.2, then 0.3 .. 0.6 s
    index = make_prepared({
        "late": {"n": 30, "offset": 0.2, "audio": 1.0},
        "vfr": {"n": 10, "audio": 1.0, "timestamps": stamps},
    })
    s = _run("mfcc", MFCCConfig(), index.root, tmp_path / "m.zarr")
    m = s.mask("late")
    assert not m[:5].any() and m[5:].all() and not s.read("late")[:5].any()
    src = AudioSource(index.audio_path("late"))
    t = index.trial("late")
    np.testing.assert_array_equal(s.read("late")[5:], M.mfcc_at(src, t.times[5:] - 0.2, M.MFCCParams()))
    v = index.trial("vfr")
    np.testing.assert_allclose(v.times, [0, 0.04, 0.08, 0.12, 0.16, 0.2, 0.3, 0.4, 0.5, 0.6])
    np.testing.assert_array_equal(s.read("vfr"), M.mfcc_at(AudioSource(index.audio_path("vfr")), v.times, M.MFCCParams()))


def test_demo_sized_store_has_few_files(make_prepared, tmp_path):
    index = make_prepared({f"t{i:03d}": {"n": 12, "audio": 0.5} for i in range(120)})
    s = _run("mfcc", MFCCConfig(), index.root, tmp_path / "m.zarr")
    assert len(list(s.files())) <= 100


# --------------------------------------------------------------------------------------------- real media
def _prepare_realmedia(realmedia: Path, root: Path, out: Path, n_crops: int = 6) -> None:
    """`prepare` on real videos (links, never copies) listed as test trials, with crops made from their first frames
    (crop content does not matter here; timing and audio do)."""
    import itertools

    from PIL import Image

    from pipeline.common.config import DataConfig, FramesConfig
    from pipeline.io.media import decode_frames
    from pipeline.stages import prepare

    picks = [
        realmedia / "videos" / "videoretalking_face_1.mp4",  # 22.13 fps on average: a 30 fps clock with drops
        realmedia / "videos" / "pyfeat_WolfgangLanger_Pexels.mp4",  # digital silence
        realmedia / "videos" / "pyfeat_face_noface.mov",  # audio starts 2.43 s after the picture
        realmedia / "videos_noaudio" / "musetalk_sun.mp4",  # no audio stream
    ]
    (root / "videos").mkdir(parents=True)
    for p in picks:
        os.symlink(p, root / "videos" / f"{p.stem}.mp4")
        (root / "cropped_aligned" / p.stem).mkdir(parents=True)
        for i, frame in enumerate(itertools.islice((rgb for _, rgb in decode_frames(p)), n_crops)):
            Image.fromarray(frame).resize((32, 32)).save(root / "cropped_aligned" / p.stem / f"{i + 1:05d}.jpg")
    (root / "test_set.txt").write_text("".join(f"{p.stem}\n" for p in picks))
    prepare.run(DataConfig(root=str(root)), FramesConfig(size=16), out, jobs=2)


@pytest.mark.realmedia
@pytest.mark.slow
def test_realmedia_videos_go_through(realmedia, tmp_path):
    from pipeline.io.timebase import audio_mask, audio_source_rows, track_seconds
    from tests.helpers.media import read_wav

    _prepare_realmedia(realmedia, tmp_path / "root", tmp_path / "prepared")
    index = load_index(tmp_path / "prepared")
    for name, cfg in (("mfcc", MFCCConfig()), ("vggish", VGGishConfig()), ("iresnet", IResNetConfig(pooled=True, batch=64))):
        s = _run(name, cfg, tmp_path / "prepared", tmp_path / f"{name}.zarr")
        for t in index.trials:
            rows, mask = s.read(t.name), s.mask(t.name)
            assert rows.shape[0] == t.n_frames and np.isfinite(rows.astype(np.float32)).all(), (name, t.name)
            if name == "iresnet":
                assert mask[:6].all() and not mask[6:].any()
                continue
            v = index.videos[t.video]
            n = len(read_wav(index.audio_path(t.video))) if v.has_audio else 0
            expected = audio_mask(track_seconds(t.times, v.audio_offset), n)
            np.testing.assert_array_equal(mask, expected)
            source = audio_source_rows(expected)
            assert not rows[source < 0].any()  # before the track, or no audio at all: zeros
            np.testing.assert_array_equal(rows[source >= 0], rows[source[source >= 0]])  # after it: the last row
            if v.has_audio:
                assert mask.mean() > 0.3
    mov = index.trial("pyfeat_face_noface")
    offset = index.videos["pyfeat_face_noface"].audio_offset
    assert offset == pytest.approx(2.43, abs=1e-3)
    first_heard = int(np.argmax(FeatureStore.open(tmp_path / "mfcc.zarr").mask(mov.name)))
    assert mov.times[first_heard - 1] < offset - 0.5 / 16000 <= mov.times[first_heard]  # the first frame heard
    assert index.trial("videoretalking_face_1").timestamps is not None


@pytest.mark.parametrize(
    "name, cfg", [("mfcc", MFCCConfig()), ("vggish", VGGishConfig(batch=16)), ("iresnet", IResNetConfig(batch=8))]
)
def test_worker_processes_write_the_same_store_as_the_reader_thread(make_prepared, tmp_path, name, cfg):
    index = make_prepared({f"t{i}": {"n": 40 + 11 * i, "fps": 25.0 + i, "video": f"v{i // 2}"} for i in range(5)})
    ref = _run(name, cfg, index.root, tmp_path / "ref.zarr")
    extract.run(name, cfg, index.root, tmp_path / "w.zarr", device="cpu", progress=False, workers=2)
    got = FeatureStore.open(tmp_path / "w.zarr")
    for t in ref.trials:
        np.testing.assert_array_equal(got.read(t), ref.read(t))
        np.testing.assert_array_equal(got.mask(t), ref.mask(t))
