"""Curves as PNG: labelled and predicted valence and arousal over time for a few validation trials of one fold
(``evaluate``), and a video's predicted curves with the valence-arousal plane (``analyze``).

Drawn on matplotlib's Agg canvas through ``matplotlib.figure.Figure`` (no pyplot state, no display), so it runs on a
headless machine and the image renders offline; ``dvc plots show`` embeds it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipeline.common.outputs import atomic_path

DIMS = ("valence", "arousal")
GAP_FACTOR = 1.5  # a step longer than this many median frame steps is a gap (unannotated frames): the line breaks


@dataclass(frozen=True)
class TrialCurves:
    """One validation trial: ``seconds`` (N,) frame times; ``label``, ``pred`` (N, 2) valence, arousal in [-1, 1];
    ``smoothed`` (N, 2) the prediction after ``postprocess`` or None when smoothing is off; ``ccc`` and
    ``ccc_smoothed`` the trial's own CCC per dimension (None where undefined)."""

    name: str
    seconds: np.ndarray
    label: np.ndarray
    pred: np.ndarray
    smoothed: np.ndarray | None
    ccc: dict[str, float | None]
    ccc_smoothed: dict[str, float | None] | None = None


def with_gaps(t: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(t, y)`` with a NaN row inserted after every step longer than :data:`GAP_FACTOR` median steps, so a line
    plot breaks where frames were not annotated instead of drawing a straight segment across the gap."""
    t = np.asarray(t, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if len(t) < 3:
        return t, y
    step = np.diff(t)
    gaps = np.flatnonzero(step > GAP_FACTOR * np.median(step)) + 1
    return np.insert(t, gaps, np.nan), np.insert(y, gaps, np.nan, axis=0)


def _fmt(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def draw(path: Path, title: str, trials: Sequence[TrialCurves], note: str | None = None) -> None:
    """Write ``path`` (PNG): one row per trial, valence left and arousal right; labels black, raw prediction blue,
    smoothed prediction orange. ``note`` (e.g. the random-init label) goes under the title. Written under a
    temporary name and renamed, so a PNG that exists is complete."""
    from matplotlib.figure import Figure

    rows = max(1, len(trials))
    fig = Figure(figsize=(12, 2.6 * rows + 0.9), layout="constrained")
    axes = fig.subplots(rows, 2, squeeze=False, sharey=True)
    fig.suptitle(title + (f"\n{note}" if note else ""), fontsize=10)
    for r, tr in enumerate(trials):
        for d, dim in enumerate(DIMS):
            ax = axes[r, d]
            t, y = with_gaps(tr.seconds, tr.label[:, d])
            ax.plot(t, y, color="black", lw=1.2, label="label")
            t, y = with_gaps(tr.seconds, tr.pred[:, d])
            ax.plot(t, y, color="tab:blue", lw=0.9, label="predicted")
            head = f"{tr.name}  {dim}  CCC {_fmt(tr.ccc.get(dim))}"
            if tr.smoothed is not None:
                t, y = with_gaps(tr.seconds, tr.smoothed[:, d])
                ax.plot(t, y, color="tab:orange", lw=0.9, label="smoothed")
                head += f" (smoothed {_fmt((tr.ccc_smoothed or {}).get(dim))})"
            ax.set_title(head, fontsize=9)
            ax.set_ylim(-1.05, 1.05)
            ax.axhline(0.0, color="0.8", lw=0.5, zorder=0)
            ax.grid(alpha=0.3)
            if r == rows - 1:
                ax.set_xlabel("time in the video (s)")
        axes[r, 0].set_ylabel("value")
    axes[0, 1].legend(loc="upper right", fontsize=8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=80)


def spans(mask: np.ndarray) -> list[tuple[int, int]]:
    """``[(start, stop), ...]`` index ranges where ``mask`` (n,) is True."""
    d = np.diff(np.concatenate([[0], mask.astype(np.int8), [0]]))
    return list(zip(np.flatnonzero(d == 1).tolist(), np.flatnonzero(d == -1).tolist()))


def draw_video(path: Path, times: np.ndarray, pred: np.ndarray, face: np.ndarray, title: str) -> None:
    """Write ``path`` (PNG) for one analysed video: valence and arousal ``pred`` (N, 2) over ``times`` (N,) seconds,
    spans without a face (``face`` (N,) bool False) shaded, and the valence-arousal plane coloured by time."""
    from matplotlib.figure import Figure
    from matplotlib.patches import Circle

    fig = Figure(figsize=(12, 4.2), layout="constrained")
    grid = fig.add_gridspec(1, 3)
    ax = fig.add_subplot(grid[0, :2])
    step = float(np.median(np.diff(times))) if len(times) > 1 else 0.04
    for k, (s, e) in enumerate(spans(~face)):
        ax.axvspan(times[s] - step / 2, times[e - 1] + step / 2, color="0.85", lw=0, label="no face" if k == 0 else None)
    ax.plot(times, pred[:, 0], color="tab:blue", lw=1.2, label="valence")
    ax.plot(times, pred[:, 1], color="tab:red", lw=1.2, label="arousal")
    ax.set(xlabel="time (s)", ylabel="value", ylim=(-1.05, 1.05), xlim=(times[0], max(times[-1], times[0] + step)))
    ax.axhline(0, color="0.5", lw=0.6)
    ax.legend(loc="upper right", fontsize=8, ncol=3)
    plane = fig.add_subplot(grid[0, 2])
    plane.add_patch(Circle((0, 0), 1, fill=False, color="0.6", lw=0.8))
    plane.axhline(0, color="0.6", lw=0.6)
    plane.axvline(0, color="0.6", lw=0.6)
    plane.plot(pred[:, 0], pred[:, 1], color="0.5", lw=0.6, alpha=0.7)
    sc = plane.scatter(pred[:, 0], pred[:, 1], c=times, s=6, cmap="viridis", zorder=3)
    fig.colorbar(sc, ax=plane, label="time (s)", shrink=0.8)
    plane.set(xlim=(-1.05, 1.05), ylim=(-1.05, 1.05), xlabel="valence", ylabel="arousal", aspect="equal")
    fig.suptitle(title, fontsize=10)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
