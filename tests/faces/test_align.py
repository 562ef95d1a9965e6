import numpy as np
from insightface.utils import face_align

from pipeline.faces.align import TEMPLATE, align_face, alignment_matrix


def test_template_points_map_onto_the_template():
    # landmarks that are the template scaled by 2 and shifted: the matrix undoes exactly that
    src = TEMPLATE * 2.0 + np.array([30.0, 12.0])
    m = alignment_matrix(src)
    mapped = np.c_[src, np.ones(5)] @ m.T
    np.testing.assert_allclose(mapped, TEMPLATE, atol=1e-3)


def test_template_is_insightfaces_arcface_template():
    np.testing.assert_array_equal(TEMPLATE, face_align.arcface_dst)
    assert TEMPLATE.dtype == face_align.arcface_dst.dtype


def test_align_face_equals_insightface_norm_crop():
    rng = np.random.default_rng(0)
    img = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    lmk = TEMPLATE * 1.4 + np.array([60.0, 20.0]) + rng.normal(0, 2, (5, 2))
    out = align_face(img, lmk)
    assert out.shape == (112, 112, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, face_align.norm_crop(img, lmk.astype(np.float32)))
