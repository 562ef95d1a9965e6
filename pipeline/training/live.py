"""Per-epoch curves of both training loops, written with dvclive under the stage's plots folder.

The whole history is written again after every epoch (a few rows per epoch: cheap), so a resumed run's curves have
neither gaps nor repeats: dvclive starts a fresh folder on each write. dvclive's own summary (``metrics.json``, the
last epoch) is removed: the stage's metrics file, which holds the best epoch, is the one summary, and the folder keeps
only the per-epoch ``plots/metrics/**.tsv`` that dvc.yaml declares.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path


def write_curves(plots_dir: Path | None, history: Sequence[Mapping[str, float | None]], skip: tuple[str, ...] = ("epoch",)) -> None:
    """One step per row of ``history`` (``{name: value}``, ``None`` written as NaN; keys in ``skip`` are not
    curves) under ``plots_dir``; nothing when ``plots_dir`` is None (benchmarks)."""
    if plots_dir is None:
        return
    from dvclive import (
        Live,  # imported here: dvclive costs a second of start-up that benchmarks need not pay
    )

    live = Live(dir=str(plots_dir), dvcyaml=None, save_dvc_exp=False, report=None)
    for row in history:
        for k, v in row.items():
            if k not in skip:
                live.log_metric(k, float("nan") if v is None else v)
        live.next_step()
    live.end()
    (Path(plots_dir) / "metrics.json").unlink(missing_ok=True)
