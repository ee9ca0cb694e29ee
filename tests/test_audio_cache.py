import json

import numpy as np
import pytest
import soundfile as sf
from test_audio import plant_audio, sine

import zipper_pl.data.tokens.audio_cache as audio_cache
from zipper_pl.data.corpora.audio import load_audio
from zipper_pl.data.corpora.manifest import Record, write_manifest
from zipper_pl.data.tokenizers.audio_tokenizers import AudioTokenizerConfig, UnitsTokenizer
from zipper_pl.data.tokens.audio_cache import fit_audio_tokenizer, tokenize_manifest
from zipper_pl.data.tokens.store import VERIFIED_JSON, ShardedTokenWriter, TokenStore
from zipper_pl.errors import UserError

EXPECTED_BAD = {
    "too_long": 1,
    "empty": 1,
    "non_finite": 1,
    "truncated": 2,
    "unreadable": 2,
    "missing_transcript": 1,
}


@pytest.fixture(scope="module")
def tokenizer() -> UnitsTokenizer:
    tok = UnitsTokenizer(AudioTokenizerConfig(units_k=8, max_seconds=2.0))
    tok.fit([sine(0.5, 16000, f) for f in (200, 500, 900, 1500)])
    return tok


def _manifest(d):
    cases = plant_audio(d / "audio")
    recs = [Record(name, str(p), f"text of {name}", 0.5, "spk") for name, (p, _) in cases.items()]
    recs.append(Record("no_text", str(cases["good"][0]), None, 0.5, "spk"))
    recs.append(Record("good_again", str(cases["good"][0]), "again", 0.5, "spk"))
    write_manifest(d / "train.jsonl", recs)
    return d / "train.jsonl", cases


def _files(d):
    # verified.json records shards' mtimes (when their sha256 was last checked): run metadata
    return {p.name: p.read_bytes() for p in sorted(d.iterdir()) if p.name != VERIFIED_JSON}


def test_bad_files_skipped_by_reason(tmp_path, tokenizer):
    manifest, cases = _manifest(tmp_path)
    out = tokenize_manifest(
        manifest, tokenizer, tmp_path / "cache", items_per_shard=4, max_bad_share=0.9,
        need_transcript=True, progress=False,
    )  # fmt: skip
    store = TokenStore(out)
    good = sorted([n for n, (_, bad) in cases.items() if bad is None] + ["good_again"])
    assert sorted(store.ids) == good
    assert store.meta["skipped"] == EXPECTED_BAD and store.meta["vocab_size"] == 8
    i = store.ids.index("stereo")
    assert len(store[i]) == 8000 // 320 + 1 and store[i].max() < 8
    report = json.loads((out / "bad_audio.json").read_text())
    assert report["by_reason"] == EXPECTED_BAD and report["total_items"] == len(cases) + 2
    assert report["examples"]["truncated"] == ["truncated", "truncated_flac"]
    # one manifest, same tokens as encoding the files directly
    wave = load_audio(cases["good"][0], 16000, 2.0)
    np.testing.assert_array_equal(store[store.ids.index("good")], tokenizer.encode([wave])[0])


def test_too_many_bad_stops_with_report(tmp_path, tokenizer):
    manifest, _ = _manifest(tmp_path)
    with pytest.raises(UserError) as e:
        tokenize_manifest(
            manifest, tokenizer, tmp_path / "cache", items_per_shard=4, max_bad_share=0.05,
            need_transcript=True, bad_share_key="audio.max_bad_share", progress=False,
        )  # fmt: skip
    msg = str(e.value)
    assert "audio.max_bad_share" in msg and "bad_audio.json" in msg
    assert "empty 1 (e.g. empty)" in msg and "stopped after 8 of 13 items" in msg
    assert not any(TokenStore.exists(p) for p in (tmp_path / "cache").iterdir())


def test_second_call_decodes_nothing(tmp_path, tokenizer, monkeypatch):
    manifest, _ = _manifest(tmp_path)
    kw = {"items_per_shard": 4, "max_bad_share": 0.9, "progress": False}
    first = tokenize_manifest(manifest, tokenizer, tmp_path / "cache", **kw)

    def no_decoding(*args, **kwargs):
        raise AssertionError("audio decoded although the cache is finished")

    monkeypatch.setattr(audio_cache, "load_record", no_decoding)
    assert tokenize_manifest(manifest, tokenizer, tmp_path / "cache", **kw) == first
    # another setting that changes the tokens is another cache
    with pytest.raises(AssertionError, match="decoded"):
        tokenize_manifest(manifest, tokenizer, tmp_path / "cache", need_transcript=True, **kw)


