"""Frame f's audio row is the sound heard with frame f: generated videos with a click at a known container time go
through the real `prepare` (PyAV decoding, index.json) and `extract mfcc`; the loudest row must be the frame shown
at the click, whether the audio starts late, before the picture, at 0 behind AAC priming, or the frame rate varies."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from pipeline.common.config import DataConfig, FramesConfig, MFCCConfig
from pipeline.io.annotations import ANNOTATION_DIR
from pipeline.io.features import FeatureStore
from pipeline.io.prepared import load_index
from pipeline.stages import extract, prepare
from tests.helpers.media import clicks, write_av

VFR_TIMES = np.concatenate([np.arange(30) / 30, 1 + np.arange(30) / 20])  # 1 s at 30 fps, then 1.5 s at 20 fps

CASES = {
    # name: (write_av keyword arguments, click time on the container clock)
    "aac from 0 (encoder priming)": ({}, 1.0),
    "audio 0.436 s late": ({"audio_start": 0.436}, 1.0),
    "audio before the picture": ({"video_start": 0.32}, 1.0),
    "16 kHz mono, 0.2 s late": ({"audio_start": 0.2, "sr": 16_000, "layout": "mono"}, 1.0),
    "variable frame rate, audio late": ({"frame_times": VFR_TIMES, "n_frames": 60, "audio_start": 0.3}, 1.4),
}


def _dataset(root: Path, kw: dict, click: float) -> None:
    """One annotated trial (every row valid) whose video has a click at container time ``click``, no crops."""
    kw = dict(kw)
    sr = kw.get("sr", 44_100)
    start = kw.get("audio_start", 0.0)
    write_av(root / "videos" / "v.mp4", audio=clicks(2.6 - start, sr, [click], start=start), **kw)
    n = kw.get("n_frames", 50)
    ann = root / ANNOTATION_DIR / "Train_Set"
    ann.mkdir(parents=True)
    (ann / "v.txt").write_text("valence,arousal\n" + "0.1,0.1\n" * n)


@pytest.mark.parametrize("case", list(CASES))
def test_the_click_lands_on_its_frame(tmp_path, case):
    kw, click = CASES[case]
    _dataset(tmp_path / "root", kw, click)
    prepared = tmp_path / "prepared"
    prepare.run(DataConfig(root=str(tmp_path / "root")), FramesConfig(size=16), prepared, jobs=1)
    extract.run("mfcc", MFCCConfig(), prepared, tmp_path / "m.zarr", device="cpu", progress=False)
    t = load_index(prepared).trial("v")
    video_start = kw["frame_times"][0] if "frame_times" in kw else kw.get("video_start", 0.0)
    shown = int(np.argmin(np.abs(t.times - (click - video_start))))  # the row shown at the click
    assert abs(t.times[shown] - (click - video_start)) < 1e-6  # the click is placed on a frame time
    store = FeatureStore.open(tmp_path / "m.zarr")
    heard = store.mask("v")
    c0 = np.where(heard, store.read("v")[:, 0], -np.inf)  # MFCC c0: the loudness of each frame heard
    assert int(np.argmax(c0)) == shown, (case, int(np.argmax(c0)), shown)
    offset = load_index(prepared).videos["v"].audio_offset
    assert not heard[t.times < offset - 1e-3].any() and heard[t.times > offset + 1e-3].all()  # none before the track
