"""Time arithmetic: frame -> seconds -> sample / analysis frame, audio masks, padding rules."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from pipeline.io.timebase import (
    Timestamps,
    audio_mask,
    audio_source_rows,
    centred_example_start,
    frame_span,
    frame_start,
    frame_times,
    hop_frame,
    ms_to_samples,
    n_centred_frames,
    seconds_to_samples,
    timestamps_from_pts,
    track_seconds,
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


def test_late_track_frames_before_it_have_no_audio():
    """Audio starting 0.25 s after the first frame (offset +0.25): frame f at (f - 1) / 10 s reads sample
    round((t - 0.25) * 16000); frames 1..3 come before the track (no row, -1), 0.5 s of audio covers frames 4..8
    (t = 0.3 .. 0.7 s -> samples 800 .. 7200), later frames repeat frame 8's row."""
    t = track_seconds(frame_times(np.arange(1, 11), 10.0), 0.25)
    np.testing.assert_allclose(t[:4], [-0.25, -0.15, -0.05, 0.05])
    np.testing.assert_array_equal(seconds_to_samples(t)[3:5], [800, 2400])
    m = audio_mask(t, n_samples=8000)
    np.testing.assert_array_equal(m, [0, 0, 0, 1, 1, 1, 1, 1, 0, 0])
    np.testing.assert_array_equal(audio_source_rows(m), [-1, -1, -1, 3, 4, 5, 6, 7, 7, 7])
    # audio starting before the picture (offset -0.5 s): frame 1 reads sample 8000
    assert seconds_to_samples(track_seconds(frame_times(np.array([1]), 25.0), -0.5)).item() == 8000


def test_timestamps_constant_wrong_stated_and_variable_rates():
    tb = Fraction(1, 15360)
    # constant 30 fps (512 ticks), in any order (B-frames): the stated rate holds, nothing stored
    pts = [0, 1024, 512, 1536, 2048]
    assert timestamps_from_pts(pts, tb, 30.0) == (30.0, None)
    # a wrong stated rate: the frames' own constant rate wins
    fps, ts = timestamps_from_pts(pts, tb, 25.0)
    assert (fps, ts) == (30.0, None)
    # rounding to a 1 ms clock (29.97 fps in a 1/1000 time base) is still constant rate
    assert timestamps_from_pts([round(i * 1000 / 29.97) for i in range(300)], Fraction(1, 1000), 29.97)[1] is None
    # variable: 3 frames at 1/30 s then 2 at 1/24 s (the real pyfeat_face_noface.mov alternates like this)
    pts = [100, 612, 1124, 1764, 2404]
    fps, ts = timestamps_from_pts(pts, tb, 26.4)
    assert ts == Timestamps((1, 15360), ((512, 2), (640, 2)))
    assert fps == 26.4  # the stated mean rate; without one, (n - 1) / span
    assert timestamps_from_pts(pts, tb, None)[0] == pytest.approx(4 / (2304 / 15360))
    np.testing.assert_allclose(ts.seconds(), [0, 512 / 15360, 1024 / 15360, 1664 / 15360, 2304 / 15360])
    assert ts.n_frames == 5 and Timestamps.from_json(ts.to_json()) == ts
    # frame numbers index the recorded times
    np.testing.assert_allclose(frame_times(np.array([2, 5]), fps, ts), [512 / 15360, 2304 / 15360])
    with pytest.raises(ValueError, match="outside the video's 1..5"):
        frame_times(np.array([6]), fps, ts)
    # one frame: the stated rate
    assert timestamps_from_pts([7], tb, 25.0) == (25.0, None)


def test_sample_spans_of_analysis_frames():
    assert ms_to_samples(25.0) == 400 and ms_to_samples(10.0) == 160
    assert n_centred_frames(16000, 160) == 101  # librosa center=True: 1 + n // hop
    # centred frames 0..2 (librosa): window 400 centred on 0, 160, 320 -> samples [-200, 520)
    assert frame_span(0, 3, 160, 400, centred=True) == (-200, 520)
    # uncentred VGGish frames 51..146: [8160, 8160 + 95 * 160 + 400)
    assert frame_span(51, 147, 160, 400, centred=False) == (8160, 23760)
    np.testing.assert_array_equal(frame_start(np.array([0, 1, 2]), 160, 400, centred=False), [0, 160, 320])


def test_hidden_frames_of_the_wav2vec2_encoder():
    from pipeline.io.timebase import conv_stack, n_uncentred_frames, nearest_uncentred_frame

    assert conv_stack((10, 3, 3, 3, 3, 2, 2), (5, 2, 2, 2, 2, 2, 2)) == (320, 400)  # 50 Hz, 25 ms windows
    assert conv_stack((4,), (2,)) == (2, 4) and conv_stack((3, 3), (1, 1)) == (1, 5)
    assert [n_uncentred_frames(n, 320, 400) for n in (0, 399, 400, 719, 720, 16000)] == [0, 0, 1, 1, 2, 49]
    # frame k is centred at sample 320 k + 200: t = 0.0125 s (sample 200) is frame 0, 0.0325 s (520) frame 1;
    # half-way (360) rounds up; times past the last frame take it, times before the first take frame 0
    t = np.array([0.0, 0.0125, 0.0225, 0.0325, 0.9, 5.0])
    np.testing.assert_array_equal(nearest_uncentred_frame(t, 320, 400, 49), [0, 0, 1, 1, 44, 48])
