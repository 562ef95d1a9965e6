"""The `crop` stage on a small dataset built here from real recordings (annotations generated), then `prepare`;
resuming, refusals, the CLI, the demo without crops, and `dvc repro` on it (slow)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml

from pipeline.common.config import DataConfig, DemoConfig, FacesConfig, FramesConfig
from pipeline.common.errors import InputError
from pipeline.faces.align import align_face
from pipeline.faces.mtcnn import MTCNN
from pipeline.io.annotations import ANNOTATION_DIR
from pipeline.io.media import decode_frames
from pipeline.io.prepared import FrameReader, load_index
from pipeline.stages import crop, demo, prepare
from tests.helpers.cli import invoke, write_params
from tests.helpers.media import write_av

PAIR_FRAMES = 40


def annotate(path: Path, n: int, seed: int) -> None:
    """``n`` rows of smooth values, a few -5 rows."""
    rng = np.random.default_rng(seed)
    v = np.tanh(np.cumsum(rng.normal(0, 0.1, (n, 2)), axis=0))
    v[5:8] = -5
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("valence,arousal\n" + "".join(f"{a:.3f},{b:.3f}\n" for a, b in v))


@pytest.fixture(scope="module")
def sources(realmedia) -> dict[str, list[np.ndarray]]:
    left = [rgb for i, (_, rgb) in zip(range(PAIR_FRAMES), decode_frames(realmedia / "videos" / "sadtalker_WDA_KatieHill_000.mp4"))]
    right = [rgb for i, (_, rgb) in zip(range(PAIR_FRAMES), decode_frames(realmedia / "videos" / "sadtalker_WDA_AlexandriaOcasioCortez_000.mp4"))]
    return {"left": left, "right": right}


@pytest.fixture
def dataset(tmp_path, realmedia, sources) -> Path:
    """single (train, 72 frames, mp3 audio), pair_left / pair_right (val: two real speakers side by side, 40 frames,
    no audio) and talk (test, 122 frames)."""
    root = tmp_path / "ds"
    (root / "videos" / "sub").mkdir(parents=True)
    (root / "videos" / "single.mp4").symlink_to(realmedia / "videos" / "pyfeat_single_face.mp4")
    (root / "videos" / "sub" / "talk.mp4").symlink_to(realmedia / "videos" / "videoretalking_face_5.mp4")
    write_av(root / "videos" / "pair.mp4", images=[np.hstack([a, b]) for a, b in zip(sources["left"], sources["right"])])
    annotate(root / ANNOTATION_DIR / "Train_Set" / "single.txt", 72, 0)
    annotate(root / ANNOTATION_DIR / "Validation_Set" / "pair_left.txt", PAIR_FRAMES, 1)
    annotate(root / ANNOTATION_DIR / "Validation_Set" / "pair_right.txt", PAIR_FRAMES, 2)
    (root / "test_set.txt").write_text("talk\n")
    return root


def crop_files(folder: Path) -> list[int]:
    return sorted(int(p.stem) for p in folder.glob("*.jpg"))


@pytest.mark.realmedia
def test_crop_then_prepare(dataset, tmp_path, sources, capsys):
    cfg = FacesConfig()
    summary = crop.run(DataConfig(root=str(dataset), crops="detect"), cfg, tmp_path / "crops.json")
    dest = dataset / "cropped_aligned"
    assert sorted(p.name for p in dest.iterdir()) == ["pair_left", "pair_right", "single", "talk"]
    assert not (dataset / "cropped_aligned.partial").exists()
    assert json.loads((tmp_path / "crops.json").read_text()) == json.loads(json.dumps(summary))
    counts = {t: s["n_frames"] for t, s in summary["trials"].items()}
    assert counts == {"single": 72, "pair_left": PAIR_FRAMES, "pair_right": PAIR_FRAMES, "talk": 122}
    for t, n in counts.items():
        frames = crop_files(dest / t)
        assert frames and frames[0] >= 1 and frames[-1] <= n and len(frames) >= 0.95 * n, t
        assert summary["trials"][t]["faces"] == len(frames)
        img = cv2.imread(str(dest / t / f"{frames[0]:05d}.jpg"))
        assert img.shape == (112, 112, 3)

    # left is the speaker on the left: its crop resembles her face aligned from her own video, not the other one
    det = MTCNN(cfg.min_face, cfg.thresholds)

    def small(rgb: np.ndarray) -> np.ndarray:  # 16 px: a pixel or two of alignment jitter does not count
        return cv2.resize(rgb, (16, 16), interpolation=cv2.INTER_AREA).astype(float)

    own = {k: small(align_face(sources[k][0], det.detect(sources[k][0]).landmarks[0])) for k in ("left", "right")}
    for side in ("left", "right"):
        got = small(cv2.cvtColor(cv2.imread(str(dest / f"pair_{side}" / "00001.jpg")), cv2.COLOR_BGR2RGB))
        other = "right" if side == "left" else "left"
        assert np.abs(got - own[side]).mean() < 0.5 * np.abs(got - own[other]).mean()

    index = prepare.run(DataConfig(root=str(dataset)), FramesConfig(size=32), tmp_path / "prepared", jobs=1)
    with FrameReader(tmp_path / "prepared" / "frames.h5") as reader:
        for t in index.trials:
            have = set(crop_files(dest / t.name))
            np.testing.assert_array_equal(reader.face(t.name), [f in have for f in t.frames])
    assert load_index(tmp_path / "prepared").trial("talk").n_frames == 122

    # a second run finds every video done
    capsys.readouterr()
    crop.run(DataConfig(root=str(dataset), crops="detect"), cfg, tmp_path / "crops.json")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["cropped"] == 0 and line["skipped"] == 3


@pytest.mark.slow
@pytest.mark.realmedia
def test_resume_redoes_only_what_changed_and_refuses_foreign_crops(dataset, tmp_path, capsys):
    data = DataConfig(root=str(dataset), crops="detect")
    crop.run(data, FacesConfig(), tmp_path / "crops.json")
    dest = dataset / "cropped_aligned"
    shutil.rmtree(dest / "talk")  # lost: only its video is redone
    capsys.readouterr()
    crop.run(data, FacesConfig(), tmp_path / "crops.json")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["cropped"], line["skipped"]) == (1, 2) and crop_files(dest / "talk")
    # other settings: everything is redone, and the old crops are replaced
    crop.run(data, FacesConfig(jpeg_quality=50), tmp_path / "crops.json")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["cropped"] == 3
    assert (dest / "single" / "00001.jpg").stat().st_size < 3000  # quality 50 at 112 px
    # killed after a video's folders were placed, before its record was written: they are still the stage's own
    doc = json.loads((dataset / crop.RECORDS).read_text())
    del doc["videos"]["single"]
    (dataset / crop.RECORDS).write_text(json.dumps(doc))
    crop.run(data, FacesConfig(jpeg_quality=50), tmp_path / "crops.json")
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (line["cropped"], line["skipped"]) == (1, 2)
    # crops nobody recorded (e.g. a dataset's own) are never overwritten
    (dataset / crop.RECORDS).unlink()
    with pytest.raises(InputError, match="was not written by `crop`"):
        crop.run(data, FacesConfig(), tmp_path / "crops.json")


@pytest.mark.slow
@pytest.mark.realmedia
def test_kill_9_during_crop_then_a_rerun_equals_an_uninterrupted_run(dataset, tmp_path):
    """`python -m pipeline crop` killed (SIGKILL, whole process group) twice at random moments, then run to the end:
    the same crop files, byte for byte, and the same summary as a run never interrupted; no half-written folder left."""
    import os
    import random
    import signal
    import time

    ref = tmp_path / "ref"
    shutil.copytree(dataset, ref, symlinks=True)
    for root in (ref, dataset):
        (root.parent / f"{root.name}.yaml").write_text(yaml.safe_dump({"data": {"root": str(root), "crops": "detect"}}))

    def cmd(root: Path) -> list[str]:
        return [sys.executable, "-m", "pipeline", "crop", "--jobs", "2", "--params", str(root.parent / f"{root.name}.yaml"),
                "--out", str(root.parent / f"{root.name}.json")]

    subprocess.run(cmd(ref), check=True, capture_output=True)
    rng = random.Random(0)
    kills = 0
    for _ in range(2):  # each time: once crops are being written, wait a random moment, then kill
        p = subprocess.Popen(cmd(dataset), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        while p.poll() is None and not any((dataset / "cropped_aligned.partial").rglob("*.jpg")):
            time.sleep(0.05)
        time.sleep(rng.uniform(0.0, 0.5))
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            kills += 1
        p.wait()
    assert kills >= 1
    subprocess.run(cmd(dataset), check=True, capture_output=True)

    def tree(root: Path) -> dict[str, bytes]:
        return {str(f.relative_to(root)): f.read_bytes() for f in sorted((root / "cropped_aligned").rglob("*")) if f.is_file()}

    assert tree(dataset) == tree(ref) and tree(ref)
    assert not list(dataset.glob("cropped_aligned*.partial")) and not list((dataset / "cropped_aligned").glob(".*"))
    a, b = (json.loads((tmp_path / f"{n}.json").read_text()) for n in ("ds", "ref"))
    assert a.pop("root") == str(dataset) and b.pop("root") == str(ref)
    assert a == b


def test_given_crops_missing_is_a_one_line_error(tmp_path):
    (tmp_path / "ds").mkdir()
    res = invoke(*["crop", "--out", str(tmp_path / "c.json"), "--params", str(write_params(tmp_path / "params.yaml", {"data": {"root": str(tmp_path / "ds"), "crops": "given"}}))])
    assert res.exit_code == 2
    assert "cropped_aligned: not found" in res.output and "data.crops: detect" in res.output
    assert len(res.output.strip().splitlines()) == 1


def test_a_trial_without_video_is_a_one_line_error(tmp_path):
    annotate(tmp_path / "ds" / ANNOTATION_DIR / "Train_Set" / "ghost.txt", 10, 0)
    res = invoke(*["crop", "--out", str(tmp_path / "c.json"), "--params", str(write_params(tmp_path / "params.yaml", {"data": {"root": str(tmp_path / "ds"), "crops": "detect"}}))])
    assert res.exit_code == 2 and "trial 'ghost': no video ghost{.mp4," in res.output


def test_demo_without_crops_has_the_same_videos_and_labels(tmp_path):
    cfg = DemoConfig(n_videos=8, seconds=2.5, size=64)
    demo.run(cfg, tmp_path / "with", crops=True)
    demo.run(cfg, tmp_path / "without", crops=False)
    assert (tmp_path / "with" / "cropped_aligned").is_dir() and not (tmp_path / "without" / "cropped_aligned").exists()
    for sub in ("annotations", "videos"):
        a = sorted(p.relative_to(tmp_path / "with") for p in (tmp_path / "with" / sub).rglob("*") if p.is_file())
        b = sorted(p.relative_to(tmp_path / "without") for p in (tmp_path / "without" / sub).rglob("*") if p.is_file())
        assert a == b
        for rel in a:
            assert (tmp_path / "with" / rel).read_bytes() == (tmp_path / "without" / rel).read_bytes(), rel


# ------------------------------------------------------------------------------------------ dvc repro (slow)
@pytest.mark.slow
def test_dvc_repro_on_the_demo_without_crops(tmp_path_factory):
    """The demo generated without crops, `data.crops: detect`: `dvc repro` runs crop, scan, prepare ... predict."""
    from tests.helpers.dvc_repo import SMALL, make_repo, merge, sh

    def demo_without_crops(dst: Path) -> None:
        sh([sys.executable, "-m", "pipeline", "demo", "--no-crops", "--out", "raw/demo"], dst)
        (dst / ".gitignore").write_text((dst / ".gitignore").read_text() + "/raw/\n")

    overrides = merge(SMALL, {"data": {"root": "raw/demo", "crops": "detect"}})
    dst = make_repo(tmp_path_factory.mktemp("nocrops") / "repo", overrides, before_commit=demo_without_crops)
    out = sh([sys.executable, "-m", "dvc", "repro"], dst)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert {"crop", "scan", "prepare", "evaluate", "predict"} <= ran, out
    summary = json.loads((dst / "data" / "crops.json").read_text())
    assert summary["crops"] == "detect"
    found = [s["faces"] / s["n_frames"] for s in summary["trials"].values()]
    assert all(f > 0 for f in found)  # drawn faces: MTCNN finds some of them (see README "Faces")
    index = json.loads((dst / "data" / "prepared" / "index.json").read_text())
    assert {t["name"] for t in index["trials"]} == set(summary["trials"])
    assert (dst / "predictions" / "test.txt").is_file() and (dst / "metrics" / "cv.json").is_file()
    again = sh([sys.executable, "-m", "dvc", "repro"], dst)
    assert [line for line in again.splitlines() if line.startswith("Running stage")] == ["Running stage 'scan':"], again
