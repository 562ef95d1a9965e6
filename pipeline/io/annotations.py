"""Aff-Wild2 valence-arousal annotation files.

``annotations/VA_Estimation_Challenge/{Train_Set,Validation_Set}/<trial>.txt``: a header ``valence,arousal`` and
one row per video frame (row i = frame i, 1-based). ``-5`` marks a frame that was not annotated. A trial's rows are
those whose valence and arousal are both not -5 (paper, section 3.2); their row numbers are the trial's frames.
Files are read as UTF-8; a byte order mark and Windows line endings are accepted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.errors import InputError
from pipeline.io.names import check_name

SPLIT_DIRS = {"train": "Train_Set", "val": "Validation_Set"}
ANNOTATION_DIR = Path("annotations") / "VA_Estimation_Challenge"
UNANNOTATED = -5.0


@dataclass(frozen=True)
class Annotation:
    frames: np.ndarray  # int64 (N,), 1-based frame numbers of the annotated rows
    labels: np.ndarray  # float32 (N, 2): valence, arousal in [-1, 1]
    n_rows: int  # rows in the file (= frames of the video the annotators saw)


def read_annotation(path: str | Path) -> Annotation:
    """Parse one annotation file; any malformed line is an :class:`InputError` naming the file and line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()  # -sig: drop a byte order mark
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    if not lines or [h.strip().lower() for h in lines[0].split(",")] != ["valence", "arousal"]:
        got = lines[0].strip()[:60] if lines else "an empty file"
        raise InputError(f"{path}:1: expected the header 'valence,arousal', got {got!r}")
    values = np.empty((len(lines) - 1, 2), dtype=np.float64)
    n = 0
    for lineno, line in enumerate(lines[1:], start=2):
        if not line.strip():
            if any(rest.strip() for rest in lines[lineno - 1 :]):
                raise InputError(f"{path}:{lineno}: empty line before the end of the file")
            break
        cells = line.split(",")
        if len(cells) != 2:
            raise InputError(f"{path}:{lineno}: expected 2 values 'valence,arousal', got {line.strip()!r}")
        for j, cell in enumerate(cells):
            try:
                x = float(cell)
            except ValueError:
                raise InputError(f"{path}:{lineno}: not a number: {cell.strip()!r}") from None
            if math.isnan(x) or math.isinf(x):
                raise InputError(f"{path}:{lineno}: {cell.strip()!r} is not a finite number")
            if x != UNANNOTATED and not -1.0 <= x <= 1.0:
                raise InputError(f"{path}:{lineno}: {x:g} outside [-1, 1] (and not -5, the 'not annotated' mark)")
            values[n, j] = x
        n += 1
    values = values[:n]
    keep = (values[:, 0] != UNANNOTATED) & (values[:, 1] != UNANNOTATED)
    frames = np.flatnonzero(keep).astype(np.int64) + 1
    return Annotation(frames=frames, labels=values[keep].astype(np.float32), n_rows=n)


def annotation_files(root: Path) -> dict[str, list[Path]]:
    """``{"train": [...], "val": [...]}``: the annotation files under ``root``, sorted by name."""
    return {
        split: sorted((root / ANNOTATION_DIR / d).glob("*.txt")) for split, d in SPLIT_DIRS.items()
    }


def read_test_list(root: Path) -> list[str]:
    """Trial names in ``root/test_set.txt`` (one per line, blank lines and ``#`` comments ignored, a ``.mp4``,
    ``.avi`` or ``.txt`` suffix dropped); [] if absent. A name with a path in it is an error naming the line."""
    path = root / "test_set.txt"
    if not path.exists():
        return []
    try:
        lines = path.read_text(encoding="utf-8-sig").splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise InputError(f"{path}: cannot read: {e}") from None
    names = []
    for lineno, line in enumerate(lines, start=1):
        line = line.split("#", 1)[0].strip()
        if line:
            name = line[: -len(Path(line).suffix)] if line.lower().endswith((".mp4", ".avi", ".txt")) else line
            names.append(check_name(name, f"{path}:{lineno}: trial name"))
    return names
