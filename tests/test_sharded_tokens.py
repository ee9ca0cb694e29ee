"""Tokenizing one corpus with several OS processes (``data --shard i/n``, #33 item 5): each writes
its store shards, one merge makes the store a single process writes, byte for byte; a killed
shard resumes; the units tokenizer is fitted once; bad ``--shard`` values are one-line errors."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from test_audio import sine
from test_audio_cache import _files, _manifest

import zipper_pl.data.tokens.audio_cache as audio_cache
from tests.conftest import ROOT
from zipper_pl.__main__ import main
from zipper_pl.data.tokenizers.audio_tokenizers import AudioTokenizerConfig, UnitsTokenizer
from zipper_pl.data.tokens.audio_cache import tokenize_manifest
from zipper_pl.data.tokens.sharding import data_shard, pin_gpu
from zipper_pl.data.tokens.store import VERIFIED_JSON, ShardedTokenWriter, TokenStore
from zipper_pl.errors import UserError
from zipper_pl.io import CHECKSUMS, TMP_MARK

TINY = ROOT / "experiments" / "tiny"
KW = {"items_per_shard": 3, "max_bad_share": 0.9, "need_transcript": True, "progress": False}

# One shard process, as a user's: `cli ARGS` runs `python -m zipper_pl ARGS`, `store MANIFEST
# CENTROIDS CACHE i/n` tokenizes a manifest with the units tokenizer of CENTROIDS (KW's settings).
# The environment adds what a test needs: DRIVER_ITEMS_PER_SHARD (the data command's slicing,
# small enough for the tiny corpus to have several store shards), DRIVER_LOG (fits and merges are
# appended to it), DRIVER_KILL_AT (shard_0000k.bin or finalize: SIGKILL there, a real kill with
# no cleanup, half a temp file left), DRIVER_NO_DECODE (decoding any audio fails the run).
DRIVER = """
import functools, os, signal, sys
import numpy as np
import zipper_pl.data.prepare as prepare
import zipper_pl.data.tokens.audio_cache as audio_cache
import zipper_pl.data.tokens.store as store
from zipper_pl.__main__ import main
from zipper_pl.data.tokenizers.audio_tokenizers import AudioTokenizerConfig, UnitsTokenizer
from zipper_pl.data.tokenizers.audio_tokenizers import AudioTokenizerConfig, UnitsTokenizer
from zipper_pl.data.tokens.sharding import parse_shard
from zipper_pl.io import TMP_MARK

env = os.environ

def log(line):
    if "DRIVER_LOG" in env:
        with open(env["DRIVER_LOG"], "a") as f:
            f.write(line + "\\n")

real_fit, real_finalize, real_write = (
    UnitsTokenizer.fit, store.ShardedTokenWriter.finalize, store.atomic_write_bytes)

def fit(self, waves):
    log(f"fit {os.getpid()}")
    real_fit(self, waves)

def finalize(self, meta, num_shards=None):
    if env.get("DRIVER_KILL_AT") == "finalize":
        os.kill(os.getpid(), signal.SIGKILL)
    log(f"merge {self.dir.name}")
    real_finalize(self, meta, num_shards)

