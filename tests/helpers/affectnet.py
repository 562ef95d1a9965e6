"""AffectNet-layout files written by the tests: pictures, 68-point landmarks with a known five-point reduction, per-image annotations."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.faces.align import TEMPLATE
from pipeline.io import affectnet as A


def photo(path: Path, w: int = 160, h: int = 140, seed: int = 0) -> np.ndarray:
    """A smooth random RGB picture saved losslessly (PNG), returned as decoded."""
    rng = np.random.default_rng(seed)
    img = Image.fromarray(rng.integers(0, 256, (7, 8, 3), dtype=np.uint8)).resize((w, h), Image.BICUBIC)
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path)
    return np.asarray(img)



def landmarks68(five: np.ndarray) -> np.ndarray:
    """68 iBUG points whose five-point reduction is ``five``: each eye's six points around its centre."""
    pts = np.zeros((68, 2))
    ring = np.array([[-3, 0], [-1, -1], [1, -1], [3, 0], [1, 1], [-1, 1]], dtype=float)
    pts[36:42] = five[0] + ring
    pts[42:48] = five[1] + ring
    pts[30], pts[48], pts[54] = five[2], five[3], five[4]
    return pts



FIVE = TEMPLATE.astype(np.float64) * 1.1 + [20, 10]  # a face somewhat larger than the template, shifted



def write_per_image(root: Path, split: str, items: list[dict]) -> None:
    base = root / A.SPLIT_DIRS[split]
    for i, it in enumerate(items):
        photo(base / "images" / f"{i}.png", 96, 96, seed=i)
        for suffix in ("exp", "val", "aro", "lnd"):
            if suffix in it:
                (base / "annotations").mkdir(parents=True, exist_ok=True)
                np.save(base / "annotations" / f"{i}_{suffix}.npy", it[suffix])

