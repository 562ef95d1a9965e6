"""Face tracks across frames: greedy IoU association of each frame's detections with the live tracks.

The tracker sees boxes only (STYLE.md 13): :meth:`IoUTracker.update` takes a frame's boxes and returns one track id
per box. A track that finds no box stays alive for ``max_gap`` frames, so a face missed for a few frames (a blink of
the detector, a hand in front) keeps its id; after that a box at the same place starts a new track. Ids count from 0
per instance; make one tracker per video (or call :meth:`reset`).

Association (the IoU tracker of Bochinski et al., AVSS 2017, with gaps bridged as in SORT's ``max_age``): pairs of
(track, box) are taken in decreasing IoU between the box and the track's last box, each track and box at most once,
while the IoU is at least ``iou_min``; unmatched boxes start tracks.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(n, m) intersection over union of boxes ``a`` (n, 4) and ``b`` (m, 4), x1, y1, x2, y2 (continuous extents)."""
    if not len(a) or not len(b):
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area_a = (a[:, 2] - a[:, 0]) * (a[:, 3] - a[:, 1])
    area_b = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    return inter / np.maximum(area_a[:, None] + area_b[None, :] - inter, 1e-9)


@dataclass
class _Live:
    id: int
    box: np.ndarray  # (4,) last matched box
    last: int  # frame index of the last match


@dataclass
class IoUTracker:
    """``iou_min``: least IoU between a box and a track's last box to continue it; ``max_gap``: frames a track may
    go unmatched and still continue."""

    iou_min: float = 0.3
    max_gap: int = 12
    _live: list[_Live] = field(default_factory=list)
    _next_id: int = 0
    _frame: int = -1

    def reset(self) -> None:
        self._live, self._next_id, self._frame = [], 0, -1

    def update(self, boxes: np.ndarray) -> np.ndarray:
        """Boxes (N, 4) of the next frame -> int64 (N,) track ids."""
        self._frame += 1
        f = self._frame
        self._live = [t for t in self._live if f - t.last <= self.max_gap + 1]
        boxes = np.asarray(boxes, dtype=np.float64).reshape(-1, 4)
        ids = np.full(len(boxes), -1, dtype=np.int64)
        if self._live and len(boxes):
            iou = iou_matrix(np.stack([t.box for t in self._live]), boxes)
            for flat in np.argsort(-iou, axis=None, kind="stable"):
                ti, bi = np.unravel_index(flat, iou.shape)
                if iou[ti, bi] < self.iou_min:
                    break
                if ids[bi] >= 0 or self._live[ti].last == f:
                    continue
                ids[bi] = self._live[ti].id
                self._live[ti].box, self._live[ti].last = boxes[bi], f
        for bi in np.flatnonzero(ids < 0):
            ids[bi] = self._next_id
            self._live.append(_Live(self._next_id, boxes[bi], f))
            self._next_id += 1
        return ids

    def recent(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids (k,), boxes (k, 4)) of the tracks matched in the latest frame: where to look in the next one."""
        now = [t for t in self._live if t.last == self._frame]
        if not now:
            return np.zeros(0, dtype=np.int64), np.zeros((0, 4))
        return np.array([t.id for t in now], dtype=np.int64), np.stack([t.box for t in now])
