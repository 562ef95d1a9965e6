"""PyAV decoding: frame counts (packets and decoding), frame times, where audio sits in time, audio to 16 kHz mono
from any rate and layout, videos without audio, and damaged files."""

import json
from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.common.errors import InputError
from pipeline.io.media import (
    decode_audio,
    decode_audio_track,
    decode_frames,
    find_videos,
    probe_video,
    stream_rate,
    video_for_trial,
)
from tests.helpers.media import clicks, first_click, write_audio_only, write_av


def encode(path, n_frames=12, fps=25, audio=None, sr=44_100, layout="stereo", codec="libx264", acodec="aac"):
    """A small test video: n_frames grey frames, optional audio (mono float32 at sr)."""
    return write_av(path, n_frames=n_frames, fps=fps, audio=audio, sr=sr, layout=layout, vcodec=codec, acodec=acodec)


def tone(seconds, sr, hz=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def dominant_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()]


def test_frame_count_fps_and_audio_presence(tmp_path):
    p = encode(tmp_path / "v.mp4", n_frames=17, fps=30, audio=tone(0.6, 44_100))
    info = probe_video(p, count_frames=True)
    assert (info.fps, info.n_frames, info.has_audio, info.counted_by) == (30.0, 17, True, "decoding")
    packets = probe_video(p)
    assert (packets.fps, packets.n_frames, packets.counted_by) == (30.0, 17, "packets")
    assert info.timestamps is None and packets.timestamps is None and info.start == 0.0 and not info.warnings
    frames = list(decode_frames(p))
    assert len(frames) == 17 and frames[0][1].shape[2] == 3 and frames[0][1].dtype == np.uint8
    assert [t for t, _ in frames] == pytest.approx([i / 30 for i in range(17)], abs=1e-6)
    assert stream_rate(p) == (30.0, 17)


def test_decode_frames_refuses_a_file_without_video(tmp_path):
    with pytest.raises(InputError, match="no video stream"):
        list(decode_frames(write_audio_only(tmp_path / "a.m4a")))


@pytest.mark.parametrize("sr, layout", [(44_100, "stereo"), (48_000, "mono"), (16_000, "stereo"), (22_050, "mono")])
def test_audio_resampled_to_16k_mono(tmp_path, sr, layout):
    p = encode(tmp_path / "v.mp4", audio=tone(1.0, sr, 440.0), sr=sr, layout=layout)
    a = decode_audio(p)
    assert a.dtype == np.float32 and a.ndim == 1
    assert abs(len(a) / 16_000 - 1.0) < 0.1  # AAC adds a frame of priming/padding at most
    assert abs(dominant_hz(a[2000:14000], 16_000) - 440.0) < 3.0
    assert 0.3 < np.sqrt(np.mean(a[2000:14000] ** 2)) < 0.41  # RMS of a 0.5 sine: 0.354 (a mean of channels, not a sum)


def test_avi_with_pcm_audio(tmp_path):
    p = encode(tmp_path / "v.avi", n_frames=9, fps=25, audio=tone(0.5, 16_000), sr=16_000, layout="mono", codec="mpeg4", acodec="pcm_s16le")
    assert probe_video(p, count_frames=True).n_frames == 9
    a = decode_audio(p)
    assert len(a) == 8000 and abs(dominant_hz(a, 16_000) - 440) < 3


def test_video_without_audio_is_not_an_error(tmp_path):
    p = encode(tmp_path / "v.mp4")
    assert probe_video(p).has_audio is False
    assert decode_audio(p) is None


def test_undecodable_and_missing_files(tmp_path):
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"\x00\x01 not a video" * 100)
    with pytest.raises(InputError, match="bad.mp4: cannot open video"):
        probe_video(bad)
    with pytest.raises(InputError, match="absent.mp4"):
        probe_video(tmp_path / "absent.mp4")


def test_find_videos_any_depth_and_duplicate_stems(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "a" / "b" / "x.mp4").write_bytes(b"")
    (tmp_path / "y.AVI").write_bytes(b"")
    (tmp_path / "notes.txt").write_text("")
    assert sorted(find_videos(tmp_path)) == ["x", "y"]
    (tmp_path / "x.avi").write_bytes(b"")
    with pytest.raises(InputError, match="video name 'x' also used by"):
        find_videos(tmp_path)
    (tmp_path / "x.avi").unlink()
    (tmp_path / "..mp4").write_bytes(b"")  # its stem is '.': audio/..wav would not be its own file
    with pytest.raises(InputError, match=r"\.\.mp4: video name: '\.' is not a plain name"):
        find_videos(tmp_path)


