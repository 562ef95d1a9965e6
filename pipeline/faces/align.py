"""Five-point alignment to the ArcFace 112 x 112 template, as Aff-Wild2's ``cropped_aligned`` faces are cut.

A pure function of (image, landmarks): the similarity transform from the five points (left eye, right eye, nose
tip, left and right mouth corner, in source pixels) to insightface's ``arcface_dst`` template is estimated by
insightface's own ``face_align.estimate_norm`` (scikit-image) and applied with OpenCV exactly as its ``norm_crop``
does; no model file is involved.
"""

from __future__ import annotations

import warnings

import cv2
import numpy as np
from insightface.utils import face_align

TEMPLATE_SIZE = 112
TEMPLATE: np.ndarray = face_align.arcface_dst.copy()  # (5, 2) float32 target points in a 112 x 112 crop


def alignment_matrix(landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """(5, 2) landmarks in source pixels -> (2, 3) float64 affine matrix mapping the source into a ``size`` crop
    (``size`` a multiple of 112)."""
    lmk = np.asarray(landmarks, dtype=np.float32).reshape(5, 2)
    with warnings.catch_warnings():  # scikit-image 0.26 deprecates the `estimate` call insightface makes
        warnings.simplefilter("ignore", FutureWarning)
        return np.asarray(face_align.estimate_norm(lmk, image_size=size), dtype=np.float64)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = TEMPLATE_SIZE) -> np.ndarray:
    """The aligned crop: ``image`` uint8 (H, W, 3) (any channel order, kept), (5, 2) landmarks -> uint8
    (size, size, 3); pixels outside the source are black."""
    m = alignment_matrix(landmarks, size)
    return cv2.warpAffine(np.ascontiguousarray(image), m, (size, size), borderValue=0.0)  # as face_align.norm_crop
