"""MTCNN detector: geometry helpers by hand, batch = frames stacked, real faces from ../shared/realmedia."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from pipeline.faces import mtcnn as M
from pipeline.faces.align import TEMPLATE, align_face
from pipeline.io.media import decode_frames


@pytest.fixture(scope="module")
def detector() -> M.MTCNN:
    return M.MTCNN(min_face=20)


def read_rgb(path) -> np.ndarray:
    return cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)


# ---------------------------------------------------------------------------------------------- by hand
def test_nms_union_and_min_hand_computed():
    boxes = np.array([[0, 0, 9, 9], [5, 0, 14, 9], [0, 0, 4, 4], [50, 50, 59, 59]], dtype=float)
    scores = np.array([0.9, 0.8, 0.7, 0.6])
    # box 1 overlaps box 0 by 5 x 10 = 50 of union 150 (0.33); box 2 lies inside box 0: 25 / 100 union (0.25), 1.0 "min"
    assert M.nms(boxes, scores, 0.3).tolist() == [0, 2, 3]
    assert M.nms(boxes, scores, 0.2).tolist() == [0, 3]
    assert M.nms(boxes, scores, 0.5).tolist() == [0, 1, 2, 3]
    assert M.nms(boxes, scores, 0.5, "min").tolist() == [0, 1, 3]  # box 1: 50 / 100 = 0.5, not above
    assert M.nms(boxes, scores, 0.4, "min").tolist() == [0, 3]
    assert M.nms(np.zeros((0, 4)), np.zeros(0), 0.5).tolist() == []


def test_square_regress_and_pyramid():
    np.testing.assert_allclose(M.square(np.array([[10.0, 20.0, 30.0, 60.0]])), [[0.0, 20.0, 40.0, 60.0]])
    # offsets are in units of the inclusive width/height (11 x 21 here)
    np.testing.assert_allclose(M.regress(np.array([[0.0, 0.0, 10.0, 20.0]]), np.array([[0.1, -0.1, 0.0, 0.5]])),
                               [[1.1, -2.1, 10.0, 30.5]])
    scales = M.pyramid(100, 200, 20.0)  # from 12/20 = 0.6 while 100 * scale >= 12
    np.testing.assert_allclose(scales, 0.6 * M.PYRAMID_FACTOR ** np.arange(len(scales)))
    assert 100 * scales[-1] >= 12 and 100 * scales[-1] * M.PYRAMID_FACTOR < 12


def test_model_files_come_from_the_installed_wheel_and_match_its_record():
    files = M.model_files()
    assert set(files) == {"pnet", "rnet", "onet"}
    for path, digest in files.values():
        assert path.is_file() and path.suffix == ".onnx" and len(digest) == 64
    assert len(M.weights_digest()) == 64


def test_min_face_fraction_and_floor(detector):
    assert M.MTCNN(min_face=0.1).min_face_px(480, 640) == pytest.approx(48.0)
    assert M.MTCNN(min_face=0.01).min_face_px(480, 640) == 20.0  # floor
    assert detector.min_face_px(480, 640) == 20.0


# --------------------------------------------------------------------------------------------- real faces
@pytest.mark.realmedia
def test_batch_equals_frames_stacked_and_an_empty_frame_keeps_its_slot(realmedia, detector):
    frames = [rgb for i, (_, rgb) in zip(range(4), decode_frames(realmedia / "videos" / "pyfeat_single_face.mp4"))]
    frames.insert(2, np.zeros_like(frames[0]))  # a black frame: no face
    batch = detector.detect_batch(frames)
    assert len(batch) == len(frames) and len(batch[2]) == 0
    for f, b in zip(frames, batch):
        one = detector.detect(f)
        assert len(one) == len(b)
        np.testing.assert_allclose(b.boxes, one.boxes, atol=1e-3)
        np.testing.assert_allclose(b.landmarks, one.landmarks, atol=1e-3)
        np.testing.assert_allclose(b.scores, one.scores, atol=1e-5)
    assert all(len(b) == 1 for i, b in enumerate(batch) if i != 2)


@pytest.mark.realmedia
def test_two_people_found_and_ordered_left_to_right(realmedia, detector):
    faces = detector.detect(read_rgb(realmedia / "images" / "face_recognition_two_people.jpg")).left_to_right()
    assert len(faces) == 2
    cx = (faces.boxes[:, 0] + faces.boxes[:, 2]) / 2
    assert cx[0] < cx[1] and faces.boxes[0, 2] < faces.boxes[1, 0]  # left face entirely left of the right one
    for lm, b in zip(faces.landmarks, faces.boxes):
        # landmarks inside their own box; left eye left of the right eye, eyes above the mouth
        assert (lm[:, 0] >= b[0]).all() and (lm[:, 0] <= b[2]).all() and (lm[:, 1] >= b[1]).all() and (lm[:, 1] <= b[3]).all()
        assert lm[0, 0] < lm[1, 0] and lm[:2, 1].max() < lm[3:, 1].min()


@pytest.mark.realmedia
def test_eyes_of_an_aligned_crop_detected_again_lie_on_the_template(realmedia, detector):
    names = ["face_recognition_two_people.jpg", "face_recognition_obama.jpg", "face_recognition_biden.jpg",
             "pyfeat_single_face.jpg", "sadtalker_happy.png", "sadtalker_sad.png"]
    dists = []
    for name in names:
        img = read_rgb(realmedia / "images" / name)
        for lm in detector.detect(img).landmarks:
            again = detector.detect(align_face(img, lm))
            if not len(again):  # a small, blurred second face (obama.jpg) may not be found again at 112 px
                continue
            dists.append(np.linalg.norm(again.landmarks[0, :2] - TEMPLATE[:2], axis=1))
    d = np.array(dists)  # (faces, 2 eyes) in pixels of the 112 x 112 crop
    assert len(d) >= len(names)
    assert d.mean() < 3.0, d.round(2)  # on average within 3 px: MTCNN's own landmark noise is ~2 px
    assert d.max() < 5.0, d.round(2)



# ------------------------------------------------------------------------------------------------- devices
def test_providers_for_a_device(monkeypatch):
    """CUDA's provider where onnxruntime has it and the run is on a GPU; else the CPU's, with a note to say once."""
    import onnxruntime as ort

    assert M.providers_for("cpu") == (M.CPU_PROVIDERS, None)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    providers, note = M.providers_for("cuda")
    assert providers == M.CPU_PROVIDERS and "no CUDAExecutionProvider" in note and "onnxruntime-gpu" in note
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    providers, note = M.providers_for("cuda:1")
    assert providers == (("CUDAExecutionProvider", {"device_id": "1"}), "CPUExecutionProvider") and note is None


def test_detector_with_explicit_cpu_providers_finds_the_same_faces(realmedia):
    image = read_rgb(realmedia / "images" / "pyfeat_single_face.jpg")
    a = M.MTCNN(min_face=20, backend="onnxruntime").detect(image)
    b = M.MTCNN(min_face=20, backend="onnxruntime", providers=M.providers_for("cpu")[0]).detect(image)
    np.testing.assert_array_equal(a.boxes, b.boxes)
