"""AffectNet in both layouts: labels, documented skip codes, alignment or box cut (the reader's landmarks through
:mod:`pipeline.faces.stills`), errors naming file and line; the demo's generated set."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipeline.common.config import DemoConfig
from pipeline.common.errors import InputError
from pipeline.faces import stills
from pipeline.faces.align import align_face
from pipeline.io import affectnet as A
from pipeline.stages import demo
from tests.helpers.affectnet import FIVE, landmarks68, photo, write_per_image

HEADER = list(A.CSV_COLUMNS)








def csv_row(path: str, box=(10, 12, 100, 90), lmk: np.ndarray | None = None, expr=1, val=0.5, aro=-0.25) -> list:
    text = "" if lmk is None else ";".join(f"{v:.3f}" for v in lmk.ravel())
    return [path, *box, text, expr, val, aro]


@pytest.fixture
def csv_root(tmp_path: Path) -> Path:
    root = tmp_path / "affectnet"
    images = root / "Manually_Annotated_Images"
    for i in range(6):
        photo(images / "1" / f"img{i}.png", seed=i)
    lists = root / "Manually_Annotated_file_lists"
    lists.mkdir(parents=True)
    rows = [
        csv_row("1/img0.png", lmk=landmarks68(FIVE)),  # aligned
        csv_row("1/img1.png", box=(-10, 20, 80, 80), expr=6, val=-0.7, aro=0.6),  # no landmarks: box, partly outside
        csv_row("1/img2.png", expr=8, val=0.1, aro=0.1),  # None
        csv_row("1/img3.png", expr=9, val=-2, aro=-2),  # Uncertain
        csv_row("1/img4.png", expr=10, val=-2, aro=-2),  # No-Face
        csv_row("1/img5.png", expr=3, val=-2, aro=0.4),  # valence not rated
        csv_row("1/gone.png", expr=2),  # listed, not on disk
    ]
    with open(lists / "training.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(HEADER)
        w.writerows(rows)
    with open(lists / "validation.csv", "w", newline="") as f:  # no header row, as in some copies
        csv.writer(f).writerows([csv_row("1/img0.png", expr=7, val=0.0, aro=1.0), csv_row("1/img1.png", expr=0)])
    return root


def test_csv_layout_labels_and_skips(csv_root):
    assert A.detect_layout(csv_root) == "csv"
    s = A.read_split(csv_root, "train")
    assert s.layout == "csv" and len(s) == 2
    assert s.paths == ["Manually_Annotated_Images/1/img0.png", "Manually_Annotated_Images/1/img1.png"]
    assert s.expression.tolist() == [1, 6]
    np.testing.assert_allclose(s.va, [[0.5, -0.25], [-0.7, 0.6]])
    assert s.skipped == {
        "expression 10 (No-Face)": 1,
        "expression 8 (None)": 1,
        "expression 9 (Uncertain)": 1,
        "image missing (e.g. Manually_Annotated_Images/1/gone.png)": 1,
        "valence/arousal -2 (not rated)": 1,
    }
    np.testing.assert_allclose(stills.five_points(s.landmarks[0]), FIVE, atol=1e-3)  # 68 -> 5 points
    assert np.isnan(s.landmarks[1]).all() and s.box[1].tolist() == [-10, 20, 80, 80]
    v = A.read_split(csv_root, "val")
    assert v.expression.tolist() == [7, 0] and v.va[0].tolist() == [0.0, 1.0]
    assert s.class_counts().tolist() == [0, 1, 0, 0, 0, 0, 1, 0]


def test_csv_faces_are_aligned_or_cut(csv_root):
    s = A.read_split(csv_root, "train")
    src0 = np.asarray(Image.open(csv_root / s.paths[0]).convert("RGB"))
    # the five points read back (checked against FIVE above)
    aligned = align_face(src0, stills.five_points(s.landmarks[0]), 112)
    np.testing.assert_array_equal(stills.load_crop(s, 0, 112), aligned)
    small = stills.load_crop(s, 0, 48)
    expect = np.asarray(Image.fromarray(aligned).resize((48, 48), Image.BILINEAR))
    np.testing.assert_array_equal(small, expect)
    src1 = np.asarray(Image.open(csv_root / s.paths[1]).convert("RGB"))
    cut = stills.load_crop(s, 1, 80)  # box (-10, 20, 80, 80): 10 black columns on the left, then the picture
    assert cut.shape == (80, 80, 3)
    np.testing.assert_array_equal(cut[:, :10], 0)
    np.testing.assert_array_equal(cut[:, 10:], src1[20:100, 0:70])


def test_csv_errors_name_file_and_line(csv_root):
    path = csv_root / "Manually_Annotated_file_lists" / "training.csv"
    lines = path.read_text().splitlines()
    for bad, message in [
        (csv_row("1/img0.png", val=1.5), "valence 1.5 is outside"),
        (csv_row("1/img0.png", expr=11), "expression 11.0 is not one of"),
        (csv_row("1/img0.png", aro="x"), "arousal 'x' is not a number"),
        (csv_row("1/img0.png", lmk=np.zeros((3, 2))), "facial landmarks must be 68 (or 5) x, y pairs, got 6"),
    ]:
        path.write_text("\n".join([*lines[:3], ",".join(map(str, bad)), *lines[3:]]) + "\n")
        with pytest.raises(InputError, match=re.escape(f"training.csv:4: {message}")):
            A.read_split(csv_root, "train")
    path.write_text("subDirectory_filePath,expression\n")
    with pytest.raises(InputError, match="training.csv:1: missing column"):
        A.read_split(csv_root, "train")




def test_per_image_layout(tmp_path):
    root = tmp_path / "an"
    write_per_image(root, "train", [
        {"exp": np.array("3"), "val": np.array("-0.176846"), "aro": np.array("0.5")},  # text scalars
        {"exp": np.int64(1), "val": np.float32(0.25), "aro": np.float64(-0.5), "lnd": landmarks68(FIVE * 0.8)},
        {"exp": np.array("9"), "val": np.array("-2"), "aro": np.array("-2")},
        {"exp": np.int64(2), "val": np.float32(-2), "aro": np.float32(0.1)},
    ])
    write_per_image(root, "val", [{"exp": np.int64(0), "val": np.float32(0), "aro": np.float32(0)}] * 2)
    assert A.detect_layout(root) == "per_image"
    s = A.read_split(root, "train")
    assert s.paths == ["train_set/images/0.png", "train_set/images/1.png"]
    assert s.expression.tolist() == [3, 1]
    np.testing.assert_allclose(s.va, [[-0.176846, 0.5], [0.25, -0.5]], rtol=1e-6)
    assert s.skipped == {"expression 9 (Uncertain)": 1, "valence/arousal -2 (not rated)": 1}
    src = np.asarray(Image.open(root / s.paths[0]).convert("RGB"))
    np.testing.assert_array_equal(stills.load_crop(s, 0, 96), src)  # no landmarks, no box: the image is the crop
    src1 = np.asarray(Image.open(root / s.paths[1]).convert("RGB"))
    np.testing.assert_array_equal(stills.load_crop(s, 1, 112), align_face(src1, (FIVE * 0.8).astype(np.float32), 112))
    assert len(A.read_split(root, "val")) == 2
    assert s.fingerprint() != A.read_split(root, "val").fingerprint()

    (root / "train_set" / "annotations" / "1_aro.npy").unlink()
    with pytest.raises(InputError, match="1_aro.npy: missing"):
        A.read_split(root, "train")
    np.save(root / "train_set" / "annotations" / "1_aro.npy", np.float32(3.0))
    with pytest.raises(InputError, match=r"1_\{exp,val,aro\}.npy: arousal 3.0 is outside"):
        A.read_split(root, "train")


def test_not_an_affectnet_folder(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        A.read_split(tmp_path / "nowhere", "train")
    (tmp_path / "x").mkdir()
    with pytest.raises(InputError, match="not an AffectNet folder"):
        A.read_split(tmp_path / "x", "train")


def test_demo_affectnet_set(tmp_path):
    cfg = DemoConfig(affectnet_train=60, affectnet_val=30, size=64)
    demo.write_affectnet(cfg, tmp_path / "a")
    s = A.read_split(tmp_path / "a", "train")
    coded = 60 // demo.CODED_EVERY
    assert len(s) == 60 - coded and sum(s.skipped.values()) == coded
    np.testing.assert_array_equal(s.expression, demo.expression_of(s.va[:, 0], s.va[:, 1]))
    centres = demo.EXPRESSION_VA
    assert demo.expression_of(centres[:, 0], centres[:, 1]).tolist() == list(range(8))
    assert demo.expression_of(np.array([0.9, -0.7, 0.05]), np.array([0.2, -0.5, -0.05])).tolist() == [1, 2, 0]
    assert stills.load_crop(s, 0, 64).shape == (64, 64, 3)
    v = A.read_split(tmp_path / "a", "val")
    assert len(v) == 30 - 30 // demo.CODED_EVERY
    # valence shows in the picture: warm (red minus blue) skin for positive valence
    crops = [stills.load_crop(s, i, 64) for i in range(len(s))]
    tint = np.array([c[24:40, 24:40].astype(float) @ [1, 0, -1] for c in crops]).mean((1, 2))
    assert np.corrcoef(tint, s.va[:, 0])[0, 1] > 0.5
    demo.write_affectnet(cfg, tmp_path / "b")  # deterministic
    for rel in ("train_set/images/7.jpg", "val_set/annotations/3_val.npy", "train_set/annotations/24_exp.npy"):
        assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes()
