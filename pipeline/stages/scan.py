"""``scan``: reduce a dataset tree to a small manifest that stands in for it as `prepare`'s dependency.

DVC hashes every file of a directory dependency and looks each one up on every ``dvc status`` (about 0.15 ms per
file): with Aff-Wild2's ~2.8 M crops that is minutes of waiting for a no-op. `scan` lists the tree instead
(``os.scandir``, one ``stat`` per file, about a second per 200 000 files) and writes ``data/manifest.json``:

- ``annotations`` and ``test_set.txt``: sha256 of each file (small, and edits matter);
- ``videos``: name and size of each video;
- ``crops``: per trial folder, the number of crops and a sha256 over their sorted names and sizes.

An added, removed or replaced crop, video or annotation changes the manifest, so `prepare` re-runs; an untouched
tree gives a byte-identical manifest, so it does not. A crop rewritten in place with exactly the same size is not
seen (force with ``dvc repro -f prepare``); modification times are left out on purpose, so that restoring the
same files (``dvc checkout``, a copy) does not look like a change.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from pipeline.common.errors import InputError
from pipeline.common.outputs import write_atomic
from pipeline.io.annotations import ANNOTATION_DIR
from pipeline.io.media import VIDEO_SUFFIXES


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def folder_digest(folder: Path) -> tuple[int, str]:
    """(number of files, sha256 over sorted ``name:size`` lines) of the files directly in ``folder``."""
    h = hashlib.sha256()
    entries = sorted((e.name, e.stat().st_size) for e in os.scandir(folder) if e.is_file())
    for name, size in entries:
        h.update(f"{name}:{size}\n".encode())
    return len(entries), h.hexdigest()


def manifest(root: Path) -> dict:
    """The manifest of dataset ``root`` (see the module docstring)."""
    if not root.is_dir():
        raise InputError(f"{root}: data.root does not exist or is not a folder")
    ann = root / ANNOTATION_DIR
    out: dict = {"annotations": {}, "test_set": None, "videos": {}, "crops": {}}
    if ann.is_dir():
        for p in sorted(ann.rglob("*.txt")):
            out["annotations"][p.relative_to(root).as_posix()] = _sha256(p)
    if (root / "test_set.txt").is_file():
        out["test_set"] = _sha256(root / "test_set.txt")
    if (root / "videos").is_dir():
        for p in sorted((root / "videos").rglob("*")):
            if p.suffix.lower() in VIDEO_SUFFIXES and p.is_file():
                out["videos"][p.relative_to(root).as_posix()] = p.stat().st_size
    crops = root / "cropped_aligned"
    if crops.is_dir():
        for d in sorted(e.name for e in os.scandir(crops) if e.is_dir()):
            n, digest = folder_digest(crops / d)
            out["crops"][d] = [n, digest]
    return out


def run(root: Path, out: Path) -> None:
    """Write the manifest of ``root`` to ``out``; rewrite it only when it changed."""
    text = json.dumps(manifest(root), indent=1, sort_keys=True) + "\n"
    if out.exists() and out.read_text() == text:
        print(f"{out}: unchanged")
        return
    write_atomic(out, text)
    print(f"{out}: written")