def write(path, data):
    if env.get("DRIVER_KILL_AT") == path.name:
        (path.parent / f".{path.name}{TMP_MARK}killed").write_bytes(data[: len(data) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real_write(path, data)

def no_decoding(*args):
    raise AssertionError("audio decoded although every store shard was done")

UnitsTokenizer.fit, store.ShardedTokenWriter.finalize, store.atomic_write_bytes = (
    fit, finalize, write)
if "DRIVER_NO_DECODE" in env:
    audio_cache.load_record = no_decoding
if "DRIVER_ITEMS_PER_SHARD" in env:
    prepare.tokenize_manifest = functools.partial(
        audio_cache.tokenize_manifest, items_per_shard=int(env["DRIVER_ITEMS_PER_SHARD"]))
if sys.argv[1] == "cli":
    sys.exit(main(sys.argv[2:]))
manifest, centroids, cache, spec = sys.argv[2:]
cfg = AudioTokenizerConfig(units_k=8, max_seconds=2.0)
tok = UnitsTokenizer(cfg, centroids=np.load(centroids))
audio_cache.tokenize_manifest(manifest, tok, cache, items_per_shard=3, max_bad_share=0.9,
                              need_transcript=True, progress=False, shard=parse_shard(spec))
"""


@pytest.fixture(scope="module")
def tokenizer() -> UnitsTokenizer:
    """test_audio_cache's: 8 units fitted on four sines (the driver loads its centroids)."""
    tok = UnitsTokenizer(AudioTokenizerConfig(units_k=8, max_seconds=2.0))
    tok.fit([sine(0.5, 16000, f) for f in (200, 500, 900, 1500)])
    return tok


def _driver(tmp_path: Path, *args: str, **env: str) -> subprocess.Popen:
    """One shard process, started (not waited for): ``DRIVER`` with ``args`` and ``env``."""
    script = tmp_path / "driver.py"
    if not script.is_file():
        script.write_text(DRIVER)
    full = {**os.environ, **{f"DRIVER_{k.upper()}": v for k, v in env.items()}}
    out = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT, "text": True}
    return subprocess.Popen([sys.executable, str(script), *args], cwd=ROOT, env=full, **out)


def _run(*procs: subprocess.Popen) -> list[tuple[int, str]]:
    """(exit status, output) of each process, all started before: they run side by side."""
    return [(p.wait(timeout=300), p.stdout.read()) for p in procs]


def _store_args(tmp_path: Path, tokenizer, manifest: Path, cache: Path, spec: str) -> list[str]:
    centroids = tmp_path / "centroids.npy"
    np.save(centroids, tokenizer.centroids.numpy())
    return ["store", str(manifest), str(centroids), str(cache), spec]


def _tree(folder: Path) -> dict[str, bytes]:
    """Every file under ``folder`` by relative path, but the run's bookkeeping of mtimes
    (verified.json, checksums.json: when a file was last hashed) and the merge locks."""
    skip = (VERIFIED_JSON, CHECKSUMS)
    return {
        str(p.relative_to(folder)): p.read_bytes()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name not in skip and not p.name.endswith(".lock")
    }


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--shard", "3/2"], "0 <= i < n"),
        (["--shard", "x"], "write it as i/n"),
        (["--shard", "0/0"], "n >= 1"),
        (["--shard=-1/2"], "0 <= i < n"),
        (["--shard"], "needs a value"),
        (["--shard", "0/2", "--shard", "1/2"], "given twice"),
    ],
)
def test_a_bad_shard_is_one_line_naming_the_fix(args, says, tmp_path, capsys):
    code = main(["data", str(TINY / "pretrain_speech.yaml"), f"data.root={tmp_path}", *args])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and "--shard" in err and says in err, err
    assert "e.g." in err or "give it once" in err  # the fix, not only the fault
    assert not any(tmp_path.iterdir())  # stopped before the config was read


def test_shard_is_an_option_of_the_data_command_only(capsys):
    assert main(["pretrain", str(TINY / "pretrain_speech.yaml"), "--shard", "0/2"]) == 2
    assert "data command only" in capsys.readouterr().err


def test_the_shard_comes_from_the_flag_else_torchrun_else_a_slurm_step():
    torchrun = {"RANK": "3", "WORLD_SIZE": "4"}
    srun = {"SLURM_PROCID": "1", "SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2"}
    assert data_shard(flag=None, environ={}) == (None, "")
    assert data_shard(flag="1/2", environ=torchrun) == ((1, 2), "--shard")  # the flag wins
    assert data_shard(flag="0/1", environ=torchrun) == (None, "--shard")  # and turns it off
    assert data_shard(flag=None, environ=torchrun) == ((3, 4), "RANK/WORLD_SIZE")
    assert data_shard(flag=None, environ=srun) == ((1, 2), "SLURM_PROCID/SLURM_STEP_NUM_TASKS")
    # torchrun started by a one-task srun step: torchrun's processes are the shards
    one_task = {**torchrun, "SLURM_PROCID": "0", "SLURM_STEP_NUM_TASKS": "1"}
    assert data_shard(flag=None, environ=one_task) == ((3, 4), "RANK/WORLD_SIZE")
    # a batch script is ONE process, though its job has 4 tasks: it tokenizes everything
    batch = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}
    assert data_shard(flag=None, environ=batch) == (None, "")
    assert data_shard(flag=None, environ={"RANK": "0", "WORLD_SIZE": "1"}) == (
        None,
        "RANK/WORLD_SIZE",
    )
    with pytest.raises(UserError, match="RANK/WORLD_SIZE") as e:
        data_shard(flag=None, environ={"RANK": "4", "WORLD_SIZE": "4"})
    assert len(str(e.value).splitlines()) == 1


