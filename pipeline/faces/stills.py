"""AffectNet stills: a face crop from landmarks or a box.

:mod:`pipeline.io.affectnet` reads the labels, boxes and landmarks; this module turns one image of a split into the
crop the ``backbone`` stage trains on. With landmarks, the five-point ArcFace alignment of :mod:`pipeline.faces.align`
(the template ``cropped_aligned`` is cut with); else the face box (CSV layout) or, in the per-image layout, the whole
image, which is already a face crop. Crops are resized to the training size with PIL's bilinear filter, as
``prepare`` resizes Aff-Wild2 crops.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.common.errors import InputError
from pipeline.faces.align import TEMPLATE_SIZE, align_face
from pipeline.io.affectnet import AffectNetSplit


def five_points(points: np.ndarray) -> np.ndarray:
    """(68, 2) iBUG landmarks -> float32 (5, 2) alignment points in the ArcFace template's order: the eye on the
    image's left (mean of 36-41), the other eye (42-47), the nose tip (30), the mouth corners (48, 54). (5, 2)
    passes, and so does a five-point annotation as :class:`~pipeline.io.affectnet.AffectNetSplit` holds it (the
    first five rows, NaN after them). All NaN (no landmarks) gives NaN."""
    points = np.asarray(points, dtype=np.float32).reshape(-1, 2)
    if len(points) == 5:
        return points
    if np.isfinite(points[:5]).all() and np.isnan(points[5:]).all():
        return points[:5]
    return np.stack(
        [points[36:42].mean(0), points[42:48].mean(0), points[30], points[48], points[54]]
    ).astype(np.float32)


def load_crop(split: AffectNetSplit, i: int, size: int) -> np.ndarray:
    """Image ``i`` of ``split`` as a uint8 (size, size, 3) RGB face crop (aligned, boxed or whole, see the module
    doc)."""
    return load_face(split.root / split.paths[i], split.box[i], five_points(split.landmarks[i]), size)


def load_face(path: Path, box: np.ndarray, landmarks: np.ndarray, size: int) -> np.ndarray:
    """uint8 (size, size, 3) RGB: aligned by the five ``landmarks`` (5, 2) when they are finite, else cut by ``box``
    (x, y, w, h; black beyond the image) when finite, else the whole image; resized bilinearly to ``size``."""
    try:
        with Image.open(path) as img:
            if not np.isfinite(landmarks).all() and not np.isfinite(box).all():
                img.draft("RGB", (size, size))  # JPEG decodes at 1/2, 1/4 or 1/8 scale when still >= size
            rgb = np.array(img.convert("RGB"), dtype=np.uint8)  # writable: batches are built from it
    except FileNotFoundError:
        raise InputError(f"{path}: image not found") from None
    except OSError as e:
        raise InputError(f"{path}: cannot decode: {e}") from None
    if np.isfinite(landmarks).all():
        crop = align_face(rgb, landmarks, size=TEMPLATE_SIZE)
    elif np.isfinite(box).all():
        crop = cut_box(rgb, box)
    else:
        crop = rgb
    if crop.shape[:2] != (size, size):
        crop = np.array(Image.fromarray(crop).resize((size, size), Image.BILINEAR), dtype=np.uint8)
    return crop


def cut_box(image: np.ndarray, box: np.ndarray) -> np.ndarray:
    """(H, W, 3) image, box (x, y, w, h) -> the box's pixels, black where it leaves the image (AffectNet's boxes
    are sometimes partly outside)."""
    x, y, w, h = (int(round(float(v))) for v in box)
    w, h = max(w, 1), max(h, 1)
    out = np.zeros((h, w, 3), dtype=np.uint8)
    H, W = image.shape[:2]
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + w, W), min(y + h, H)
    if x1 > x0 and y1 > y0:
        out[y0 - y : y1 - y, x0 - x : x1 - x] = image[y0:y1, x0:x1]
    return out
