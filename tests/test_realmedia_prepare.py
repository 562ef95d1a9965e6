"""prepare on real recordings (../shared/realmedia): odd frame rates, codecs, silent, short and missing audio."""

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.config import DataConfig, FramesConfig
from pipeline.io.media import iter_video_frames
from pipeline.io.prepared import FrameReader, load_index, read_audio
from pipeline.stages import prepare

pytestmark = pytest.mark.realmedia
N_CROPS = 6  # crops made from each video's first frames; the rest are "missing"


def build_root(realmedia: Path, root: Path) -> dict[str, Path]:
    """A dataset root whose videos are links to the real files (never copies) and whose crops are their frames."""
    (root / "videos" / "real").mkdir(parents=True)
    videos = {}
    for p in sorted((realmedia / "videos").glob("*")) + sorted((realmedia / "videos_noaudio").glob("*")):
        link = root / "videos" / "real" / f"{p.stem}.mp4"  # the .mov is an .mp4-family container: named so
        os.symlink(p, link)
        videos[p.stem] = p
        crops = root / "cropped_aligned" / p.stem
        crops.mkdir(parents=True)
        for i, frame in enumerate(itertools.islice(iter_video_frames(p), N_CROPS)):
            h, w, _ = frame.shape
            s = min(h, w)
            img = Image.fromarray(frame[(h - s) // 2 : (h + s) // 2, (w - s) // 2 : (w + s) // 2]).resize((112, 112))
            img.save(crops / f"{i + 1:05d}.jpg")
    # one real video annotated as a training trial, the rest as test trials
    ann = root / "annotations/VA_Estimation_Challenge/Train_Set"
    ann.mkdir(parents=True)
    rows = ["0.1,0.2"] * 150 + ["-5,-5"] * 50
    (ann / "sadtalker_WDA_KatieHill_000.txt").write_text("valence,arousal\n" + "\n".join(rows) + "\n")
    (root / "test_set.txt").write_text("\n".join(k for k in videos if k != "sadtalker_WDA_KatieHill_000") + "\n")
    return videos


def test_prepare_real_videos(realmedia, tmp_path):
    build_root(realmedia, tmp_path / "root")
    out = tmp_path / "prepared"
    prepare.run(DataConfig(root=str(tmp_path / "root")), FramesConfig(size=48), out, jobs=2)
    index = load_index(out)
    by = {t.name: t for t in index.trials}
    expected_frames = {  # counted by decoding (container metadata disagrees for some)
        "pyfeat_WolfgangLanger_Pexels": 472, "pyfeat_face_noface": 169, "pyfeat_single_face": 72,
        "sadtalker_WDA_AlexandriaOcasioCortez_000": 200, "videoretalking_face_1": 135,
        "videoretalking_face_4": 199, "musetalk_sun": 550, "musetalk_yongen": 268,
    }
    for name, n in expected_frames.items():
        assert by[name].n_frames == n and by[name].split == "test"
    assert by["sadtalker_WDA_KatieHill_000"].n_frames == 150  # the -5 rows are not frames
    assert abs(index.videos["videoretalking_face_1"].fps - 22.131) < 0.01
    assert abs(index.videos["pyfeat_WolfgangLanger_Pexels"].fps - 23.976) < 0.01
    for silent in ("musetalk_sun", "musetalk_yongen"):
        assert not index.videos[silent].has_audio and not (out / "audio" / f"{silent}.wav").exists()
    short = index.videos["pyfeat_face_noface"]
    assert short.audio_seconds < short.n_frames / short.fps - 2  # audio 4.0 s of a 6.4 s video
    assert abs(short.audio_seconds - 3.99) < 0.1
    silence = read_audio(index.audio_path("pyfeat_WolfgangLanger_Pexels"))
    assert abs(len(silence) / 16_000 - 19.69) < 0.1 and np.abs(silence).max() < 1e-3
    speech = read_audio(index.audio_path("sadtalker_WDA_AlexandriaOcasioCortez_000"))
    assert abs(len(speech) / 16_000 - 8.0) < 0.1 and np.sqrt(np.mean(speech**2)) > 0.01
    with FrameReader(out / "frames.h5") as r:
        face = r.face("musetalk_sun")
        assert face[:N_CROPS].all() and not face[N_CROPS:].any()
        x = r.frames("musetalk_sun")
        np.testing.assert_array_equal(x[N_CROPS:], np.broadcast_to(x[N_CROPS - 1], x[N_CROPS:].shape))
        assert r.labels("sadtalker_WDA_KatieHill_000").shape == (150, 2)