def test_left_right_trials_share_their_video():
    assert video_for_trial("10-60-1280x720_left") == "10-60-1280x720"
    assert video_for_trial("v_right") == "v"
    assert video_for_trial("v_lefty") == "v_lefty"


# ---------------------------------------------------------------------------------------------- time
@pytest.mark.parametrize(
    "case, kw",
    [
        ("aac starts at 0 (encoder priming)", {}),
        ("audio starts late", {"audio_start": 0.436}),
        ("audio starts before the picture", {"video_start": 0.32}),
        ("aac 16 kHz mono, late", {"audio_start": 0.2, "sr": 16_000, "layout": "mono"}),
        ("pcm in avi", {"acodec": "pcm_s16le", "vcodec": "mpeg4", "sr": 16_000, "layout": "mono", "suffix": ".avi"}),
    ],
)
def test_a_click_is_heard_at_its_video_time(tmp_path, case, kw):
    """A click at container time 1.0 s must sit at WAV sample round((t - audio_offset) * 16000), t = 1.0 s on the
    video timeline (0 = the first frame): the arithmetic pipeline/io/timebase.py documents."""
    kw = dict(kw)
    suffix = kw.pop("suffix", ".mp4")
    sr = kw.get("sr", 44_100)
    p = write_av(tmp_path / f"v{suffix}", audio=clicks(2.0, sr, [1.0], start=kw.get("audio_start", 0.0)), **kw)
    info, track = probe_video(p), decode_audio_track(p)
    assert info.start == pytest.approx(kw.get("video_start", 0.0), abs=1e-6)
    offset = track.start - info.start
    t = 1.0 - info.start  # the click on the video timeline
    assert first_click(track.samples) == pytest.approx(t - offset, abs=0.003), case
    # a late AAC track may keep its first (priming) frame, 1024 samples before the first real one, placed in time
    nominal = kw.get("audio_start", 0.0) - kw.get("video_start", 0.0)
    assert nominal - 1024 / sr - 0.001 <= offset <= nominal + 0.001


def test_variable_frame_rate_keeps_its_timestamps(tmp_path):
    times = np.concatenate([np.arange(30) / 30, 1 + np.arange(20) / 20])  # 30 fps for 1 s, then 20 fps
    p = write_av(tmp_path / "vfr.mp4", n_frames=50, frame_times=times)
    for count in (False, True):
        info = probe_video(p, count_frames=count)
        assert info.n_frames == 50 and info.timestamps is not None and not info.warnings
        np.testing.assert_allclose(info.timestamps.seconds(), times, atol=1e-9)
        assert len(info.timestamps.runs) == 2  # run-length coded: two frame durations
        assert info.fps == pytest.approx(50 / 1.95, rel=0.02)  # the stated mean rate: not for (f - 1) / fps timing


def test_a_hole_in_the_audio_keeps_later_sound_in_time(tmp_path):
    """Packets of 0.5 s missing from the audio (timestamps jump from 1.024 to 1.536 s): silence fills the hole, so a
    click at 2.0 s stays at 2.0 s instead of moving 0.5 s earlier, and a warning says so."""
    sr = 16_000
    x = clicks(3.0, sr, [2.0])
    p = tmp_path / "v.mp4"
    with av.open(str(p), "w") as c:
        vs = c.add_stream("libx264", rate=25)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        a = c.add_stream("aac", rate=sr, layout="mono")
        for _ in range(75):
            for pkt in vs.encode(av.VideoFrame.from_ndarray(np.zeros((48, 64, 3), np.uint8), format="rgb24")):
                c.mux(pkt)
        for pkt in vs.encode():
            c.mux(pkt)
        for s in range(0, len(x), 1024):
            if sr <= s < 1.5 * sr:
                continue  # the hole
            f = av.AudioFrame.from_ndarray(x[None, s : s + 1024].copy(), format="fltp", layout="mono")
            f.sample_rate, f.pts, f.time_base = sr, s, Fraction(1, sr)
            for pkt in a.encode(f):
                c.mux(pkt)
        for pkt in a.encode():
            c.mux(pkt)
    track = decode_audio_track(p)
    assert first_click(track.samples) == pytest.approx(2.0, abs=0.003)
    assert len(track.samples) / sr == pytest.approx(3.0, abs=0.07)
    assert track.warnings == (
        f"warning: {p}: the audio's timestamps have holes or overlaps: 0.512 s of silence inserted, 0.000 s of "
        "overlap dropped, to keep it in time",
    )
    assert not decode_audio_track(write_av(tmp_path / "ok.mp4", audio=clicks(2.0, 44_100, [1.0]))).warnings


