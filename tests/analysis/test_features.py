"""Audio rows chunk by chunk equal the extract stage's store, where the track starts late and ends early: frames
before it get zeros, frames past it repeat the last row heard (which lies chunks back)."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.analysis.audio import FileTrack
from pipeline.analysis.features import AudioRows, frame_rows
from pipeline.common.config import DataConfig, FramesConfig, IResNetConfig, MFCCConfig, VGGishConfig
from pipeline.extractors import build
from pipeline.io.features import FeatureStore
from pipeline.io.media import VideoDecoder
from pipeline.io.timebase import frame_times, track_seconds
from pipeline.stages import extract, prepare
from tests.helpers.media import clicks, write_av

pytestmark = pytest.mark.filterwarnings("ignore::pipeline.extractors.weights.RandomInitWarning")


@pytest.fixture(scope="module")
def short_track(tmp_path_factory):
    """A 4 s video at 25 fps whose audio is heard from 0.4 s to 2.4 s, prepared and extracted by the stages."""
    root = tmp_path_factory.mktemp("audio")
    video = write_av(root / "data" / "videos" / "v.mp4", n_frames=100, audio=clicks(2.0, 44_100, [0.6, 1.1, 2.3], 0.4),
                     audio_start=0.4)
    (root / "data" / "test_set.txt").write_text("v\n")
    prepare.run(DataConfig(root=str(root / "data")), FramesConfig(size=16), root / "prepared", jobs=1)
    extractors = {"mfcc": build("mfcc", MFCCConfig(), 16, "cpu"), "vggish": build("vggish", VGGishConfig(batch=5), 16, "cpu")}
    for m, ex in extractors.items():
        extract.run(m, None, root / "prepared", root / f"{m}.zarr", device="cpu", extractor=ex, progress=False)
    return video, root, extractors


@pytest.mark.parametrize("chunk", [7, 100])
def test_audio_rows_by_chunk_equal_the_store(short_track, chunk):
    video, root, extractors = short_track
    dec = VideoDecoder(video)
    n = sum(1 for _ in dec)
    track = FileTrack(video, f"v{chunk}", retain_s=1.0)
    times = track_seconds(frame_times(np.arange(1, n + 1), dec.info.fps, dec.info.timestamps), track.start - dec.info.start)
    for m, ex in extractors.items():
        store = FeatureStore.open(root / f"{m}.zarr")
        rows = AudioRows(ex, track)
        parts = [rows(lo, times[lo : lo + chunk]) for lo in range(0, n, chunk)]
        got, mask = np.concatenate([r for r, _ in parts]), np.concatenate([k for _, k in parts])
        np.testing.assert_array_equal(mask, store.mask("v"))
        assert not mask[:9].any() and mask[11:59].all() and not mask[61:].any()
        np.testing.assert_allclose(got.astype(np.float32), store.read("v").astype(np.float32), atol=1e-6, err_msg=m)
        assert (got[80] == got[70]).all() and not got[:9].any()  # repeated past the end, zeros before


def test_frame_rows_in_the_store_dtype():
    ex = build("iresnet", IResNetConfig(pooled=True, batch=3), 16, "cpu")
    crops = np.random.default_rng(0).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
    rows = frame_rows(ex, crops)
    assert rows.shape == (7, 512) and rows.dtype == np.float16
    # a row depends on its batch only through the kernels' rounding (float16: one unit in the last place)
    np.testing.assert_allclose(rows[3:4].astype(np.float32), frame_rows(ex, crops[3:4]).astype(np.float32), rtol=2e-3, atol=1e-4)