def test_a_shard_process_tokenizes_on_its_local_gpu(monkeypatch):
    """torchrun starts one process per GPU without hiding the others: each takes its own."""
    chosen = []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    assert pin_gpu({"LOCAL_RANK": "5", "SLURM_LOCALID": "0"}) == 1 and chosen == [1]
    assert pin_gpu({"SLURM_LOCALID": "2"}) == 2 and pin_gpu({}) is None
    with pytest.raises(UserError, match="LOCAL_RANK"):
        pin_gpu({"LOCAL_RANK": "x"})
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # srun --gpus-per-task: one
    assert pin_gpu({"LOCAL_RANK": "3"}) is None and chosen == [1, 2]


def test_two_processes_write_the_single_process_store_byte_for_byte(tmp_path, tokenizer):
    manifest, _ = _manifest(tmp_path)
    ref = tokenize_manifest(manifest, tokenizer, tmp_path / "ref", **KW)
    log = tmp_path / "events.log"
    shards = [
        _store_args(tmp_path, tokenizer, manifest, tmp_path / "run", f"{i}/2") for i in (0, 1)
    ]
    results = _run(*(_driver(tmp_path, *args, log=str(log)) for args in shards))
    assert all(code == 0 for code, _ in results), results
    assert log.read_text().splitlines() == [f"merge {ref.name}"]  # once, by one of them
    lines = [line for _, out in results for line in out.splitlines() if "train: shard" in line]
    assert len(lines) == 2 and any("the store is merged" in line for line in lines), lines
    for line in lines:  # 5 store shards: 0, 2, 4 for the first, 1, 3 for the second
        assert "tokenized 3 of 5 store shards" in line or "tokenized 2 of 5" in line, line
    run = tmp_path / "run" / ref.name
    assert _files(run) == _files(ref)  # index.npy, shards, sub-indexes, bad lists, report, meta
    assert sorted(p.name for p in run.iterdir()) == sorted(p.name for p in ref.iterdir())
    # the merge's lock lies beside the store (filelock may or may not leave its file)
    assert {p.name for p in (tmp_path / "run").iterdir()} <= {run.name, f".{run.name}.lock"}


def test_a_shard_writer_removes_only_its_own_slices_leftovers(tmp_path):
    """A temp file of another process's slice may be its write in progress: a shard writer
    leaves it (and the store-wide ones, which a merge writes); a plain writer removes all."""
    names = [f".shard_00000.bin{TMP_MARK}a", f".bad_00001.json{TMP_MARK}b",
             f".shard_00002.json{TMP_MARK}c", f".index.json{TMP_MARK}d"]  # fmt: skip
    for name in names:
        (tmp_path / name).write_bytes(b"half")
    ShardedTokenWriter(tmp_path, np.uint16, 3, writes=lambda k: k % 2 == 1)
    assert sorted(p.name for p in tmp_path.iterdir() if TMP_MARK in p.name) == sorted(
        [names[0], names[2], names[3]]
    )
    ShardedTokenWriter(tmp_path, np.uint16, 3)
    assert not any(TMP_MARK in p.name for p in tmp_path.iterdir())


def test_a_shard_with_too_many_bad_items_stops_and_merges_nothing(tmp_path, tokenizer):
    manifest, _ = _manifest(tmp_path)
    kw = {**KW, "items_per_shard": 4, "max_bad_share": 0.05}
    with pytest.raises(UserError, match="stopped after 4 of 13 items"):  # its store shard 1
        tokenize_manifest(manifest, tokenizer, tmp_path / "cache", shard=(1, 2), **kw)
    assert not any(TokenStore.exists(p) for p in (tmp_path / "cache").iterdir())


