"""Time arithmetic: frame -> seconds -> sample / analysis frame, audio masks, padding rules."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.timebase import (
    align_length,
    audio_mask,
    audio_source_rows,
    centred_example_start,
    frame_times,
    hop_frame,
    seconds_to_samples,
)


def test_frame_times_are_one_based():
    np.testing.assert_allclose(frame_times(np.array([1, 2, 26]), 25.0), [0.0, 0.04, 1.0])
    with pytest.raises(ValueError):
        frame_times(np.array([1]), 0)


def test_seconds_to_samples_rounds():
    assert seconds_to_samples(0.04).item() == 640
    assert seconds_to_samples(1 / 22.13).item() == round(16000 / 22.13)


def test_hop_frame_centred_and_offset():
    # librosa center=True, hop 160: frame k is centred on sample 160 k
    np.testing.assert_array_equal(hop_frame(np.array([0.0, 0.004, 0.006, 0.04]), 160), [0, 0, 1, 4])
    # half-way rounds up, the same everywhere (no banker's rounding)
    assert hop_frame(0.005, 160).item() == 1


def test_centred_example_is_within_half_a_hop():
    t = np.random.default_rng(0).uniform(0, 100, 1000)
    k0 = centred_example_start(t, hop=160, win=400, n_frames=96)
    centre = k0 * 160 + (95 * 160 + 400) / 2  # samples
    assert np.abs(centre - t * 16000).max() <= 80 + 1e-6
    # hand case: t = 1 s -> centre sample 16000 -> k0 = (16000 - 7800) / 160 = 51.25 -> 51
    assert centred_example_start(1.0, 160, 400, 96).item() == 51


def test_audio_mask_and_source_rows():
    t = frame_times(np.arange(1, 11), 10.0)  # 0.0 .. 0.9 s
    m = audio_mask(t, n_samples=8000)  # 0.5 s of audio
    np.testing.assert_array_equal(m, [1, 1, 1, 1, 1, 0, 0, 0, 0, 0])
    # past the end: repeat the last row with audio (paper 3.2)
    np.testing.assert_array_equal(audio_source_rows(m), [0, 1, 2, 3, 4, 4, 4, 4, 4, 4])
    # no audio at all: no source row
    none = audio_mask(t, 0)
    assert not none.any()
    np.testing.assert_array_equal(audio_source_rows(none), [-1] * 10)
    assert audio_source_rows(np.zeros(0, bool)).shape == (0,)


def test_align_length_pads_and_trims():
    x = np.arange(6).reshape(3, 2)
    np.testing.assert_array_equal(align_length(x, 5)[-1], [4, 5])
    assert align_length(x, 2).shape == (2, 2)
    with pytest.raises(ValueError):
        align_length(x[:0], 2)
