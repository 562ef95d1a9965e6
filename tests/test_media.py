"""PyAV decoding: frame counts by decoding, audio to 16 kHz mono from any rate and layout, videos without audio."""

from fractions import Fraction

import av
import numpy as np
import pytest

from pipeline.errors import InputError
from pipeline.io.media import decode_audio, find_videos, iter_video_frames, probe_video, video_for_trial


def encode(path, n_frames=12, fps=25, audio=None, sr=44_100, layout="stereo", codec="libx264", acodec="aac"):
    """A small test video: n_frames grey frames, optional audio (mono float32 at sr)."""
    with av.open(str(path), "w") as c:
        vs = c.add_stream(codec, rate=fps)
        vs.width, vs.height, vs.pix_fmt = 64, 48, "yuv420p"
        as_ = c.add_stream(acodec, rate=sr, layout=layout) if audio is not None else None
        for i in range(n_frames):
            img = np.full((48, 64, 3), 10 * i % 255, dtype=np.uint8)
            for p in vs.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                c.mux(p)
        for p in vs.encode():
            c.mux(p)
        if as_ is not None:
            ch = 2 if layout == "stereo" else 1
            fmt = as_.codec_context.format.name
            step = as_.codec_context.frame_size or 1024
            for s in range(0, len(audio), step):
                chunk = np.repeat(audio[None, s : s + step], ch, axis=0).astype(np.float32)
                if fmt == "s16":
                    chunk = (chunk * 32767).astype(np.int16).T.reshape(1, -1)
                fr = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk), format=fmt, layout=layout)
                fr.sample_rate, fr.pts, fr.time_base = sr, s, Fraction(1, sr)
                for p in as_.encode(fr):
                    c.mux(p)
            for p in as_.encode():
                c.mux(p)
    return path


def tone(seconds, sr, hz=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return (0.5 * np.sin(2 * np.pi * hz * t)).astype(np.float32)


def dominant_hz(x, sr):
    spec = np.abs(np.fft.rfft(x * np.hanning(len(x))))
    return np.fft.rfftfreq(len(x), 1 / sr)[spec.argmax()]


def test_frame_count_fps_and_audio_presence(tmp_path):
    p = encode(tmp_path / "v.mp4", n_frames=17, fps=30, audio=tone(0.6, 44_100))
    info = probe_video(p, count_frames=True)
    assert (info.fps, info.n_frames, info.has_audio) == (30.0, 17, True)
    assert probe_video(p).n_frames is None
    assert sum(1 for _ in iter_video_frames(p)) == 17


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


def test_left_right_trials_share_their_video():
    assert video_for_trial("10-60-1280x720_left") == "10-60-1280x720"
    assert video_for_trial("v_right") == "v"
    assert video_for_trial("v_lefty") == "v_lefty"
