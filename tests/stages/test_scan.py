"""scan: the manifest changes exactly when the tree does."""

import os

from pipeline.stages import scan


def tree(root):
    for trial in ("a", "b"):
        d = root / "cropped_aligned" / trial
        d.mkdir(parents=True)
        for i in range(1, 6):
            (d / f"{i:05d}.jpg").write_bytes(b"x" * i)
    ann = root / "annotations/VA_Estimation_Challenge/Train_Set"
    ann.mkdir(parents=True)
    (ann / "a.txt").write_text("valence,arousal\n0,0\n")
    (root / "videos").mkdir()
    (root / "videos" / "a.mp4").write_bytes(b"v" * 10)
    return root


def test_manifest_tracks_changes(tmp_path):
    root = tree(tmp_path / "root")
    out = tmp_path / "manifest.json"
    scan.run(root, out)
    first = out.read_bytes()
    assert scan.manifest(root)["crops"]["a"][0] == 5

    os.utime(root / "cropped_aligned/a/00001.jpg", (1, 1))  # a touch (checkout, copy) is not a change
    scan.run(root, out)
    assert out.read_bytes() == first

    (root / "cropped_aligned/a/00006.jpg").write_bytes(b"new")  # an added crop is
    scan.run(root, out)
    second = out.read_bytes()
    assert second != first

    (root / "annotations/VA_Estimation_Challenge/Train_Set/a.txt").write_text("valence,arousal\n0,0.1\n")
    scan.run(root, out)
    third = out.read_bytes()
    assert third != second

    (root / "videos" / "a.mp4").write_bytes(b"v" * 11)
    scan.run(root, out)
    assert out.read_bytes() != third


def test_missing_root(tmp_path):
    import pytest

    from pipeline.common.errors import InputError

    with pytest.raises(InputError, match="data.root does not exist"):
        scan.run(tmp_path / "nope", tmp_path / "m.json")
