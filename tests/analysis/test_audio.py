"""The streamed audio track reads what ``prepare``'s decoded track holds, in any order, without keeping the track."""

from __future__ import annotations

import numpy as np

from pipeline.analysis.audio import FileTrack, LiveTrack
from pipeline.io.media import decode_audio_track
from tests.helpers.media import clicks, write_av


def test_file_track_reads_equal_the_decoded_track(tmp_path):
    path = write_av(tmp_path / "v.mp4", n_frames=100, audio=clicks(4.0, 44_100, [0.5, 1.5, 3.0]), audio_start=0.3)
    whole = decode_audio_track(path)
    track = FileTrack(path, "v", retain_s=0.25)  # 4000 samples kept behind the latest read
    assert track.present and track.n_samples == len(whole.samples) and track.start == whole.start
    padded = np.concatenate([np.zeros(500, np.float32), whole.samples, np.zeros(5000, np.float32)])  # zeros outside
    rng = np.random.default_rng(0)
    lo = -400
    for _ in range(60):  # mostly forward, as chunks of frames read, sometimes back (a restart)
        lo = int(np.clip(lo + rng.integers(-6000, 9000), -500, len(whole.samples)))
        hi = lo + int(rng.integers(0, 5000))
        np.testing.assert_array_equal(track.read(lo, hi), padded[500 + lo : 500 + hi])
        held = sum(len(x) for _, x in track._store.pieces)
        assert held <= 4000 + 5000 + 4096  # what is kept + one read + one decoded piece, never the track
    assert track.restarts >= 2
    track.close()


def test_file_track_without_audio(tmp_path):
    track = FileTrack(write_av(tmp_path / "s.mp4", n_frames=10), "s")
    assert not track.present and track.n_samples == 0
    np.testing.assert_array_equal(track.read(-10, 10), np.zeros(20, np.float32))


def test_live_track_grows_and_reads_zeros_past_what_arrived():
    t = LiveTrack("live", retain_s=1.0)
    t.add([np.ones(100, np.float32), 2 * np.ones(50, np.float32)], start=0.25)
    assert t.n_samples == 150 and t.start == 0.25
    np.testing.assert_array_equal(t.read(90, 160), np.r_[np.ones(10), 2 * np.ones(50), np.zeros(10)].astype(np.float32))
    t.add([np.full(32_000, 3, np.float32)], start=None)
    t.read(30_000, 30_010)  # keeps 1 s behind this read
    np.testing.assert_array_equal(t.read(0, 10), np.zeros(10, np.float32))
    assert t.start == 0.25
