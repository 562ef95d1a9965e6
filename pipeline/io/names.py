"""Trial and video names: they become file and HDF5 group names under the output folder, so each must be a single
plain name. ``..``, ``.``, absolute paths and path separators (``/``, ``\\``) would read or write outside
``cropped_aligned/<trial>`` or ``data/prepared/`` (or, in HDF5, create nested groups) and are refused."""

from __future__ import annotations

from pipeline.common.errors import InputError


def check_name(name: str, where: str) -> str:
    """``name`` unchanged if it is a single plain file name; else an :class:`InputError` that starts with ``where``
    (the file, and line, the name came from)."""
    bad = (
        not name
        or name in (".", "..")
        or any(c in name for c in ("/", "\\", "\0"))
        or name != name.strip()
    )
    if bad:
        raise InputError(f"{where}: {name!r} is not a plain name (no path separators, '..', '.' or surrounding spaces)")
    return name
