import pickle

import numpy as np
import pytest

from zipper_pl.data.tokens.store import VERIFIED_JSON, ShardedTokenWriter, TokenStore, token_dtype


def _items(n: int, seed: int = 0) -> tuple[list[str], list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    ids = [f"utt{i:03d}" for i in range(n)]
    arrays = [rng.integers(0, 1000, size=int(rng.integers(0, 20))) for _ in range(n)]
    arrays[3] = np.empty(0, np.int64)  # empty items are allowed
    return ids, arrays


def _write_all(d, ids, arrays, per, meta, only=None, dtype=np.uint16):
    w = ShardedTokenWriter(d, dtype, per)
    done = w.completed_shards()
    n_shards = (len(ids) + per - 1) // per
    for k in range(n_shards):
        if k in done or (only is not None and k not in only):
            continue
        w.write_shard(k, ids[k * per : (k + 1) * per], arrays[k * per : (k + 1) * per])
    if only is None:
        w.finalize(meta, num_shards=n_shards)
    return w


def _files(d):
    # verified.json records shards' mtimes (when their sha256 was last checked): run metadata
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != VERIFIED_JSON}


def test_round_trip(tmp_path):
    ids, arrays = _items(23)
    _write_all(tmp_path, ids, arrays, per=5, meta={"vocab_size": 1000})
    s = TokenStore(tmp_path)
    assert TokenStore.exists(tmp_path)
    assert len(s) == 23 and s.ids == ids and s.meta == {"vocab_size": 1000}
    assert s.total_tokens == sum(a.size for a in arrays)
    assert s.lengths.tolist() == [a.size for a in arrays]
    for i, a in enumerate(arrays):
        assert s[i].dtype == np.uint16
        np.testing.assert_array_equal(s[i], a)
    np.testing.assert_array_equal(s[-1], arrays[-1])
    assert s[3].size == 0
    assert isinstance(s[0].base, np.memmap) or isinstance(s[0], np.memmap)  # a view, no copy
    with pytest.raises(IndexError):
        s[23]
    s2 = pickle.loads(pickle.dumps(s))  # DataLoader workers
    np.testing.assert_array_equal(s2[7], arrays[7])


def test_resume_after_kill_is_byte_identical(tmp_path):
    ids, arrays = _items(23, seed=1)
    ref = tmp_path / "ref"
    _write_all(ref, ids, arrays, per=4, meta={"v": 1})
    run = tmp_path / "run"
    _write_all(run, ids, arrays, per=4, meta={"v": 1}, only={0, 1, 4})
    # a killed writer leaves a temp file and a .bin without its sub-index
    (run / ".shard_00002.bin.tmp-999").write_bytes(b"junk")
    (run / "shard_00003.bin").write_bytes(b"partial")
    assert not TokenStore.exists(run)
    w = ShardedTokenWriter(run, np.uint16, 4)
    assert w.completed_shards() == {0, 1, 4}
    assert not (run / ".shard_00002.bin.tmp-999").exists()
    _write_all(run, ids, arrays, per=4, meta={"v": 1})
    assert _files(run) == _files(ref)


def test_int32_and_range_checks(tmp_path):
    assert token_dtype(1026) == np.uint16 and token_dtype(70000) == np.int32
    w = ShardedTokenWriter(tmp_path, np.int32, 2)
    w.write_shard(0, ["a", "b"], [np.array([70000, 1]), np.array([5])])
    w.finalize({})
    assert TokenStore(tmp_path)[0].tolist() == [70000, 1]
    w16 = ShardedTokenWriter(tmp_path / "u16", np.uint16, 2)
    with pytest.raises(ValueError, match="out of range"):
        w16.write_shard(0, ["a"], [np.array([70000])])
    with pytest.raises(RuntimeError, match="not written"):
        w16.finalize({}, num_shards=2)


def test_changed_layout_resets_and_empty_store(tmp_path):
    ids, arrays = _items(6)
    _write_all(tmp_path, ids, arrays, per=2, meta={})
    w = ShardedTokenWriter(tmp_path, np.uint16, 3)  # other slicing: old shards are invalid
    assert w.completed_shards() == set() and not TokenStore.exists(tmp_path)
    w.finalize({"n": 0}, num_shards=0)
    s = TokenStore(tmp_path)
    assert len(s) == 0 and s.total_tokens == 0
    w.write_shard(0, [], [])  # every item of a slice skipped
    w.write_shard(1, ["x"], [np.array([4, 2])])
    w.finalize({}, num_shards=2)
    s = TokenStore(tmp_path)
    assert s.ids == ["x"] and s[0].tolist() == [4, 2]
