"""IoU tracker: hand-made boxes moving across frames (STYLE.md 14), gaps, crossing tracks, reset."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.faces.tracker import IoUTracker, iou_matrix


def box(x: float, y: float, s: float = 40.0) -> list[float]:
    return [x, y, x + s, y + s]


def test_iou_matrix_hand_computed():
    a = np.array([box(0, 0, 10)])
    b = np.array([box(5, 0, 10), box(20, 20, 10), box(0, 0, 10)])
    # overlap 5 x 10 = 50; union 100 + 100 - 50 = 150
    np.testing.assert_allclose(iou_matrix(a, b), [[50 / 150, 0.0, 1.0]])
    assert iou_matrix(a, np.zeros((0, 4))).shape == (1, 0)


def test_two_faces_moving_keep_their_ids_through_an_empty_frame():
    tr = IoUTracker(iou_min=0.3, max_gap=2)
    ids = []
    for f in range(6):
        if f == 3:  # the detector missed both faces in this frame
            ids.append(tr.update(np.zeros((0, 4))).tolist())
            continue
        # left face drifts right by 4 px a frame, right face left; given right-first to check order independence
        ids.append(tr.update(np.array([box(200 - 4 * f, 50), box(10 + 4 * f, 50)])).tolist())
    assert ids == [[0, 1], [0, 1], [0, 1], [], [0, 1], [0, 1]]


def test_gap_longer_than_max_gap_starts_a_new_track():
    tr = IoUTracker(iou_min=0.3, max_gap=1)
    assert tr.update(np.array([box(0, 0)])).tolist() == [0]
    tr.update(np.zeros((0, 4)))
    tr.update(np.zeros((0, 4)))  # two empty frames > max_gap 1
    assert tr.update(np.array([box(0, 0)])).tolist() == [1]


def test_a_far_box_starts_a_track_and_one_box_continues_one_track():
    tr = IoUTracker(iou_min=0.3, max_gap=5)
    tr.update(np.array([box(0, 0)]))
    # two boxes near the old one: only the better one continues track 0
    assert tr.update(np.array([box(20, 0), box(2, 0)])).tolist() == [1, 0]
    assert tr.update(np.array([box(300, 300)])).tolist() == [2]


def test_recent_lists_tracks_matched_in_the_latest_frame_and_reset_restarts_ids():
    tr = IoUTracker(max_gap=3)
    tr.update(np.array([box(0, 0), box(100, 0)]))
    tr.update(np.array([box(1, 0)]))
    ids, boxes = tr.recent()
    assert ids.tolist() == [0]
    np.testing.assert_allclose(boxes, [box(1, 0)])
    tr.reset()
    assert tr.recent()[0].size == 0
    assert tr.update(np.array([box(100, 0)])).tolist() == [0]


@pytest.mark.parametrize("n", [0, 1, 3])
def test_ids_are_one_per_box_and_distinct(n):
    tr = IoUTracker()
    ids = tr.update(np.array([box(100 * i, 0) for i in range(n)]).reshape(-1, 4))
    assert ids.shape == (n,) and len(set(ids.tolist())) == n
