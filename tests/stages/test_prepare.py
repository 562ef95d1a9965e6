"""prepare: the layout rules, missing crops, atomic outputs and every bad input of issue 2."""

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.common.config import DataConfig, FramesConfig
from pipeline.common.errors import InputError
from pipeline.io.annotations import read_annotation
from pipeline.io.media import probe_video
from pipeline.io.prepared import (
    FrameReader,
    audio_sha256,
    frames_sha256,
    load_index,
    read_labels,
)
from pipeline.stages import prepare
from pipeline.stages.prepare import fill_missing
from tests.helpers.cli import invoke
from tests.helpers.media import read_wav, write_audio_only

ANN = Path("annotations/VA_Estimation_Challenge")


@pytest.fixture
def root(tiny_demo, tmp_path):
    """A private copy of the tiny demo that a test may damage."""
    return Path(shutil.copytree(tiny_demo, tmp_path / "root"))


@pytest.fixture(scope="module")
def prepared(tiny_demo, tmp_path_factory):
    out = tmp_path_factory.mktemp("prep") / "prepared"
    prepare.run(DataConfig(root=str(tiny_demo)), FramesConfig(size=48), out, jobs=2)
    return out


def test_index_follows_the_layout_rules(tiny_demo, prepared):
    index = load_index(prepared)
    by = {t.name: t for t in index.trials}
    assert by["demo03_left"].video == by["demo03_right"].video == "demo03"
    ann = read_annotation(tiny_demo / ANN / "Train_Set" / "demo00.txt")
    assert list(by["demo00"].frames) == ann.frames.tolist() and by["demo00"].n_frames < ann.n_rows
    tests = (tiny_demo / "test_set.txt").read_text().split()
    for name in tests:
        t = by[name]
        assert t.split == "test"
        n = probe_video(tiny_demo / index.videos[t.video].path, count_frames=True).n_frames
        assert list(t.frames) == list(range(1, n + 1))
    assert index.videos["demo05"].has_audio is False and index.audio_path("demo05") is None
    assert index.videos["demo00"].fps == 30.0 and index.videos["demo01"].fps == 25.0
    assert index.videos["demo06"].path.startswith("videos/set2/part/")
    audio = read_wav(index.audio_path("demo00"))
    assert abs(len(audio) / 16_000 - 3.0) < 0.1


def test_frames_h5_labels_h5_and_digests(tiny_demo, prepared):
    index = load_index(prepared)
    labelled = [t.name for t in index.trials if t.split != "test"]
    labels = read_labels(prepared, labelled)
    with FrameReader(prepared / "frames.h5") as r:
        for t in index.trials:
            x, face = r.frames(t.name), r.face(t.name)
            assert x.shape == (t.n_frames, 48, 48, 3) and x.dtype == np.uint8 and face.shape == (t.n_frames,)
            assert t.frames_sha256 == frames_sha256(x, face)  # the digest is of what is stored
            if t.split != "test":
                y = labels[t.name]
                assert y.shape == (t.n_frames, 2) and y.dtype == np.float32 and np.all(np.abs(y) <= 1)
                ann = read_annotation(next((tiny_demo / ANN).rglob(f"{t.name}.txt")))
                np.testing.assert_array_equal(y, ann.labels)
        # demo01's first 12 crops are missing: face False there, filled with the first real crop ("last" mode)
        face, x = r.face("demo01"), r.frames("demo01")
        assert not face[:12].any() and face[12]
        np.testing.assert_array_equal(x[:12], np.broadcast_to(x[12], x[:12].shape))
    assert {v.counted_by for k, v in index.videos.items()} == {"packets", "decoding"}
    for t in index.by_split("test"):
        assert index.videos[t.video].counted_by == "decoding"
    for name, v in index.videos.items():
        assert v.audio_offset == pytest.approx(0.0, abs=1e-3) and v.timestamps is None, name
        if v.has_audio:
            assert v.audio_sha256 == audio_sha256(read_wav(index.audio_path(name)))


def test_each_row_holds_its_own_frames_crop(tiny_demo, prepared):
    """Row i of demo00 is the crop of video frame frames[i]: closer to that jpg (decoded and resized independently)
    than to the jpg of any frame up to 5 before or after it (an off-by-k lookup fails here)."""
    t = load_index(prepared).trial("demo00")
    folder = tiny_demo / "cropped_aligned" / "demo00"

    def jpg(f: int) -> np.ndarray | None:
        p = folder / f"{f:05d}.jpg"
        return np.asarray(Image.open(p).convert("RGB").resize((48, 48), Image.BILINEAR), np.float32) if p.exists() else None

    with FrameReader(prepared / "frames.h5") as r:
        x, face = r.frames("demo00").astype(np.float32), r.face("demo00")
    checked = 0
    for i, f in enumerate(t.frames):
        if not face[i]:
            continue
        d = {k: np.abs(x[i] - g).mean() for k in range(-5, 6) if (g := jpg(f + k)) is not None}
        assert min(d, key=d.get) == 0 and d[0] < 1.0, (i, f, d)
        checked += 1
    assert checked > 50


