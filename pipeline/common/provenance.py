"""What produced a run: the code version and the library versions, recorded in stores, checkpoints and metrics.

Not part of any fingerprint: a new commit that leaves an extractor's code unchanged must not rebuild a 26 GB store
(the extractors' own ``code_version`` digest decides that).
"""

from __future__ import annotations

import functools
import platform
import subprocess
from pathlib import Path
from typing import Any

import pipeline

_PACKAGE_DIR = Path(pipeline.__file__).resolve().parent
# the weights digest recorded for a network that ran without a weights file (stores, checkpoints, metrics)
RANDOM_INIT = "random-init"


@functools.lru_cache(maxsize=1)
def code_commit() -> str | None:
    """``git rev-parse HEAD`` of the checkout the package runs from, with ``-dirty`` when files under ``pipeline/``
    differ from it; None when the package is not in a git checkout (an installed wheel) or git is missing."""
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "."], cwd=_PACKAGE_DIR, capture_output=True, text=True, timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return f"{head}-dirty" if dirty else head


def record() -> dict[str, Any]:
    """A JSON-able description of the software that made a run."""
    import numpy
    import torch

    return {
        "code_commit": code_commit(),
        "package_version": pipeline.__version__,
        "python": platform.python_version(),
        "torch": str(torch.__version__),  # a str subclass that torch.load(weights_only=True) refuses
        "numpy": str(numpy.__version__),
    }
