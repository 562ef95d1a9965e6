"""Five-point alignment to the ArcFace 112 x 112 template, as Aff-Wild2's ``cropped_aligned`` faces are cut.

A pure function of (image, landmarks): the similarity transform from the five points (left eye, right eye, nose
tip, left and right mouth corner, in source pixels) to insightface's ``arcface_dst`` template is estimated with
scikit-image's ``SimilarityTransform`` and applied with OpenCV, exactly as insightface's ``face_align.norm_crop``
does (tested against it); no model file is involved. insightface itself is not imported: the package takes most of
a second to import, which `analyze` of a short video would pay before its first frame.
"""

from __future__ import annotations

import cv2
import numpy as np
from skimage.transform import SimilarityTransform

TEMPLATE_SIZE = 112
# (5, 2) float32 target points in a 112 x 112 crop: insightface.utils.face_align.arcface_dst (tested equal)
TEMPLATE: np.ndarray = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)


def alignment_matrix(landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """(5, 2) landmarks in source pixels -> (2, 3) float64 affine matrix mapping the source into a ``size`` crop
    (``size`` a multiple of 112)."""
    lmk = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    dst = TEMPLATE * (size / TEMPLATE_SIZE)
    if hasattr(SimilarityTransform, "from_estimate"):  # scikit-image >= 0.26
        tform = SimilarityTransform.from_estimate(lmk, dst)
        ok = bool(tform)
    else:
        tform = SimilarityTransform()
        ok = tform.estimate(lmk, dst)
    if not ok:  # degenerate points (all equal): no similarity maps them
        raise ValueError(f"landmarks {lmk.tolist()}: no similarity transform onto the template")
    return np.asarray(tform.params[:2], dtype=np.float64)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The aligned crop: ``image`` uint8 (H, W, 3) (any channel order, kept), (5, 2) landmarks -> uint8
    (size, size, 3); pixels outside the source are black."""
    m = alignment_matrix(landmarks, size)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), borderValue=0.0)  # as face_align.norm_crop
