"""Tiny foundation models saved as a user's local files (pipeline/bench/stand_ins.py, which `bench extract` uses
too), and whether timm can be imported here."""

from __future__ import annotations

import torch

from pipeline.bench.stand_ins import (  # noqa: F401 - the tests' names for them
    onnx_audio,
    onnx_image,
    timm_image,
    transformers_audio,
    transformers_image,
)


def timm_importable() -> tuple[bool, str]:
    """Whether timm imports here, and if not, the one-line reason (torchvision built for another torch)."""
    try:
        import timm  # noqa: F401

        return True, ""
    except Exception as e:  # noqa: BLE001 - ImportError, or torchvision's RuntimeError
        return False, f"timm does not import beside torch {torch.__version__}: {type(e).__name__}: {str(e).splitlines()[0][:100]}"
