"""Where stages write: a read-only or full output folder is a one-line error naming the path, never a traceback;
and every file is written whole or not at all.

:func:`atomic_path` / :func:`write_atomic` write under ``<name>.tmp`` beside the target and rename it over the target
when complete, so a killed run never leaves a half-written output under the final name. :func:`guard` wraps a stage's run: before any work it proves each output folder writable (a read-only folder fails
at once, not after an hour of extraction), and a write that fails for lack of space or permission becomes a
:class:`~pipeline.common.errors.PipelineError`. Stages write under temporary names and rename when complete, so what an
earlier run left, and every other stage's output, stays intact.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pipeline.common.errors import PipelineError

LOW_SPACE = 16 * 2**20  # bytes free below which a failed write is reported as a full disk
_NO_SPACE = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG}
_NO_WRITE = {errno.EROFS, errno.EACCES, errno.EPERM}


class OutputError(PipelineError):
    """An output that cannot be written: no space left, a read-only or forbidden folder."""


def _folder(path: Path) -> Path:
    """The folder a stage writes ``path`` into: ``path`` itself for a folder-like output, else its parent."""
    return path if path.is_dir() or not path.suffix else path.parent


def check_writable(path: Path) -> None:
    """Create ``path``'s folder if needed and write and remove a probe file there."""
    folder = _folder(Path(path))
    probe = folder / f".write-probe-{uuid.uuid4().hex}"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise OutputError(f"{folder}: cannot write here ({e.strerror or e})") from None


def _free_bytes(path: Path) -> int | None:
    p = _folder(Path(path))
    while not p.exists() and p != p.parent:
        p = p.parent
    try:
        return shutil.disk_usage(p).free
    except OSError:
        return None


@contextlib.contextmanager
def guard(*paths: Path) -> Iterator[None]:
    """Check ``paths`` (a stage's outputs) are writable, then turn write failures inside the block into one line."""
    paths = tuple(Path(p) for p in paths)
    for p in paths:
        check_writable(p)
    try:
        yield
    except (OSError, RuntimeError) as e:
        code = getattr(e, "errno", None)
        full = [p for p in paths if (free := _free_bytes(p)) is not None and free < LOW_SPACE]
        if code in _NO_SPACE or full:
            where = full[0] if full else paths[0]
            raise OutputError(
                f"{where}: no space left on the device while writing; free some space and re-run "
                f"(finished outputs of earlier stages are untouched, a partial one is written under a temporary name "
                f"or resumed)"
            ) from None
        if code in _NO_WRITE:
            raise OutputError(f"{getattr(e, 'filename', None) or paths[0]}: cannot write ({os.strerror(code)})") from None
        raise



@contextlib.contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """``with atomic_path(out) as tmp``: write ``tmp`` (``<out>.tmp``, in ``out``'s folder, which is created); on
    success it replaces ``out`` in one rename, on an error it is removed and ``out`` stays as it was."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        yield tmp
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    os.replace(tmp, path)


def write_atomic(path: Path, data: bytes | str) -> None:
    """Write ``data`` (text is UTF-8) to ``path`` through :func:`atomic_path`."""
    with atomic_path(path) as tmp:
        if isinstance(data, str):
            tmp.write_text(data, encoding="utf-8")
        else:
            tmp.write_bytes(data)


def write_json(path: Path, doc: Any, sort_keys: bool = False) -> None:
    """``doc`` as indented JSON with a final newline, written through :func:`atomic_path`."""
    write_atomic(path, json.dumps(doc, indent=1, sort_keys=sort_keys) + "\n")


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """``with atomic_dir(final) as tmp``: fill the folder ``tmp``; on success it replaces ``final`` whole (no stale
    file of an earlier run stays), on an error ``final`` is left as it was."""
    final = Path(final)
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        os.replace(final, old)
    os.replace(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
