"""Result rows as they become final: ``frame,time_s,valence,arousal,face`` (live adds ``latency_s``).

A file's CSV is written to ``<name>.csv.part`` as rows come and renamed to ``<name>.csv`` when its last row is in,
so a result under the final name is always whole; the figure is drawn from the finished CSV
(:func:`draw_from_csv`). Live rows go to stdout or a file, flushed row by row.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

import numpy as np

from pipeline.scoring.curves import draw_video

HEADER = ["frame", "time_s", "valence", "arousal", "face"]
LIVE_HEADER = [*HEADER, "latency_s"]


def format_rows(first: int, times: np.ndarray, values: np.ndarray, face: np.ndarray) -> list[str]:
    """CSV lines (no newline) for frames ``first, first + 1, ...`` (0-based; written from 1): ``times`` (k,)
    seconds, ``values`` (k, 2) valence and arousal, ``face`` (k,) bool."""
    return [
        f"{first + i + 1},{t:.6f},{v:.6f},{a:.6f},{int(m)}"
        for i, (t, (v, a), m) in enumerate(zip(times, values, face))
    ]


class CsvRows:
    """One trial's CSV, written as rows come (see the module docstring): open it with :meth:`result` (a file's
    ``<name>.csv``, through ``.part``) or :meth:`live` (stdout or a file, flushed row by row, with latency)."""

    def __init__(self, f: TextIO, live: bool, path: Path | None = None, part: Path | None = None) -> None:
        self.f, self.live, self.path, self.part = f, live, path, part
        self.rows = 0
        self._line(",".join(LIVE_HEADER if live else HEADER))

    @classmethod
    def result(cls, path: Path) -> "CsvRows":
        part = path.with_name(path.name + ".part")
        return cls(open(part, "w", newline=""), False, path, part)

    @classmethod
    def live_target(cls, target: str) -> "CsvRows":
        """``-``: stdout; anything else: that file, written under its own name."""
        if target == "-":
            return cls(sys.stdout, True)
        return cls(open(target, "w", newline=""), True, Path(target))

    def _line(self, line: str) -> None:
        self.f.write(line + "\n")
        if self.live:
            self.f.flush()

    def write(self, times: np.ndarray, values: np.ndarray, face: np.ndarray, latency: np.ndarray | None = None) -> None:
        """The next ``len(values)`` rows; ``latency`` (k,) seconds from each frame's arrival (live)."""
        lines = format_rows(self.rows, times, values, face)
        for i, line in enumerate(lines):
            self._line(line if latency is None else f"{line},{latency[i]:.3f}")
        self.rows += len(lines)

    def close(self, complete: bool = True) -> Path | None:
        """Close the file; a complete result gets its final name (returned), an incomplete one is removed."""
        if self.f is sys.stdout:
            self.f.flush()
            return None
        self.f.close()
        if self.part is None:  # live: the file is its own name
            return self.path
        if not complete:
            self.part.unlink(missing_ok=True)
            return None
        self.part.replace(self.path)
        return self.path


def read_csv(path: Path) -> np.ndarray:
    """The rows of a result CSV as float64 (N, 5) (or (N, 6) live)."""
    x = np.loadtxt(path, delimiter=",", skiprows=1, ndmin=2)
    return x.reshape(-1, len(HEADER)) if x.size == 0 else x


def draw_from_csv(path: Path, title: str) -> Path:
    """``<path stem>.png`` beside the finished CSV ``path``: the curves over time and the valence-arousal plane."""
    rows = read_csv(path)
    png = path.with_suffix(".png")
    draw_video(png, rows[:, 1], rows[:, 2:4], rows[:, 4].astype(bool), title)
    return png