def test_killed_run_resumes_byte_identical(tmp_path, tokenizer, monkeypatch):
    manifest, _ = _manifest(tmp_path)
    kw = {"items_per_shard": 3, "max_bad_share": 0.9, "need_transcript": True, "progress": False}
    ref = tokenize_manifest(manifest, tokenizer, tmp_path / "ref", **kw)

    real_write = ShardedTokenWriter.write_shard

    def dies_after_shard_1(self, k, ids, arrays):
        if k == 2:
            raise KeyboardInterrupt("killed")
        real_write(self, k, ids, arrays)

    monkeypatch.setattr(ShardedTokenWriter, "write_shard", dies_after_shard_1)
    with pytest.raises(KeyboardInterrupt):
        tokenize_manifest(manifest, tokenizer, tmp_path / "run", **kw)
    monkeypatch.setattr(ShardedTokenWriter, "write_shard", real_write)
    calls = []
    real_load = audio_cache.load_record
    monkeypatch.setattr(audio_cache, "load_record", lambda *a: calls.append(a) or real_load(*a))
    run = tokenize_manifest(manifest, tokenizer, tmp_path / "run", **kw)
    assert run.name == ref.name and _files(run) == _files(ref)
    n_records = TokenStore(ref).meta["num_records"]
    assert len(calls) < n_records - 6 + 1  # the two finished shards (6 records) were not redone


def test_fit_once_then_reuse(tmp_path, monkeypatch):
    recs = []
    for i, f in enumerate((200, 400, 800, 1600)):
        p = tmp_path / f"{i}.wav"
        sf.write(p, sine(0.5, 16000, f), 16000)
        recs.append(Record(str(i), str(p), None, 0.5, "s"))
    recs.append(Record("bad", str(tmp_path / "missing.wav"), None, 0.5, "s"))
    cfg = AudioTokenizerConfig(units_k=4, units_fit_max_frames=60)
    fitted = fit_audio_tokenizer(recs, UnitsTokenizer(cfg), tmp_path / "tok", progress=False)
    assert fitted.centroids is not None and (tmp_path / "tok" / "units_kmeans.npz").is_file()
    monkeypatch.setattr(audio_cache, "load_record", lambda *a: pytest.fail("refitted"))
    cfg.batch_seconds = 5.0  # does not change the units: no refit
    again = fit_audio_tokenizer(recs, UnitsTokenizer(cfg), tmp_path / "tok", progress=False)
    assert again.fingerprint() == fitted.fingerprint() and again.cfg.batch_seconds == 5.0
    cfg.units_k = 3  # does: refit
    with pytest.raises(pytest.fail.Exception, match="refitted"):
        fit_audio_tokenizer(recs, UnitsTokenizer(cfg), tmp_path / "tok", progress=False)


def test_a_file_replaced_in_place_is_tokenized_again(tmp_path, tokenizer):
    """Same name, same duration, other sound: the cache used to hand back the old tokens."""
    path = tmp_path / "a.wav"
    sf.write(path, sine(0.5, 16000, 200), 16000)
    write_manifest(tmp_path / "m.jsonl", [Record("a", str(path), "x", 0.5, "spk")])
    kw = {"max_bad_share": 0.9, "progress": False}
    first = tokenize_manifest(tmp_path / "m.jsonl", tokenizer, tmp_path / "cache", **kw)
    sf.write(path, sine(0.5, 16000, 1500) + 0.01, 16000)  # a fixed recording, same length
    second = tokenize_manifest(tmp_path / "m.jsonl", tokenizer, tmp_path / "cache", **kw)
    assert second != first
    assert TokenStore(second)[0].tolist() != TokenStore(first)[0].tolist()


@pytest.mark.parametrize("damage", ["truncated", "same_size"])
def test_a_damaged_shard_is_said_and_tokenized_again_never_read_short(
    tmp_path, tokenizer, damage, capsys
):
    """Found by a user (#31): a truncated shard of a finished store silently dropped pairs, and
    flipped bytes of the same size could not be noticed at all (no checksum)."""
    manifest, _ = _manifest(tmp_path)
    kw = dict(items_per_shard=4, max_bad_share=0.9, need_transcript=True, progress=False)
    out = tokenize_manifest(manifest, tokenizer, tmp_path / "cache", **kw)
    before = TokenStore(out)
    tokens = {i: before[k].copy() for k, i in enumerate(before.ids)}
    shard = out / "shard_00000.bin"
    data = shard.read_bytes()
    shard.write_bytes(data[: len(data) // 2] if damage == "truncated" else bytes(len(data)))
    again = tokenize_manifest(manifest, tokenizer, tmp_path / "cache", **kw)
    assert again == out and "damaged on disk" in capsys.readouterr().out
    after = TokenStore(out)
    assert after.ids == before.ids
    for k, i in enumerate(after.ids):
        np.testing.assert_array_equal(after[k], tokens[i])
    assert tokenize_manifest(manifest, tokenizer, tmp_path / "cache", **kw) == out
    assert "damaged" not in capsys.readouterr().out  # intact now, and not hashed again