# ---------------------------------------------------------------------------------------- damaged files
def test_no_video_stream(tmp_path):
    write_audio_only(tmp_path / "a.mp4")
    with pytest.raises(InputError, match="a.mp4: no video stream"):
        probe_video(tmp_path / "a.mp4")


@pytest.mark.parametrize("count", [False, True])
def test_no_decodable_frame(tmp_path, count):
    p = write_av(tmp_path / "v.mp4", n_frames=20)
    raw = bytearray(p.read_bytes())
    at = raw.find(b"mdat")
    size = int.from_bytes(raw[at - 4 : at], "big")
    raw[at + 4 : at - 4 + size] = bytes(size - 8)  # every packet's payload zeroed: nothing decodes
    p.write_bytes(bytes(raw))
    with pytest.raises(InputError, match="v.mp4: cannot decode video"):
        probe_video(p, count_frames=count)


@pytest.mark.parametrize("count", [False, True])
def test_truncated_file_is_counted_with_a_warning(tmp_path, count):
    p = write_av(tmp_path / "v.mp4", n_frames=100, options={"movflags": "faststart"})  # index first, as streamed
    raw = p.read_bytes()
    p.write_bytes(raw[: len(raw) * 2 // 3])
    info = probe_video(p, count_frames=count)
    assert 0 < info.n_frames < 100
    assert info.warnings == (
        f"warning: {p}: the container lists 100 frames but {info.n_frames} could be read (a truncated file?); "
        f"counting {info.n_frames}",
    )
    cut = tmp_path / "cut.mp4"  # index at the end, as written by default: the cut loses it
    cut.write_bytes(write_av(tmp_path / "w.mp4", n_frames=100).read_bytes()[:3000])
    with pytest.raises(InputError, match="cut.mp4: (cannot open video|no decodable video frames)"):
        probe_video(cut, count_frames=count)


# --------------------------------------------------------------------------------------------- real media
@pytest.mark.realmedia
def test_real_files_late_audio_and_variable_rate(realmedia):
    mov = realmedia / "videos" / "pyfeat_face_noface.mov"
    info, track = probe_video(mov), decode_audio_track(mov)
    assert info.start == 0.0 and track.start == pytest.approx(2.430, abs=1e-3)  # audio 2.43 s after the picture
    assert info.timestamps is not None and info.n_frames == 169  # frames 1/30 s and 1/24 s apart: not 26.4 fps
    t = info.timestamps.seconds()
    assert t[-1] == pytest.approx(6.3604, abs=1e-3) and abs(t - np.arange(169) / info.fps).max() > 0.3
    assert probe_video(mov, count_frames=True).timestamps == info.timestamps  # packets and decoding agree
    face1 = realmedia / "videos" / "videoretalking_face_1.mp4"
    info = probe_video(face1)
    assert info.start == pytest.approx(507 / 15360) and decode_audio_track(face1).start == 0.0  # audio leads
    assert info.timestamps is not None  # a 30 fps clock with dropped frames: 22.13 fps on average only
    for p in sorted((realmedia / "videos").glob("*")) + sorted((realmedia / "videos_noaudio").glob("*")):
        assert probe_video(p).n_frames == probe_video(p, count_frames=True).n_frames, p.name


def test_bench_count_prints_both_counts(tmp_path, capsys):
    from pipeline.bench import count

    p = write_av(tmp_path / "v.mp4", n_frames=30)
    (rec,) = count.run([p], repeats=1)
    assert rec["frames_packets"] == rec["frames_decoded"] == 30 and rec["packets_s"] > 0 and rec["decode_s"] > 0
    assert json.loads(capsys.readouterr().out) == rec
