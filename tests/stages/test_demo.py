"""The demo dataset follows the Aff-Wild2 layout and carries the documented relation."""

import json
from pathlib import Path

import numpy as np

from pipeline.common.config import DemoConfig
from pipeline.io.annotations import read_annotation
from pipeline.io.media import decode_audio, find_videos, probe_video
from pipeline.stages import demo

ANN = Path("annotations/VA_Estimation_Challenge")


def test_layout(tiny_demo):
    videos = find_videos(tiny_demo / "videos")
    assert len(videos) == 8
    assert {p.parent.relative_to(tiny_demo / "videos").as_posix() for p in videos.values()} == {"set1", "set2/part"}
    infos = {k: probe_video(p, count_frames=True) for k, p in videos.items()}
    assert {i.fps for i in infos.values()} == {25.0, 30.0}
    assert [k for k, i in infos.items() if not i.has_audio] == ["demo05"]
    train = sorted(p.stem for p in (tiny_demo / ANN / "Train_Set").glob("*.txt"))
    val = sorted(p.stem for p in (tiny_demo / ANN / "Validation_Set").glob("*.txt"))
    test = (tiny_demo / "test_set.txt").read_text().split()
    assert {"demo03_left", "demo03_right"} <= set(train)
    assert len(val) >= 1 and len(test) >= 2
    assert not (set(train) | set(val)) & set(test)
    for t in train + val:
        ann = read_annotation(next((tiny_demo / ANN).rglob(f"{t}.txt")))
        video = t.removesuffix("_left").removesuffix("_right")
        assert ann.n_rows == infos[video].n_frames  # one annotation row per video frame
        assert len(ann.frames) < ann.n_rows  # some -5 rows
    crops = sorted((tiny_demo / "cropped_aligned" / "demo01").glob("*.jpg"))
    assert crops[0].name == "00013.jpg"  # its first 12 crops are missing
    n_crops = sum(1 for _ in (tiny_demo / "cropped_aligned").rglob("*.jpg"))
    n_rows = sum(infos[t.removesuffix("_left").removesuffix("_right")].n_frames for t in train + val + test)
    assert 0.9 * n_rows < n_crops < n_rows


def test_signals_carry_the_labels(tiny_demo):
    """Voice loudness leads the arousal labels by LAG_A: label(t) follows loudness(t - LAG_A)."""
    ann = read_annotation(tiny_demo / ANN / "Train_Set" / "demo00.txt")
    fps = 30.0
    audio = decode_audio(next((tiny_demo / "videos").rglob("demo00.mp4")))
    hop = int(16_000 / fps)
    rms = np.array([np.sqrt(np.mean(audio[i * hop : (i + 1) * hop] ** 2)) for i in range(len(audio) // hop)])
    lag = int(round(demo.LAG_A * fps))
    f = ann.frames[ann.frames + lag <= len(rms)]
    a = dict(zip(ann.frames.tolist(), ann.labels[:, 1]))
    smooth = np.convolve(rms, np.ones(9) / 9, mode="same")
    # label at frame f is the arousal of frame f - lag: compare with the loudness there
    r = np.corrcoef([a[x] for x in f if x - lag >= 1], [smooth[x - lag - 1] for x in f if x - lag >= 1])[0, 1]
    assert r > 0.5


def test_deterministic(tiny_demo, tmp_path):
    again = tmp_path / "again"
    demo.run(DemoConfig(seed=1, n_videos=8, seconds=3.0, size=64), again)
    for rel in ["test_set.txt", "annotations/VA_Estimation_Challenge/Train_Set/demo00.txt", "cropped_aligned/demo02/00008.jpg"]:
        assert (again / rel).read_bytes() == (tiny_demo / rel).read_bytes()
    assert json.dumps(sorted(p.name for p in again.rglob("*.jpg"))) == json.dumps(sorted(p.name for p in tiny_demo.rglob("*.jpg")))