def test_missing_crops_last_and_zero():
    x = np.arange(6, dtype=np.uint8)[:, None, None, None] * np.ones((6, 2, 2, 3), np.uint8) + 1
    face = np.array([False, True, False, False, True, False])
    last = fill_missing(x.copy(), face, None, "last")
    y = x.copy()
    fill_missing(y, face, None, "last")
    assert [int(v) for v in y[:, 0, 0, 0]] == [1, 2, 2, 2, 5, 5]  # row 0 waits for backfill
    np.testing.assert_array_equal(last, x[4])
    z = x.copy()
    z[~face] = 0
    fill_missing(z, face, None, "zero")
    assert [int(v) for v in z[:, 0, 0, 0]] == [0, 2, 0, 0, 5, 0]
    carried = np.zeros((3, 2, 2, 3), np.uint8)
    fill_missing(carried, np.zeros(3, bool), x[4], "last")  # a chunk without crops takes the previous chunk's
    assert (carried == 5).all()


def test_zero_mode_and_corrupt_crop_warns(root, tmp_path, capsys):
    bad = root / "cropped_aligned" / "demo00" / "00005.jpg"
    bad.write_bytes(b"not a jpeg")
    out = tmp_path / "prepared"
    prepare.run(DataConfig(root=str(root)), FramesConfig(size=32, missing="zero"), out, jobs=1)
    assert f"warning: {bad}: unreadable crop, counted as missing" in capsys.readouterr().err
    with FrameReader(out / "frames.h5") as r:
        face, x = r.face("demo00"), r.frames("demo00")
        row = load_index(out).trial("demo00").frames.index(5)
        assert not face[row] and x[row].max() == 0
        assert not r.face("demo01")[:12].any() and r.frames("demo01")[:12].max() == 0


def run_cli(root, out):
    params = out.parent / "params.yaml"
    params.write_text(f"data:\n  root: {root}\n")
    return invoke(*["prepare", "--out", str(out), "--params", str(params), "--jobs", "1"])


def set_line(path: Path, index: int, text: str) -> Path:
    """Replace line ``index`` (0-based, the header is line 0) of ``path`` with ``text``."""
    lines = path.read_text().splitlines()
    lines[index] = text
    path.write_text("\n".join(lines) + "\n")
    return path


def damage(root: Path, what: str) -> str:
    """Break ``root`` in one way; return the text the error line must contain."""
    train = root / ANN / "Train_Set"
    if what == "root":
        shutil.rmtree(root)
        return f"{root}: data.root does not exist"
    if what == "header":
        p = train / "demo00.txt"
        p.write_text("\n".join(p.read_text().splitlines()[1:]))
        return f"{p}:1: expected the header 'valence,arousal'"
    if what == "text":
        p = set_line(train / "demo02.txt", 7, "0.1,high")
        return f"{p}:8: not a number: 'high'"
    if what == "nan":
        p = set_line(train / "demo02.txt", 3, "NaN,0.2")
        return f"{p}:4: 'NaN' is not a finite number"
    if what == "range":
        p = set_line(train / "demo01.txt", 2, "0.3,-1.2")
        return f"{p}:3: -1.2 outside [-1, 1]"
    if what == "no-video":
        next((root / "videos").rglob("demo02.mp4")).unlink()
        return f"{train / 'demo02.txt'}: no video demo02{{.mp4,.avi,.mov,.mkv,.webm,.m4v}} under {root / 'videos'}"
    if what == "undecodable":
        p = next((root / "videos").rglob("demo01.mp4"))
        p.write_bytes(b"\x00" * 5000)
        return f"{p}: cannot open video"
    if what == "empty":
        p = train / "demo02.txt"
        p.write_text("valence,arousal\n")
        return f"{p}: no rows after the header (an empty annotation file)"
    if what == "all-unannotated":
        p = train / "demo02.txt"
        n = len(p.read_text().splitlines()) - 1
        p.write_text("valence,arousal\n" + "-5,-5\n" * n)
        return f"{p}: no annotated rows (every row has -5)"
    if what == "no-trials":
        shutil.rmtree(root / "annotations")
        (root / "test_set.txt").unlink()
        return f"{root}: no trials (no annotation files under annotations/VA_Estimation_Challenge and no test_set.txt)"
    if what == "columns":
        p = set_line(train / "demo02.txt", 5, "0.1,0.2,0.3")
        return f"{p}:6: expected 2 values 'valence,arousal', got '0.1,0.2,0.3'"
    if what == "all-past-end":
        p = train / "demo02.txt"
        n = len(p.read_text().splitlines()) - 1
        p.write_text("valence,arousal\n" + "-5,-5\n" * n + "0.1,0.1\n" * 3)
        return f"{p}: every annotated row lies past the last frame of {next((root / 'videos').rglob('demo02.mp4'))}"
    if what == "dot-dot-trial":
        p = train / "...txt"  # its stem is '..'
        (train / "demo02.txt").rename(p)
        return f"{p}: trial name: '..' is not a plain name"
    if what == "test-list-path":
        p = root / "test_set.txt"
        p.write_text("../../outside\n" + p.read_text())
        return f"{p}:1: trial name: '../../outside' is not a plain name"
    if what == "no-video-stream":
        p = next((root / "videos").rglob("demo02.mp4"))
        write_audio_only(p)
        return f"{p}: no video stream"
    if what == "no-decodable-frame":
        p = next((root / "videos").rglob("demo02.mp4"))
        raw = bytearray(p.read_bytes())
        at = raw.find(b"mdat")
        size = int.from_bytes(raw[at - 4 : at], "big")
        raw[at + 4 : at - 4 + size] = bytes(size - 8)  # every packet zeroed
        p.write_bytes(bytes(raw))
        return f"{p}: cannot decode video"
    raise AssertionError(what)


