"""AffectNet stills to face crops: the 68 -> 5 point reduction, the box cut, and a five-point annotation read by the
reader and aligned by its five points; the reader itself stays below the faces package."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
from PIL import Image

from pipeline.faces import stills
from pipeline.faces.align import align_face
from pipeline.io import affectnet as A
from tests.helpers import ROOT
from tests.helpers.affectnet import FIVE, landmarks68, write_per_image


def test_five_points_order():
    pts = np.arange(136, dtype=float).reshape(68, 2)
    five = stills.five_points(pts)
    np.testing.assert_allclose(five[0], pts[36:42].mean(0))
    np.testing.assert_allclose(five[1], pts[42:48].mean(0))
    np.testing.assert_allclose(five[2:], pts[[30, 48, 54]])


def test_cut_box_inside_and_beyond():
    img = np.arange(4 * 5 * 3, dtype=np.uint8).reshape(4, 5, 3)
    np.testing.assert_array_equal(stills.cut_box(img, np.array([1, 1, 2, 2])), img[1:3, 1:3])
    out = stills.cut_box(img, np.array([3, -1, 4, 3]))
    assert out.shape == (3, 4, 3)
    np.testing.assert_array_equal(out[1:, :2], img[:2, 3:5])
    assert out[0].sum() == 0 and out[:, 2:].sum() == 0


def test_five_points_of_no_landmarks_are_nan():
    assert np.isnan(stills.five_points(A.NAN_LMK)).all()
    assert stills.five_points(A.NAN_LMK).shape == (5, 2)


def test_a_five_point_annotation_aligns_by_its_points(tmp_path):
    root = tmp_path / "an"
    five = (FIVE * 0.8).astype(np.float32)
    label = {"exp": np.int64(1), "val": np.float32(0.25), "aro": np.float32(-0.5)}
    write_per_image(root, "train", [{**label, "lnd": five}, {**label, "lnd": landmarks68(FIVE * 0.9)}])
    write_per_image(root, "val", [label] * 2)
    s = A.read_split(root, "train")
    assert s.landmarks.shape == (2, 68, 2)
    np.testing.assert_array_equal(s.landmarks[0, :5], five)  # as given, in rows 0-4
    assert np.isnan(s.landmarks[0, 5:]).all() and np.isfinite(s.landmarks[1]).all()
    np.testing.assert_array_equal(stills.five_points(s.landmarks[0]), five)
    np.testing.assert_allclose(stills.five_points(s.landmarks[1]), FIVE * 0.9, atol=1e-3)
    src = np.asarray(Image.open(root / s.paths[0]).convert("RGB"))
    np.testing.assert_array_equal(stills.load_crop(s, 0, 112), align_face(src, five, 112))


def test_the_reader_does_not_import_faces():
    code = "import sys, pipeline.io.affectnet; print([m for m in sys.modules if m.startswith('pipeline.faces')])"
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT).stdout
    assert out.strip() == "[]"
