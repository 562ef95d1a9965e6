"""AffectNet (Mollahosseini et al., 2019) in both layouts it is distributed in, read into one labelled list.

CSV layout (the original release)::

    <root>/training.csv, validation.csv     (or under Manually_Annotated_file_lists/)
    <root>/Manually_Annotated_Images/<subDirectory_filePath>   (or <root>/<subDirectory_filePath>)

    columns: subDirectory_filePath, face_x, face_y, face_width, face_height, facial_landmarks, expression, valence,
    arousal; facial_landmarks = "x0;y0;x1;y1;..." (68 points, iBUG order). A file without the header row is read in
    this column order.

Per-image layout (the 8-class copies in circulation)::

    <root>/train_set/images/<id>.jpg     <root>/train_set/annotations/<id>_exp.npy, <id>_val.npy, <id>_aro.npy
    <root>/val_set/images/<id>.jpg       (<id>_lnd.npy, 68 points, when present)

    each .npy holds one scalar, a number or its text ('3', '-0.176').

Labels (the AffectNet paper): expression 0 Neutral, 1 Happy, 2 Sad, 3 Surprise, 4 Fear, 5 Disgust, 6 Anger,
7 Contempt; 8 None, 9 Uncertain, 10 No-Face carry no expression. Valence and arousal lie in [-1, 1]; -2 means "not
rated" (Uncertain and No-Face). An image is used only with an expression in 0..7 and both values in [-1, 1]; the
others are skipped and counted per reason. Any other value is an :class:`InputError` naming the file (and line).

Landmarks are kept as the files give them (68 iBUG points, or five); :mod:`pipeline.faces.stills` turns an image
into a face crop with them.
"""

from __future__ import annotations

import csv
import hashlib
import itertools
import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np

from pipeline.common.errors import InputError

Split = Literal["train", "val"]
Layout = Literal["csv", "per_image"]

EXPRESSIONS = ("Neutral", "Happy", "Sad", "Surprise", "Fear", "Disgust", "Anger", "Contempt")
N_CLASSES = len(EXPRESSIONS)
NO_EXPRESSION = {8: "None", 9: "Uncertain", 10: "No-Face"}
NOT_RATED = -2.0  # AffectNet's valence / arousal for Uncertain and No-Face

CSV_FILES = {"train": "training.csv", "val": "validation.csv"}
CSV_COLUMNS = (
    "subDirectory_filePath", "face_x", "face_y", "face_width", "face_height", "facial_landmarks", "expression",
    "valence", "arousal",
)
CSV_LIST_DIRS = ("", "Manually_Annotated_file_lists")
CSV_IMAGE_DIRS = ("Manually_Annotated_Images", "")
SPLIT_DIRS = {"train": "train_set", "val": "val_set"}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


@dataclass
class AffectNetSplit:
    """One split, N usable images. ``box`` and ``landmarks`` are NaN where the layout does not give them."""

    root: Path
    split: Split
    layout: Layout
    paths: list[str]  # (N,) image paths relative to ``root``
    expression: np.ndarray  # int64 (N,), 0..7
    va: np.ndarray  # float32 (N, 2): valence, arousal in [-1, 1]
    box: np.ndarray  # float32 (N, 4): x, y, width, height in source pixels
    landmarks: np.ndarray  # float32 (N, 68, 2): iBUG points in source pixels; a five-point annotation in rows 0-4
    skipped: dict[str, int] = field(default_factory=dict)  # reason -> images left out

    def __len__(self) -> int:
        return len(self.paths)

    def class_counts(self) -> np.ndarray:
        """int64 (8,): images per expression."""
        return np.bincount(self.expression, minlength=N_CLASSES)

    def fingerprint(self) -> str:
        """sha256 of what training sees: paths, labels, boxes and landmarks (not the pixels: a replaced image with
        the same name is not seen, as with Aff-Wild2's crops)."""
        h = hashlib.sha256(f"{self.layout}\n".encode())
        h.update("\n".join(self.paths).encode())
        for a in (self.expression, self.va, self.box, self.landmarks):
            h.update(np.ascontiguousarray(a).tobytes())
        return h.hexdigest()


