"""The sharded, streaming feature store: round trip through zarr, resume after a crash, file count, shards."""

from __future__ import annotations

import json

import numpy as np
import pytest
import zarr

from pipeline.io import features
from pipeline.io.features import FeatureStore, StoreError


def _data(trials, shape=(3, 2), seed=0):
    rng = np.random.default_rng(seed)
    return {t: (rng.normal(size=(n, *shape)).astype(np.float16), rng.random(n) > 0.3) for t, n in trials.items()}


def _create(path, trials, shape=(3, 2), fp=None, n_buckets=4):
    return FeatureStore.open_or_create(
        path, extractor="x", row_shape=shape, dtype="float16", trials=trials, fps={t: 25.0 for t in trials},
        fingerprint=fp or {"v": 1}, attrs={"weights": "random-init"}, n_buckets=n_buckets,
    )


def _fill(store, data, step=37, stop_after=None, shard=(0, 1)):
    calls = 0
    for t in store.pending(shard):
        rows, mask = data[t]
        for i in range(store.resume_row(t), len(rows), step):
            if stop_after is not None and calls == stop_after:
                return
            store.append(t, i, rows[i : i + step], mask[i : i + step])
            calls += 1
    store.flush()


TRIALS = {"a": 50, "b": 300, "c": 129, "d": 64, "e": 1, "f": 700}


def test_round_trip_and_zarr_layout(tmp_path):
    data = _data(TRIALS)
    _fill(_create(tmp_path / "s.zarr", TRIALS), data)
    s = FeatureStore.open(tmp_path / "s.zarr")
    assert s.trials == sorted(TRIALS) and s.row_shape == (3, 2) and s.dim == 6 and s.random_init
    for t, (rows, mask) in data.items():
        np.testing.assert_array_equal(s.read(t), rows)
        np.testing.assert_array_equal(s.mask(t), mask)
    # the shards are plain zarr v3 sharded arrays, readable without this class
    g = zarr.open_group(str(tmp_path / "s.zarr"), mode="r")
    b, start, stop = s.layout["f"]
    np.testing.assert_array_equal(g[f"b{b:02d}/rows"][start:stop], data["f"][0])
    assert g[f"b{b:02d}/rows"].shards is not None


@pytest.mark.parametrize("record_every", [0.0, 3600.0])
def test_resume_after_crash_is_identical(tmp_path, monkeypatch, record_every):
    """0: progress recorded at every chunk; 3600: only at the end of a bucket (a kill before the first periodic
    record): the bytes written past the recorded row are dropped and redone, the result is the same."""
    monkeypatch.setattr(features, "RECORD_EVERY_S", record_every)
    data = _data(TRIALS)
    _fill(_create(tmp_path / "ref.zarr", TRIALS), data)
    crashed = _create(tmp_path / "s.zarr", TRIALS)
    _fill(crashed, data, stop_after=9)  # dies mid-trial: no flush, a partial chunk in memory is lost
    del crashed
    again = _create(tmp_path / "s.zarr", TRIALS)
    partial = again.pending()
    assert partial and len(partial) < len(TRIALS)  # complete trials are skipped
    resumed = sum(again.resume_row(t) for t in partial)
    if record_every == 0.0:
        assert resumed > 0  # rows on disk before the crash are not redone
    else:
        assert resumed == 0
    _fill(again, data)
    for f in ("b00/rows/c/0/0/0", "b01/rows/c/0/0/0", "b02/mask/c/0", "b03/rows/c/0/0/0"):
        assert (tmp_path / "s.zarr" / f).read_bytes() == (tmp_path / "ref.zarr" / f).read_bytes(), f


def test_complete_trial_of_unfinished_bucket_is_readable(tmp_path):
    trials = {"a": 200, "b": 100}
    data = _data(trials)
    s = _create(tmp_path / "s.zarr", trials, n_buckets=1)
    s.append("a", 0, *data["a"])
    s.append("b", 0, data["b"][0][:70], data["b"][1][:70])  # bucket rows 0..270: 256 on disk
    s.flush()
    r = FeatureStore.open(tmp_path / "s.zarr", require_complete=False)
    assert r.is_complete("a") and not r.is_complete("b")
    np.testing.assert_array_equal(r.read("a"), data["a"][0])
    with pytest.raises(StoreError, match="not extracted"):
        r.read("b")
    with pytest.raises(StoreError, match="not extracted yet"):
        FeatureStore.open(tmp_path / "s.zarr")


def test_fingerprint_change_rebuilds_and_match_resumes(tmp_path):
    data = _data(TRIALS)
    _fill(_create(tmp_path / "s.zarr", TRIALS), data)
    assert _create(tmp_path / "s.zarr", TRIALS).pending() == []
    assert len(_create(tmp_path / "s.zarr", TRIALS, fp={"v": 2}).pending()) == len(TRIALS)


def test_out_of_order_append_is_an_error(tmp_path):
    s = _create(tmp_path / "s.zarr", {"a": 10})
    with pytest.raises(StoreError, match="in order"):
        s.append("a", 5, np.zeros((2, 3, 2)), np.zeros(2, bool))


def test_shards_split_buckets_and_fill_one_store(tmp_path):
    data = _data(TRIALS)
    for i in range(3):
        s = _create(tmp_path / "s.zarr", TRIALS)
        own = s.pending((i, 3))
        assert all(s.layout[t][0] % 3 == i for t in own)
        _fill(s, data, shard=(i, 3))
    s = FeatureStore.open(tmp_path / "s.zarr")
    for t, (rows, _) in data.items():
        np.testing.assert_array_equal(s.read(t), rows)


def test_file_count_stays_small_for_many_trials(tmp_path):
    trials = {f"t{i:04d}": 40 + i % 97 for i in range(600)}
    s = FeatureStore.open_or_create(
        tmp_path / "s.zarr", extractor="x", row_shape=(2,), dtype="float16", trials=trials,
        fps={t: 30.0 for t in trials}, fingerprint={}, attrs={},
    )
    for t in s.pending():
        s.append(t, 0, np.ones((trials[t], 2)), np.ones(trials[t], bool))
    s.flush()
    assert len(list(s.files())) <= 100
    r = FeatureStore.open(tmp_path / "s.zarr")
    assert r.read("t0599").shape == (40 + 599 % 97, 2)
    assert json.loads((tmp_path / "s.zarr" / "zarr.json").read_text())["attributes"]["fps"]["t0001"] == 30.0
