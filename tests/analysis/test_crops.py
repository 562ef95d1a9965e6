"""Crops in memory are the crops ``prepare`` reads from the ``crop`` stage's files, filled the same way."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from pipeline.analysis.crops import CropFill, decode_crop, face_crop, face_jpeg
from pipeline.faces.align import TEMPLATE
from pipeline.faces.crops import encode_crop
from pipeline.stages.prepare import TrialWriter, load_crop


def test_face_crop_is_the_jpeg_file_read_back(tmp_path):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (240, 320, 3), dtype=np.uint8)
    landmarks = TEMPLATE * 1.3 + np.array([60.0, 40.0])
    path = tmp_path / "00001.jpg"
    path.write_bytes(face_jpeg(image, landmarks, 95))
    np.testing.assert_array_equal(face_crop(image, landmarks, 95, 48), load_crop(path, 48))
    assert decode_crop(encode_crop(np.zeros((112, 112, 3), np.uint8), 90), 32).shape == (32, 32, 3)


@pytest.mark.parametrize("mode", ["last", "zero"])
def test_fill_over_chunks_equals_prepares_writer(mode):
    rng = np.random.default_rng(1)
    n, size = 50, 8
    crops = rng.integers(1, 256, (n, size, size, 3), dtype=np.uint8)
    face = rng.random(n) < 0.4
    face[:7] = False  # the trial starts without a face
    raw = np.where(face[:, None, None, None], crops, 0).astype(np.uint8)
    with h5py.File("mem.h5", "w", driver="core", backing_store=False) as h5:
        ds = h5.create_dataset("frames", shape=(n, size, size, 3), dtype=np.uint8)
        writer = TrialWriter(ds, mode)
        for lo in range(0, n, 16):
            writer.add(lo, raw[lo : lo + 16].copy(), face[lo : lo + 16])
        writer.finish()
        want = ds[:]
    first = crops[np.argmax(face)]  # the face pass knows the trial's first face
    fill = CropFill(mode, first)
    got = np.concatenate([fill(raw[lo : lo + 5].copy(), face[lo : lo + 5]) for lo in range(0, n, 5)])
    np.testing.assert_array_equal(got, want)