def test_a_killed_shard_resumes_and_a_plain_run_only_merges(tmp_path, tokenizer, monkeypatch):
    manifest, _ = _manifest(tmp_path)
    ref = tokenize_manifest(manifest, tokenizer, tmp_path / "ref", **KW)
    run = tmp_path / "run" / ref.name
    args = [_store_args(tmp_path, tokenizer, manifest, tmp_path / "run", f"{i}/2") for i in (0, 1)]
    # killed while writing its second store shard (shard 2): half a temp file is left
    [(code, _)] = _run(_driver(tmp_path, *args[0], kill_at="shard_00002.bin"))
    assert code == -9 and any(TMP_MARK in p.name for p in run.iterdir())
    # run again, it resumes: store shard 0 is kept, 2 and 4 are tokenized, the temp file goes
    [(code, out)] = _run(_driver(tmp_path, *args[0]))
    assert code == 0 and not any(TMP_MARK in p.name for p in run.iterdir())
    [line] = [line for line in out.splitlines() if "shard 0/2" in line]
    assert "tokenized 2 of 5 store shards; 2 left for the other shards" in line
    assert "run them" in line and "make data" in line
    assert not TokenStore.exists(run)  # a partial store is never finalized
    # the other shard is killed while merging: every store shard is done, the store is not
    [(code, _)] = _run(_driver(tmp_path, *args[1], kill_at="finalize"))
    assert code == -9 and not TokenStore.exists(run)

    def no_decoding(*args, **kwargs):
        raise AssertionError("audio decoded although every store shard was done")

    monkeypatch.setattr(audio_cache, "load_record", no_decoding)
    assert tokenize_manifest(manifest, tokenizer, tmp_path / "run", **KW) == run  # merges only
    assert _files(run) == _files(ref)


def test_the_data_command_in_two_processes_fits_once_and_matches_one_process(tmp_path):
    """`python -m zipper_pl data ... --shard 0/2` and `--shard 1/2` side by side, the units
    tokenizer not fitted yet: one process fits it (the other waits and loads it), each
    tokenizes its store shards of every pool, and the stores, then a plain `data` run that
    decodes nothing, are those of one process."""
    common = [str(TINY / "pretrain_speech.yaml"), f"data.root={tmp_path / 'root'}",
              "train.accelerator=cpu", f"runs={tmp_path / 'runs'}"]  # fmt: skip
    small = {"items_per_shard": "7"}  # the tiny corpus's 40 speech records: 6 store shards
    one = f"data.cache_dir={tmp_path / 'one'}"
    [(code, out)] = _run(_driver(tmp_path, "cli", "data", *common, one, **small))
    assert code == 0, out
    log = tmp_path / "events.log"
    cache = f"data.cache_dir={tmp_path / 'two'}"
    shards = [
        _driver(tmp_path, "cli", "data", *common, cache, "--shard", f"{i}/2", log=str(log), **small)
        for i in (0, 1)
    ]
    results = _run(*shards)
    assert all(code == 0 for code, _ in results), results
    events = log.read_text().splitlines()
    assert sum(e.startswith("fit") for e in events) == 1, events  # fitted once, then loaded
    merges = [e for e in events if e.startswith("merge")]
    assert len(merges) == len(set(merges)) == 4, events  # each pool's store merged exactly once
    for i, (_, out) in enumerate(results):
        assert f"[data] shard {i}/2 (from --shard)" in out
    [(code, out)] = _run(_driver(tmp_path, "cli", "data", *common, cache, no_decode="1", **small))
    assert code == 0, out
    assert out.count("tokens cached in") == 4 and "tokenize audio" not in out
    for folder in ("audio_tokens", "audio_tokenizer"):
        one, two = _tree(tmp_path / "one" / folder), _tree(tmp_path / "two" / folder)
        assert one.keys() == two.keys() and one == two, folder