# --------------------------------------------------------------------------------------------------- layouts
def detect_layout(root: Path) -> Layout:
    """``csv`` when ``training.csv`` is found, ``per_image`` when ``train_set/images`` is; else an InputError."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: backbone.data does not exist or is not a folder")
    if _csv_file(root, "train") is not None:
        return "csv"
    if (root / SPLIT_DIRS["train"] / "images").is_dir():
        return "per_image"
    raise InputError(
        f"{root}: not an AffectNet folder: expected training.csv (CSV layout) or train_set/images/ (per-image layout)"
    )


def read_split(root: str | Path, split: Split) -> AffectNetSplit:
    """The usable images of ``split`` (``train`` or ``val``) under ``root``, in either layout."""
    root = Path(root)
    layout = detect_layout(root)
    return _read_csv(root, split) if layout == "csv" else _read_per_image(root, split)


def _csv_file(root: Path, split: Split) -> Path | None:
    for d in CSV_LIST_DIRS:
        p = root / d / CSV_FILES[split]
        if p.is_file():
            return p
    return None


class _Rows:
    """Accumulates rows and skip reasons; ``finish`` makes the arrays."""

    def __init__(self) -> None:
        self.paths: list[str] = []
        self.expression: list[int] = []
        self.va: list[tuple[float, float]] = []
        self.box: list[tuple[float, float, float, float]] = []
        self.landmarks: list[np.ndarray] = []
        self.skipped: Counter[str] = Counter()

    def add(self, where: str, path: str, expr: float, val: float, aro: float, box: tuple, lmk: np.ndarray) -> None:
        """Keep or skip one image; ``where`` (file, or file:line) names it in errors."""
        reason = label_skip_reason(where, expr, val, aro)
        if reason is not None:
            self.skipped[reason] += 1
            return
        self.paths.append(path)
        self.expression.append(int(expr))
        self.va.append((val, aro))
        self.box.append(box)
        self.landmarks.append(lmk)

    def finish(self, root: Path, split: Split, layout: Layout) -> AffectNetSplit:
        n = len(self.paths)
        return AffectNetSplit(
            root, split, layout, self.paths,
            np.asarray(self.expression, dtype=np.int64).reshape(n),
            np.asarray(self.va, dtype=np.float32).reshape(n, 2),
            np.asarray(self.box, dtype=np.float32).reshape(n, 4),
            np.asarray(self.landmarks, dtype=np.float32).reshape(n, N_POINTS, 2),
            dict(sorted(self.skipped.items())),
        )


def label_skip_reason(where: str, expr: float, val: float, aro: float) -> str | None:
    """None for a usable label; else why it is skipped (AffectNet's documented codes). Values outside the
    documented ranges are an InputError naming ``where``."""
    if not (math.isfinite(expr) and expr == int(expr) and 0 <= expr <= 10):
        raise InputError(f"{where}: expression {expr!r} is not one of AffectNet's codes 0..10")
    for name, v in (("valence", val), ("arousal", aro)):
        if not (math.isfinite(v) and (-1.0 <= v <= 1.0 or v == NOT_RATED)):
            raise InputError(f"{where}: {name} {v!r} is outside [-1, 1] and not {NOT_RATED:g} (not rated)")
    if expr >= N_CLASSES:
        return f"expression {int(expr)} ({NO_EXPRESSION[int(expr)]})"
    if val == NOT_RATED or aro == NOT_RATED:
        return "valence/arousal -2 (not rated)"
    return None


NAN_BOX = (math.nan,) * 4
N_POINTS = 68  # iBUG's landmark count
NAN_LMK = np.full((N_POINTS, 2), np.nan, dtype=np.float32)


def _landmarks(values: np.ndarray, where: str) -> np.ndarray:
    """Flat x, y values -> float32 (68, 2): 68 points as given, or five points in rows 0-4 and NaN after them; all
    NaN for no values."""
    if values.size == 0:
        return NAN_LMK
    if values.size not in (2 * N_POINTS, 10) or not np.isfinite(values).all():
        raise InputError(f"{where}: facial landmarks must be 68 (or 5) x, y pairs, got {values.size} values")
    points = NAN_LMK.copy()
    points[: values.size // 2] = np.asarray(values, dtype=np.float32).reshape(-1, 2)
    return points


def _number(text: str, where: str, column: str) -> float:
    try:
        return float(text)
    except (TypeError, ValueError):
        raise InputError(f"{where}: {column} {text!r} is not a number") from None


def _read_csv(root: Path, split: Split) -> AffectNetSplit:
    path = _csv_file(root, split)
    if path is None:
        raise InputError(f"{root}: no {CSV_FILES[split]} (looked in {', '.join(str(root / d) for d in CSV_LIST_DIRS)})")
    image_dir = next((d for d in CSV_IMAGE_DIRS if (root / d).is_dir() and d), "")
    rows = _Rows()
    with open(path, newline="") as f:
        reader = csv.reader(f)
        first = next(reader, None)
        if first is None:
            raise InputError(f"{path}: empty file")
        header = [c.strip() for c in first]
        if "subDirectory_filePath" in header:
            missing = [c for c in CSV_COLUMNS if c not in header]
            if missing:
                raise InputError(f"{path}:1: missing column(s) {', '.join(missing)}")
            col = {c: header.index(c) for c in CSV_COLUMNS}
            data = reader
        else:  # validation.csv ships without a header in some copies: the documented column order
            col = {c: i for i, c in enumerate(CSV_COLUMNS)}
            data = itertools.chain([first], reader)
        start = 2 if "subDirectory_filePath" in header else 1
        for line, r in enumerate(data, start=start):
            if not r or (len(r) == 1 and not r[0].strip()):
                continue
            where = f"{path}:{line}"
            if len(r) < len(CSV_COLUMNS):
                raise InputError(f"{where}: expected {len(CSV_COLUMNS)} columns, got {len(r)}")
            num = {c: _number(r[col[c]], where, c) for c in CSV_COLUMNS if c not in ("subDirectory_filePath", "facial_landmarks")}
            box = (num["face_x"], num["face_y"], num["face_width"], num["face_height"])
            text = r[col["facial_landmarks"]].strip()
            try:
                values = np.array([float(v) for v in text.split(";") if v.strip()], dtype=np.float64)
            except ValueError:
                raise InputError(f"{where}: facial_landmarks is not a ';'-separated list of numbers") from None
            lmk = _landmarks(values, where)
            rel = (Path(image_dir) / r[col["subDirectory_filePath"]].strip()).as_posix()
            rows.add(where, rel, num["expression"], num["valence"], num["arousal"], box, lmk)
    return _drop_missing_images(rows, root).finish(root, split, "csv")


def _npy_scalar(path: Path) -> float:
    try:
        value = np.asarray(np.load(path, allow_pickle=False))
        if value.size != 1:
            raise ValueError(f"holds {value.size} values")
        return float(value.reshape(-1)[0])
    except FileNotFoundError:
        raise InputError(f"{path}: missing (every image needs _exp, _val and _aro annotations)") from None
    except (ValueError, OSError, TypeError) as e:
        raise InputError(f"{path}: not a .npy file holding one number: {e}") from None


def _read_per_image(root: Path, split: Split) -> AffectNetSplit:
    base = root / SPLIT_DIRS[split]
    images, ann = base / "images", base / "annotations"
    if not images.is_dir():
        raise InputError(f"{images}: missing (per-image layout: {SPLIT_DIRS[split]}/images and /annotations)")
    files = sorted(
        (p for p in images.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES),
        key=lambda p: (len(p.stem), p.stem),  # numeric ids in numeric order
    )
    rows = _Rows()
    for p in _progress(files, f"read {SPLIT_DIRS[split]} annotations"):
        a = ann / p.stem
        expr = _npy_scalar(Path(f"{a}_exp.npy"))
        val = _npy_scalar(Path(f"{a}_val.npy"))
        aro = _npy_scalar(Path(f"{a}_aro.npy"))
        lnd = Path(f"{a}_lnd.npy")
        lmk = NAN_LMK
        if lnd.is_file():
            try:
                values = np.asarray(np.load(lnd, allow_pickle=False), dtype=np.float64).reshape(-1)
            except (ValueError, OSError, TypeError) as e:
                raise InputError(f"{lnd}: not a .npy file of landmark coordinates: {e}") from None
            lmk = _landmarks(values, str(lnd))
        rows.add(f"{a}_{{exp,val,aro}}.npy", p.relative_to(root).as_posix(), expr, val, aro, NAN_BOX, lmk)
    return rows.finish(root, split, "per_image")


def _progress(items: list, desc: str):
    if len(items) < 20_000:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="image")


def _drop_missing_images(rows: _Rows, root: Path) -> _Rows:
    """Listed images that are not on disk are skipped with a count (copies of AffectNet often lack a few)."""
    present = [(root / p).is_file() for p in rows.paths]
    if all(present):
        return rows
    keep = [i for i, ok in enumerate(present) if ok]
    first = rows.paths[present.index(False)]
    rows.skipped[f"image missing (e.g. {first})"] += len(rows.paths) - len(keep)
    for name in ("paths", "expression", "va", "box", "landmarks"):
        values = getattr(rows, name)
        setattr(rows, name, [values[i] for i in keep])
    return rows
