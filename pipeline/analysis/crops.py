"""Face crops in memory, exactly as training data is made of them on disk.

The ``crop`` stage writes each aligned 112 x 112 face as a JPEG (:func:`pipeline.faces.crops.encode_crop`) and
``prepare`` reads it back resized to ``frames.size`` (:func:`pipeline.stages.prepare.load_crop`); frames without a
face are filled with the last crop (:func:`pipeline.stages.prepare.fill_missing`). The streaming chain does the same
in memory: the JPEG round trip is kept, because the models were trained on JPEG-compressed crops and their input
distribution should not move.
"""

from __future__ import annotations

import io

import numpy as np

from pipeline.faces.align import TEMPLATE_SIZE, align_face
from pipeline.faces.crops import encode_crop
from pipeline.stages.prepare import fill_missing, load_crop


def decode_crop(jpeg: bytes, size: int) -> np.ndarray:
    """JPEG bytes of a crop -> uint8 (size, size, 3) RGB, as ``prepare`` reads a crop file."""
    crop = load_crop(io.BytesIO(jpeg), size)
    assert crop is not None  # only a missing file gives None
    return crop


def face_jpeg(rgb: np.ndarray, landmarks: np.ndarray, quality: int) -> bytes:
    """The aligned 112 x 112 crop of the face with (5, 2) ``landmarks`` in ``rgb`` (H, W, 3), as JPEG bytes."""
    return encode_crop(align_face(rgb, landmarks, TEMPLATE_SIZE), quality)


def face_crop(rgb: np.ndarray, landmarks: np.ndarray, quality: int, size: int) -> np.ndarray:
    """uint8 (size, size, 3): the crop ``prepare`` would read for this face (aligned, JPEG at ``quality``, read
    back at ``size``)."""
    return decode_crop(face_jpeg(rgb, landmarks, quality), size)


class CropFill:
    """Fills the frames without a face of consecutive chunks of one trial, as ``prepare`` does (``frames.missing``):
    ``last`` repeats the latest real crop, ``zero`` leaves them black. Frames before the trial's first face take
    that first face (``first``, known from the face pass); without one (no face at all, or a live stream that has
    not shown one yet) they stay black."""

    def __init__(self, mode: str, first: np.ndarray | None = None) -> None:
        self.mode = mode
        self.previous = first if mode == "last" else None

    def __call__(self, crops: np.ndarray, face: np.ndarray) -> np.ndarray:
        """Fill ``crops`` (k, S, S, 3) in place where ``face`` (k,) is False; returns ``crops``."""
        self.previous = fill_missing(crops, face, self.previous, self.mode)
        return crops
