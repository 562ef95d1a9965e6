"""The paper's published numbers (Yu et al., ABAW6, arXiv 2403.12425), shipped as package data (``tables.json``).

Transcribed from the paper's text; read here so that reports print them beside ours and nothing is typed twice:
- Table 2, the module ablation: mean CCC (valence and arousal averaged) of each LA-SE / TCN / Transformer
  combination on Aff-Wild2, published in percent and returned here as a fraction (0.6356, not 63.56), the unit of
  ``metrics/cv.json``;
- Table 3, 6-fold cross-validation on randomly segmented annotated data: valence and arousal CCC per fold.
"""

from __future__ import annotations

import functools
import json
from importlib import resources
from typing import Any

Combo = tuple[bool, bool, bool]  # (lase, tcn, transformer)


@functools.lru_cache(maxsize=1)
def tables() -> dict[str, Any]:
    """The whole ``tables.json`` document (``source`` holds the citation)."""
    return json.loads(resources.files("pipeline.scoring").joinpath("paper_tables.json").read_text(encoding="utf-8"))


def citation() -> str:
    return str(tables()["source"]).split(";")[0]


def table2() -> dict[Combo, float]:
    """Mean CCC per ``(lase, tcn, transformer)`` switch combination, as a fraction (Table 2 / 100)."""
    rows = tables()["table2_ablation_mean_ccc_percent"]["rows"]
    return {(r["lase"], r["tcn"], r["transformer"]): round(r["ccc"] / 100.0, 6) for r in rows}


def table2_note() -> str:
    """What the paper itself says differently about Table 2 (the full model: 63.56 in the table, 63.71 in 4.2)."""
    return str(tables()["table2_ablation_mean_ccc_percent"]["note"])


def table3() -> dict[int, dict[str, float]]:
    """``{fold: {"valence", "arousal", "mean"}}`` CCC of the paper's 6-fold cross-validation (its folds are its own
    random segmentation of Aff-Wild2: fold k there and fold k here hold different data)."""
    out = {}
    for r in tables()["table3_folds"]["rows"]:
        v, a = float(r["valence"]), float(r["arousal"])
        out[int(r["fold"])] = {"valence": v, "arousal": a, "mean": round((v + a) / 2.0, 6)}
    return out
