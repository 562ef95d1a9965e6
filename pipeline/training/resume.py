"""Resume checkpoints of both training loops: the state after the last complete epoch, written whole or not at all,
and read back only by a run with the same fingerprint (params, inputs, start weights: whatever decides the result).

A document is a dict of tensors and plain values (``torch.load(weights_only=True)`` reads it) holding at least
``format`` and ``fingerprint``; what else it holds is the loop's own business.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from pipeline.common.outputs import atomic_path


def save(path: Path, doc: Mapping[str, Any]) -> None:
    """Write ``doc`` to ``path`` through a temporary file (a run killed while saving keeps the previous state)."""
    with atomic_path(Path(path)) as tmp:
        torch.save(dict(doc), tmp)


def load(path: Path, fmt: str, fingerprint: str, who: str) -> dict[str, Any] | None:
    """The document at ``path`` when it is of format ``fmt`` and made by a run with ``fingerprint``; else None, with
    one line (prefixed ``who``) saying why the run starts over. No file: None, silently."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        doc = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - a damaged file (a kill mid-write cannot make one: atomic) starts over
        print(f"{who}: {path} is unreadable ({type(e).__name__}); starting over", flush=True)
        return None
    if not isinstance(doc, dict) or doc.get("format") != fmt or doc.get("fingerprint") != fingerprint:
        print(f"{who}: {path} was made with other inputs or params; starting over", flush=True)
        return None
    return doc
