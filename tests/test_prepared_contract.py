from pipeline.io.prepared import load_index, FrameReader, read_audio
def test_fixture(make_prepared, tmp_path):
    idx = make_prepared({"a": {"n": 30, "split": "train"}, "b_left": {"n": 20, "video": "b", "split": "val"}, "b_right": {"n": 20, "video": "b", "split": "val"}, "c": {"n": 10, "split": "test", "audio": None}})
    idx2 = load_index(tmp_path / "prepared")
    assert idx2 == idx
    with FrameReader(tmp_path / "prepared/frames.h5") as r:
        assert r.frames("a").shape == (30, 16, 16, 3)
        assert r.labels("c") is None
    assert read_audio(idx.audio_path("a")).shape == (30 * 640,)
