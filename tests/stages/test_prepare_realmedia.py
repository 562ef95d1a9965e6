"""prepare on real recordings (../shared/realmedia): odd and variable frame rates, codecs, silent, late, short and
missing audio, annotation files longer than their video."""

import itertools
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.common.config import DataConfig, FramesConfig
from pipeline.io.media import decode_frames
from pipeline.io.prepared import FrameReader, load_index, read_labels
from pipeline.stages import prepare
from tests.helpers.media import read_wav

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
        for i, frame in enumerate(itertools.islice((rgb for _, rgb in decode_frames(p)), N_CROPS)):
            h, w, _ = frame.shape
            s = min(h, w)
            img = Image.fromarray(frame[(h - s) // 2 : (h + s) // 2, (w - s) // 2 : (w + s) // 2]).resize((112, 112))
            img.save(crops / f"{i + 1:05d}.jpg")
    # two real videos annotated (one with 8 rows more than its 72 frames, as some Aff-Wild2 files), the rest test
    ann = root / "annotations/VA_Estimation_Challenge"
    (ann / "Train_Set").mkdir(parents=True)
    (ann / "Validation_Set").mkdir(parents=True)
    rows = ["0.1,0.2"] * 150 + ["-5,-5"] * 50
    (ann / "Train_Set" / "sadtalker_WDA_KatieHill_000.txt").write_text("valence,arousal\n" + "\n".join(rows) + "\n")
    (ann / "Validation_Set" / "pyfeat_single_face.txt").write_text("valence,arousal\n" + "0.5,-0.5\n" * 80)
    annotated = ("sadtalker_WDA_KatieHill_000", "pyfeat_single_face")
    (root / "test_set.txt").write_text("\n".join(k for k in videos if k not in annotated) + "\n")
    return videos


def test_prepare_real_videos(realmedia, tmp_path, capsys):
    build_root(realmedia, tmp_path / "root")
    out = tmp_path / "prepared"
    prepare.run(DataConfig(root=str(tmp_path / "root")), FramesConfig(size=48), out, jobs=2)
    err = capsys.readouterr().err
    single = tmp_path / "root" / "annotations/VA_Estimation_Challenge/Validation_Set/pyfeat_single_face.txt"
    assert (
        f"warning: {single}: 8 annotation row(s) past the last frame of {tmp_path / 'root/videos/real/pyfeat_single_face.mp4'} "
        "(72 frames, counted by packets); dropped"
    ) in err
    index = load_index(out)
    by = {t.name: t for t in index.trials}
    expected_frames = {  # counted by decoding (container metadata disagrees for some)
        "pyfeat_WolfgangLanger_Pexels": 472, "pyfeat_face_noface": 169,
        "sadtalker_WDA_AlexandriaOcasioCortez_000": 200, "videoretalking_face_1": 135,
        "videoretalking_face_4": 199, "musetalk_sun": 550, "musetalk_yongen": 268,
    }
    for name, n in expected_frames.items():
        assert by[name].n_frames == n and by[name].split == "test"
    assert by["sadtalker_WDA_KatieHill_000"].n_frames == 150  # the -5 rows are not frames
    assert by["pyfeat_single_face"].frames == tuple(range(1, 73)) and by["pyfeat_single_face"].split == "val"
    assert index.videos["pyfeat_single_face"].counted_by == "packets"
    assert index.videos["pyfeat_face_noface"].counted_by == "decoding"
    assert abs(index.videos["videoretalking_face_1"].fps - 22.131) < 0.01
    assert abs(index.videos["pyfeat_WolfgangLanger_Pexels"].fps - 23.976) < 0.01
    for silent in ("musetalk_sun", "musetalk_yongen"):
        assert not index.videos[silent].has_audio and not (out / "audio" / f"{silent}.wav").exists()
    late = index.videos["pyfeat_face_noface"]  # 3.97 s of audio that starts 2.43 s after the first frame
    assert abs(late.audio_seconds - 3.99) < 0.1 and abs(late.audio_offset - 2.430) < 1e-3
    assert late.timestamps is not None and abs(by["pyfeat_face_noface"].times[-1] - 6.3604) < 1e-3  # not 168 / 26.4
    assert abs(index.videos["videoretalking_face_1"].audio_offset + 507 / 15360) < 1e-6  # the picture starts 33 ms in
    for name in ("sadtalker_WDA_AlexandriaOcasioCortez_000", "pyfeat_WolfgangLanger_Pexels"):
        assert index.videos[name].timestamps is None and index.videos[name].audio_offset == 0.0
    silence = read_wav(index.audio_path("pyfeat_WolfgangLanger_Pexels"))
    assert abs(len(silence) / 16_000 - 19.69) < 0.1 and np.abs(silence).max() < 1e-3
    speech = read_wav(index.audio_path("sadtalker_WDA_AlexandriaOcasioCortez_000"))
    assert abs(len(speech) / 16_000 - 8.0) < 0.1 and np.sqrt(np.mean(speech**2)) > 0.01
    with FrameReader(out / "frames.h5") as r:
        face = r.face("musetalk_sun")
        assert face[:N_CROPS].all() and not face[N_CROPS:].any()
        x = r.frames("musetalk_sun")
        np.testing.assert_array_equal(x[N_CROPS:], np.broadcast_to(x[N_CROPS - 1], x[N_CROPS:].shape))
    labels = read_labels(out, ["sadtalker_WDA_KatieHill_000", "pyfeat_single_face"])
    assert labels["sadtalker_WDA_KatieHill_000"].shape == (150, 2) and labels["pyfeat_single_face"].shape == (72, 2)