@pytest.mark.parametrize(
    "what",
    [
        "root", "header", "text", "nan", "range", "no-video", "undecodable", "empty", "all-unannotated", "no-trials",
        "columns", "all-past-end",
        "dot-dot-trial", "test-list-path", "no-video-stream", "no-decodable-frame",
    ],
)
def test_bad_input_is_one_line_naming_the_file(root, tmp_path, what):
    expected = damage(root, what)
    out = tmp_path / "prepared"
    result = run_cli(root, out)
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert lines[-1].startswith("error: ") and expected in lines[-1], result.stderr
    assert "Traceback" not in result.output
    # nothing that looks finished is left behind
    assert not (out / "index.json").exists() and not (out / "frames.h5").exists()


def test_interrupted_run_leaves_no_finished_looking_file(root, tmp_path, monkeypatch):
    out = tmp_path / "prepared"

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(prepare.TrialWriter, "finish", boom)  # dies inside the HDF5 writing loop
    with pytest.raises(KeyboardInterrupt):
        prepare.run(DataConfig(root=str(root)), FramesConfig(), out, jobs=1)
    assert not (out / "frames.h5").exists() and not (out / "index.json").exists() and not (out / "audio").exists()
    assert not (out / "labels.h5").exists()


def test_trial_annotated_twice_or_listed_as_test_is_an_error(root, tmp_path):
    shutil.copy(root / ANN / "Train_Set" / "demo00.txt", root / ANN / "Validation_Set" / "demo00.txt")
    with pytest.raises(InputError, match="trial 'demo00' is also annotated in"):
        prepare.run(DataConfig(root=str(root)), FramesConfig(), tmp_path / "p", jobs=1)


def test_prints_throughput(tiny_demo, tmp_path, capsys):
    prepare.run(DataConfig(root=str(tiny_demo)), FramesConfig(size=24), tmp_path / "p", jobs=1)
    report = json.loads([l for l in capsys.readouterr().out.splitlines() if l.startswith("{")][-1])
    assert report["frames"] > 0 and report["frames_per_s"] > 0


def test_repairable_input_warns_and_completes(root, prepared, tmp_path, capsys):
    """Each repairable fault gives one warning naming the file and the run completes: annotation rows past the
    video's end (dropped), a byte order mark and Windows line endings (accepted), a PNG, a grayscale and an oddly
    sized crop (read, converted, resized), an empty and a missing crop folder (black frames, face False)."""
    train, crops = root / ANN / "Train_Set", root / "cropped_aligned"
    long = train / "demo00.txt"
    long.write_text(long.read_text() + "0.2,0.2\n" * 7)
    crlf = train / "demo01.txt"
    crlf.write_bytes(b"\xef\xbb\xbf" + crlf.read_bytes().replace(b"\n", b"\r\n"))
    ref = load_index(prepared)
    png = crops / "demo00" / f"{ref.trial('demo00').frames[0]:05d}.jpg"
    Image.open(png).save(png, format="PNG")
    grey = crops / "demo02" / f"{ref.trial('demo02').frames[3]:05d}.jpg"
    Image.open(grey).convert("L").save(grey, format="JPEG")
    odd = crops / "demo03_left" / f"{ref.trial('demo03_left').frames[2]:05d}.jpg"
    Image.open(odd).resize((80, 60)).save(odd, format="JPEG")
    for f in (crops / "demo03_right").iterdir():
        f.unlink()
    shutil.rmtree(crops / "demo04")
    out = tmp_path / "prepared"
    index = prepare.run(DataConfig(root=str(root)), FramesConfig(size=48), out, jobs=1)
    err = capsys.readouterr().err
    video00 = next((root / "videos").rglob("demo00.mp4"))
    n00 = index.videos["demo00"].n_frames
    expected = [
        f"warning: {long}: 7 annotation row(s) past the last frame of {video00} ({n00} frames, counted by packets); dropped",
        f"warning: {png}: not a JPEG (PNG), read anyway",
        f"warning: {grey}: L crop, not RGB: converted",
        f"warning: {odd}: 80x60 crop (expected square, >= 48 px): resized to 48x48",
        f"warning: {crops / 'demo03_right'}: no crop for any of its frames; the trial's frames are black, face all False",
        f"warning: {crops / 'demo04'}: no such folder; the trial's frames are black, face all False",
    ]
    for line in expected:
        assert line in err.splitlines(), (line, err)
    assert index.trial("demo00").frames == ref.trial("demo00").frames  # the 7 extra rows are gone
    assert max(index.trial("demo00").frames) <= n00
    assert index.trial("demo01").frames == ref.trial("demo01").frames
    np.testing.assert_array_equal(read_labels(out, ["demo01"])["demo01"], read_labels(prepared, ["demo01"])["demo01"])
    with FrameReader(out / "frames.h5") as r, FrameReader(prepared / "frames.h5") as before:
        assert r.face("demo00")[0] and r.face("demo02")[3] and r.face("demo03_left")[2]
        np.testing.assert_array_equal(r.frames("demo00", 0, 1), before.frames("demo00", 0, 1))  # PNG: same pixels
        g = r.frames("demo02", 3, 4)[0].astype(int)
        assert (g[..., 0] == g[..., 1]).all() and (g[..., 1] == g[..., 2]).all()  # grey, three equal channels
        for t in ("demo03_right", "demo04"):
            assert not r.face(t).any() and not r.frames(t).any()


def test_a_rerun_writes_the_same_bytes_and_removes_a_stale_index(tiny_demo, prepared, tmp_path):
    """Identical input gives byte-identical outputs (no dates inside, so DVC sees no change); a run that fails
    leaves no index.json behind, even one from an earlier complete run."""
    out = tmp_path / "prepared"
    shutil.copytree(prepared, out)
    prepare.run(DataConfig(root=str(tiny_demo)), FramesConfig(size=48), out, jobs=1)
    for f in sorted(prepared.rglob("*")):
        if f.is_file():
            assert (out / f.relative_to(prepared)).read_bytes() == f.read_bytes(), f.name
    bad = tmp_path / "bad"
    shutil.copytree(tiny_demo, bad)
    next((bad / "videos").rglob("demo01.mp4")).write_bytes(b"\x00" * 5000)
    with pytest.raises(InputError, match="cannot open video"):
        prepare.run(DataConfig(root=str(bad)), FramesConfig(size=48), out, jobs=1)
    assert not (out / "index.json").exists()


def _same_files(a: Path, b: Path) -> None:
    files = sorted(f.relative_to(a) for f in a.rglob("*") if f.is_file())
    assert files == sorted(f.relative_to(b) for f in b.rglob("*") if f.is_file())
    for f in files:
        assert (a / f).read_bytes() == (b / f).read_bytes(), f


@pytest.mark.slow
def test_kill_9_at_random_points_then_rerun(tiny_demo, prepared, tmp_path):
    """`kill -9` of `python -m pipeline prepare` (its whole process group: the workers die too) at random points:
    what is left never holds an index.json unless it is complete, and a re-run writes exactly what an uninterrupted
    run writes (byte for byte)."""
    params = tmp_path / "params.yaml"
    params.write_text(f"data:\n  root: {tiny_demo}\nframes:\n  size: 48\n")
    out = tmp_path / "prepared"
    cmd = [sys.executable, "-m", "pipeline", "prepare", "--out", str(out), "--params", str(params), "--jobs", "2"]
    t0 = time.monotonic()
    subprocess.run(cmd, check=True, capture_output=True)
    whole = time.monotonic() - t0
    _same_files(out, prepared)
    rng = random.Random(0)
    killed_early = 0
    for _ in range(4):
        shutil.rmtree(out)  # each kill starts from nothing: whatever it leaves comes from this run alone
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        time.sleep(rng.uniform(0.1, whole))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if (out / "index.json").exists():  # it finished before the kill: then everything is there
            _same_files(out, prepared)
        else:
            killed_early += 1
        subprocess.run(cmd, check=True, capture_output=True)  # the re-run over what the kill left
        _same_files(out, prepared)  # temporary files of the killed run are gone too
    assert killed_early >= 2  # most kills land inside the run
