"""Faults a user can cause end in one short message naming the fix: no traceback, and never a
broken model exported as finished."""

from __future__ import annotations

import ast
import errno
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import lightning as L
import pytest
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

import zipper_pl.__main__ as zipper_cli
from tests.conftest import ROOT, run_make, tiny_config
from tests.test_readers import _audio
from zipper_pl.data.corpora.manifest import Record, write_manifest
from zipper_pl.data.corpora.readers import read_jsonl_manifest
from zipper_pl.data.corpora.text import TextTokenizer
from zipper_pl.data.prepare import audio_tokenizer, text_tokenizer
from zipper_pl.data.tokenizers import audio_tokenizers as at
from zipper_pl.data.tokenizers import encodec_weights
from zipper_pl.data.tokens.store import reusable_store
from zipper_pl.errors import Terminated, UserError
from zipper_pl.fitting import towers
from zipper_pl.io import TMP_MARK, atomic_write_json, copy_artefact, save_weights
from zipper_pl.lit.common import NonFiniteTraining
from zipper_pl.lit.lm import LMModule
from zipper_pl.results.audio_eval import safe_file_name
from zipper_pl.runs.finetuned import load_tower
from zipper_pl.runs.layout import is_finished, require_stage, stage_dir, stage_identity
from zipper_pl.stages.chain import pretrain


def cli(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "zipper_pl", *args], capture_output=True, text=True, cwd=cwd
    )


def assert_one_message(r: subprocess.CompletedProcess, *words: str) -> str:
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    msg = r.stderr.strip()
    assert msg.startswith("error:") and len(msg.splitlines()) <= 3, msg
    for w in words:
        assert w in msg, (w, msg)
    return msg


@pytest.mark.parametrize("value", ["inf", "nan", "-inf"])
def test_non_finite_lr_is_refused_before_any_work(tmp_path, value):
    r = cli("pretrain", "experiments/tiny/pretrain_text.yaml", f"train.lr={value}",
            f"runs={tmp_path}")  # fmt: skip
    assert_one_message(r, "train.lr", "finite")
    assert not any(tmp_path.iterdir())


def test_diverging_training_stops_and_exports_nothing(data_root, tmp_path):
    """lr=1e30 passes validation but blows the weights up at once: one message with the step,
    no weights, no metrics, the stage not finished."""
    cfg = tiny_config(data_root, tmp_path, "pretrain_text.yaml", "train.lr=1e30",
                      "train.warmup_steps=0", "train.max_steps=6")  # fmt: skip
    with pytest.raises(NonFiniteTraining, match=r"step \d+.*train.lr=1e\+30.*train.precision"):
        pretrain(cfg)
    folders = [p.parent for p in tmp_path.rglob("identity.json")]
    assert folders and not any(is_finished(f) for f in folders)
    assert not any((f / "model.safetensors").exists() or (f / "metrics.json").exists()
                   for f in folders)  # fmt: skip


def test_metrics_json_is_valid_json_with_non_finite_values(tmp_path):
    atomic_write_json(tmp_path / "m.json", {"val_loss": float("nan"), "x": [float("inf"), 1.0]})
    text = (tmp_path / "m.json").read_text()
    assert json.loads(text) == {"val_loss": None, "x": [None, 1.0]} and "NaN" not in text


def test_non_finite_weights_are_never_exported(tmp_path):
    with pytest.raises(UserError, match="NaN / inf.*lower train.lr"):
        save_weights({"w": torch.tensor([1.0, float("nan")])}, tmp_path / "model.safetensors")
    assert not list(tmp_path.iterdir())  # no weights, no temp file left behind


def test_weights_are_written_like_every_other_artefact(tmp_path):
    save_weights({"w": torch.ones(2)}, tmp_path / "model.safetensors")
    atomic_write_json(tmp_path / "m.json", {})
    modes = {p.name: os.stat(p).st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["model.safetensors"] == modes["m.json"] and not any(
        TMP_MARK in p.name for p in tmp_path.iterdir()
    )


@pytest.mark.parametrize(
    ("override", "words"),
    [
        ("train.devices=0", ["train.devices", "count >= 1"]),
        ("train.devices=-1", ["train.devices"]),
        ("seed=-1", ["seed", ">= 0"]),
        ("zip.freeze=foo", ["zip.freeze", "none, both, all, text, speech"]),
        pytest.param(
            "train.accelerator=gpu",
            ["train.accelerator", "no CUDA GPU"],
            marks=pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is here"),
        ),
    ],
)
def test_trainer_settings_are_checked_before_any_work(tmp_path, override, words):
    r = cli("zip", "experiments/tiny/zip_asr.yaml", override, f"runs={tmp_path}")
    assert_one_message(r, *words)
    assert not any(tmp_path.iterdir()) and not (tmp_path.parent / f"{tmp_path.name}-s-1").exists()


@pytest.mark.parametrize(
    ("text", "words"),
    [("train: 5\n", ["train is a section", "got 5"]), ("", ["is empty"]), ("# only\n", ["empty"])],
)
def test_yaml_shape_errors_name_the_file_or_key(tmp_path, text, words):
    (tmp_path / "c.yaml").write_text(text)
    assert_one_message(cli("pretrain", str(tmp_path / "c.yaml")), *words)


class _Planted:
    """Unpickling this creates a file: stands in for any code a planted checkpoint would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_a_planted_pickle_in_the_hub_cache_runs_nothing(tmp_path, monkeypatch):
    """EnCodec weights are read by our code with weights_only=True (the encodec package would
    unpickle them in full), after the published checksum; a planted file runs no code."""
    cache = tmp_path / "hub" / "checkpoints" / at.ENCODEC_CHECKPOINT
    cache.parent.mkdir(parents=True)
    marker = tmp_path / "code_ran"
    torch.save({"encoder.weight": _Planted(marker)}, cache)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    cfg = at.AudioTokenizerConfig(codec="encodec")
    with pytest.raises(UserError, match="not the published EnCodec checkpoint.*delete it"):
        at.EncodecTokenizer(cfg)
    # even with a matching checksum, the unpickler refuses anything but weights
    digest = hashlib.sha256(cache.read_bytes()).hexdigest()
    monkeypatch.setattr(encodec_weights, "ENCODEC_SHA256_PREFIX", digest[:8])
    with pytest.raises(UserError, match="does not load as weights.*delete it") as e:
        at.EncodecTokenizer(cfg)
    assert not marker.exists() and e.value.__suppress_context__


UNSAFE_MODULES = {
    "pickle",
    "cPickle",
    "_pickle",
    "joblib",
    "dill",
    "cloudpickle",
    "marshal",
    "shelve",
}


def _unsafe(node: ast.AST) -> str | None:
    """What makes one AST node an unsafe loader, or None (code only: prose may say "pickle")."""
    if isinstance(node, ast.Import | ast.ImportFrom):
        names = (
            [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
        )
        if any(n.split(".")[0] in UNSAFE_MODULES for n in names):
            return "pickle-based loading"
    if not isinstance(node, ast.Call):
        return None
    name = ast.unparse(node.func)
    kw = {k.arg: ast.unparse(k.value) for k in node.keywords}
    if name.endswith("torch.load") and kw.get("weights_only") != "True":
        return "torch.load without weights_only=True"
    if name in ("yaml.load", "yaml.unsafe_load", "yaml.full_load"):
        return "yaml.load (use safe_load)"
    if name in ("eval", "exec"):
        return "eval / exec"
    if kw.get("shell") == "True":
        return "subprocess with shell=True"
    if kw.get("allow_pickle") == "True":
        return "numpy allow_pickle=True"
    return None


def test_no_unsafe_loader_in_the_package():
    """Never unpickle a file a user did not make: a new unsafe call fails here."""
    found = []
    for path in sorted((ROOT / "zipper_pl").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            what = _unsafe(node)
            if what:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {what}")
    assert found == []


def test_the_unsafe_loader_check_finds_each_kind():
    """The check above can fail: each unsafe form is found, prose about pickles is not."""
    code = """
import pickle
from joblib import load
torch.load(f)
torch.load(f, weights_only=False)
yaml.load(s)
eval(s)
subprocess.run(c, shell=True)
np.load(f, allow_pickle=True)
msg = "a pickle can run code"  # a pickle
torch.load(f, weights_only=True)
"""
    found = [what for node in ast.walk(ast.parse(code)) if (what := _unsafe(node))]
    assert len(found) == 8 and len(set(found)) == 6


@pytest.fixture
def tower_copy(tiny_towers, tmp_path):
    """A private copy of the tiny text tower folder, free to break."""
    dst = tmp_path / "text"
    shutil.copytree(tiny_towers["text"], dst)
    return dst


def test_truncated_tower_weights_name_the_folder_to_delete(data_root, tiny_towers, tower_copy):
    w = tower_copy / "model.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(UserError, match="holds 100 bytes.*delete that folder"):  # checksums.json
        require_stage(tower_copy, "text tower", "inputs.text")
    (tower_copy / "checksums.json").unlink()  # a folder from before checksums: its header
    with pytest.raises(UserError, match="unreadable weights.*delete that folder"):
        require_stage(tower_copy, "text tower", "inputs.text")
    r = cli("zip", "experiments/tiny/zip_asr.yaml", f"inputs.text={tower_copy}",
            f"inputs.speech={tiny_towers['speech']}", f"data.root={data_root}",
            f"data.cache_dir={data_root / 'cache'}", "train.accelerator=cpu")  # fmt: skip
    assert_one_message(r, "unreadable weights", str(tower_copy))


def test_tower_json_of_another_size_is_one_message(tower_copy):
    cfg = json.loads((tower_copy / "tower.json").read_text())
    (tower_copy / "tower.json").write_text(json.dumps({**cfg, "d_model": cfg["d_model"] * 2}))
    with pytest.raises(UserError, match="do not fit the model.*another model size"):
        load_tower(tower_copy)
    (tower_copy / "tower.json").write_text('{"no_such_field": 1}')
    with pytest.raises(UserError, match="does not describe a tower"):
        load_tower(tower_copy)


def test_truncated_last_ckpt_is_kept_aside_and_the_stage_restarts(data_root, tmp_path, capsys):
    over = ("train.max_steps=2", "train.val_every=2", "train.ckpt_every=1")
    cfg = tiny_config(data_root, tmp_path, "pretrain_text.yaml", *over, "train.max_steps=1")
    first = pretrain(cfg)  # a finished 1-step stage gives us a real last.ckpt to break
    cfg = tiny_config(data_root, tmp_path, "pretrain_text.yaml", *over)
    out = stage_dir(cfg, "pretrain")
    out.mkdir(parents=True)
    atomic_write_json(out / "identity.json", stage_identity(cfg, "pretrain"))
    (out / "last.ckpt").write_bytes((first / "last.ckpt").read_bytes()[:1000])
    assert pretrain(cfg) == out and is_finished(out)
    assert list(out.glob("last.ckpt.unreadable-*")) and "kept as" in capsys.readouterr().out


def test_a_stage_stopped_by_sigterm_exits_143_not_0(data_root, tmp_path):
    """Lightning ends fit on SIGTERM with a SystemExit without a code, so a preempted (or
    `timeout`-ed) stage used to exit 0 and make went on to the next stage: it must exit 143,
    say how to resume, and leave the stage unfinished."""
    cmd = [sys.executable, "-m", "zipper_pl", "pretrain", "experiments/tiny/pretrain_text.yaml",
           f"runs={tmp_path}", f"data.root={data_root}", f"data.cache_dir={data_root / 'cache'}",
           "train.accelerator=cpu", "train.max_steps=100000", "train.val_every=1000",
           "train.ckpt_every=1000"]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen(
        cmd, cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )  # one pipe, read to the end: no deadlock
    try:
        for line in proc.stdout:  # printed as fit starts
            if line.startswith("[train] global batch"):
                proc.send_signal(signal.SIGTERM)
                break
        out, _ = proc.communicate(timeout=120)
    finally:
        proc.kill()
    assert proc.returncode == 143, out[-2000:]
    assert "re-run the same command to resume" in out and "Traceback" not in out
    folders = [p.parent for p in tmp_path.rglob("identity.json")]
    assert folders and not any(is_finished(f) for f in folders)
    # no train.ckpt_every step was reached: last.ckpt is the SIGTERM's, at the step it names
    step = int(re.search(r"stopped by SIGTERM at step (\d+): last.ckpt saved there", out)[1])
    (last,) = tmp_path.rglob("last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == step


def test_a_sigterm_after_the_last_step_still_stops_the_process(data_root, tmp_path, monkeypatch):
    """Lightning ends a fit whose SIGTERM came after the last step without raising: the stage
    must still stop (Terminated), not go on to export and to the study's next cell."""
    fit = L.Trainer.fit

    def fit_then_sigterm(trainer, *args, **kwargs):
        fit(trainer, *args, **kwargs)
        trainer._signal_connector.received_sigterm = True

    monkeypatch.setattr(L.Trainer, "fit", fit_then_sigterm)
    cfg = tiny_config(data_root, tmp_path, "pretrain_text.yaml", "train.max_steps=2")
    with pytest.raises(Terminated, match="at step 2: last.ckpt saved there"):
        pretrain(cfg)
    (last,) = tmp_path.rglob("last.ckpt")  # train.ckpt_every (10) was never reached
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 2


class _StopAt(L.Callback):
    """After the ``batch``-th training batch (0-based, this run) or at optimizer step ``step``:
    what Lightning's SIGTERM handler does (set the flag), or Ctrl-C (``interrupt``)."""

    def __init__(self, *, step: int = -1, batch: int = -1, interrupt: bool = False) -> None:
        self.step, self.batch, self.interrupt, self.seen = step, batch, interrupt, 0

    def on_train_batch_end(self, trainer, *args) -> None:
        self.seen += 1
        if trainer.global_step == self.step or self.seen - 1 == self.batch:
            if self.interrupt:
                raise KeyboardInterrupt
            trainer._signal_connector.received_sigterm = True


def _stopping(monkeypatch, stop: L.Callback) -> None:
    """Every trainer the stages make gets ``stop``."""
    real_make = towers.make_trainer

    def make(cfg, out, **kw):
        trainer = real_make(cfg, out, **kw)
        trainer.callbacks.insert(0, stop)
        return trainer

    monkeypatch.setattr(towers, "make_trainer", make)


@pytest.mark.parametrize("step", [3, 4])  # between validations, and at one (val_every 4)
def test_a_stage_resumed_after_sigterm_ends_as_an_uninterrupted_one(
    step, data_root, tmp_path, monkeypatch
):
    """The SIGTERM checkpoint is a step boundary an uninterrupted run passed through: stopped
    long before train.ckpt_every and resumed, the weights equal an uninterrupted run's."""
    args = ("train.max_steps=8", "train.val_every=4", "train.ckpt_every=100")
    straight = pretrain(tiny_config(data_root, tmp_path / "straight", "pretrain_text.yaml", *args))
    cfg = tiny_config(data_root, tmp_path / "stopped", "pretrain_text.yaml", *args)
    with monkeypatch.context() as m:
        _stopping(m, _StopAt(step=step))
        with pytest.raises(Terminated, match=f"at step {step}: last.ckpt saved there"):
            pretrain(cfg)
    resumed = pretrain(cfg)
    want, got = (load_file(f / "model.safetensors") for f in (straight, resumed))
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)


def test_a_sigterm_inside_an_accumulation_window_saves_nothing(data_root, tmp_path, monkeypatch):
    """With train.accumulate=2 the 7th batch is the first half of step 4: its gradients are in
    no checkpoint, so a save there would resume with half a step (review finding)."""
    _stopping(monkeypatch, _StopAt(batch=6))
    cfg = tiny_config(data_root, tmp_path, "pretrain_text.yaml", "train.accumulate=2",
                      "data.batch_size=4", "train.ckpt_every=100")  # fmt: skip
    with pytest.raises(Terminated, match=r"step 3 \(inside an accumulation window.*no last.ckpt"):
        pretrain(cfg)
    assert not list(tmp_path.rglob("last.ckpt"))


def test_a_sigterm_during_a_validation_keeps_the_previous_last_ckpt(
    data_root, tmp_path, monkeypatch
):
    """Lightning stops half-way through a validation; a checkpoint there would resume past the
    validation and lose its score, so last.ckpt stays the train.ckpt_every one (step 9)."""
    step = LMModule.validation_step

    def validate_then_sigterm(module, batch, batch_idx):
        step(module, batch, batch_idx)
        module.trainer._signal_connector.received_sigterm = True  # after the first val batch

    monkeypatch.setattr(LMModule, "validation_step", validate_then_sigterm)
    # validation at step 10; batches of 2 windows: more than one validation batch
    cfg = tiny_config(data_root, tmp_path, "pretrain_text.yaml", "data.batch_size=2",
                      "train.ckpt_every=3")  # fmt: skip
    with pytest.raises(Terminated, match="step 10 .during a validation.: last.ckpt is the prev"):
        pretrain(cfg)
    (last,) = tmp_path.rglob("last.ckpt")
    assert torch.load(last, map_location="cpu", weights_only=True)["global_step"] == 9


def test_ctrl_c_in_training_is_a_keyboard_interrupt_not_exit_1(data_root, tmp_path, monkeypatch):
    """Lightning answers Ctrl-C inside fit with sys.exit(1): the CLI exited 1 without the resume
    hint (its 130 and hint held only outside fit; review finding)."""
    _stopping(monkeypatch, _StopAt(step=2, interrupt=True))
    handler = signal.getsignal(signal.SIGINT)  # Lightning ignores SIGINT from then on
    try:
        with pytest.raises(KeyboardInterrupt):
            pretrain(tiny_config(data_root, tmp_path, "pretrain_text.yaml"))
    finally:
        signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize(("stop", "code"), [(KeyboardInterrupt(), 130), (Terminated("x"), 143)])
def test_an_interrupted_stage_exits_128_plus_the_signal_with_the_resume_hint(
    stop, code, monkeypatch, capsys
):
    """Ctrl-C and SIGTERM share one message (how to resume) and exit as a shell reports them."""

    def interrupted(cfg):
        raise stop

    monkeypatch.setattr(zipper_cli, "_stage", lambda name: interrupted)
    assert zipper_cli.main(["pretrain", "experiments/tiny/pretrain_text.yaml"]) == code
    err = capsys.readouterr().err
    assert err.startswith("interrupted: ") and "re-run the same command to resume" in err


def test_os_errors_are_one_line_with_the_path(tmp_path):
    (tmp_path / "file").write_text("")
    runs = tmp_path / "file" / "runs"  # a folder under a file: NotADirectoryError
    r = cli("pretrain", "experiments/tiny/pretrain_text.yaml", f"runs={runs}",
            f"data.root={tmp_path / 'file' / 'data'}")  # fmt: skip
    msg = assert_one_message(r, "file", "writable")
    assert len(msg.splitlines()) == 1


def test_ids_never_name_a_path_outside_their_folder(tmp_path):
    assert safe_file_name("gold_../../etc/x.wav") == "gold_.._.._etc_x.wav"
    assert "/" not in safe_file_name("zipper_small/100/book/01.wav")
    assert not safe_file_name("..wav").startswith(".")
    _audio(tmp_path / "a.wav", 0.2)
    rec = Record("../evil", str(tmp_path / "a.wav"), "hi", 0.2, "s")
    write_manifest(tmp_path / "train.jsonl", [rec])
    with pytest.raises(UserError, match="not plain names.*'../evil'"):
        read_jsonl_manifest(tmp_path, ["train"])


def test_a_full_disk_leaves_no_temp_file_behind(tmp_path, monkeypatch):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    with pytest.raises(OSError, match="No space"):
        atomic_write_json(tmp_path / "m.json", {"a": 1})
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "tok.model").write_bytes(b"x")
    (tmp_path / "out").mkdir()
    with pytest.raises(OSError, match="No space"):
        copy_artefact(tmp_path / "src" / "tok.model", tmp_path / "out")
    assert not list((tmp_path / "out").iterdir()) and not (tmp_path / "m.json").exists()
    assert not [p for p in tmp_path.iterdir() if TMP_MARK in p.name]


def test_resuming_into_a_folder_with_another_architecture_changes_nothing(data_root, tmp_path):
    out = tmp_path / "tower"
    common = ["experiments/tiny/pretrain_text.yaml", f"out={out}", f"data.root={data_root}",
              f"data.cache_dir={data_root / 'cache'}", "train.max_steps=1", "train.val_every=1",
              "train.accelerator=cpu"]  # fmt: skip
    assert cli("pretrain", *common).returncode == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    assert_one_message(cli("pretrain", *common, "model.d_model=64"), "holds another experiment")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_make_a_test_starts_is_top_level_even_under_make_test(tmp_path, monkeypatch):
    """Under `make test` the suite inherits MAKELEVEL: every make a test started was a sub-make
    that computed all stage paths first (~10 s even for `make -n`; ~2 min of the suite)."""
    if not (ROOT / ".venv" / ".installed").is_file():  # the Makefile computes paths only then
        pytest.skip("needs `make setup` (the venv's stamp)")
    monkeypatch.setenv("MAKELEVEL", "1")
    marker = tmp_path / "paths-computed"
    r = run_make("-n", "tensorboard", f"ZPL=touch {marker}; true")  # ZPL: what runs `paths`
    assert r.returncode == 0 and not marker.exists()


def test_tensorboard_listens_on_localhost_unless_asked():
    local = run_make("-n", "tensorboard").stdout
    everyone = run_make("-n", "tensorboard", "TB_BIND_ALL=1")
    assert "--host 127.0.0.1" in local and "--bind_all" not in local
    assert "--bind_all" in everyone.stdout


def test_broken_tokenizers_name_the_folder_to_delete(tower_copy, tiny_towers, tmp_path):
    (tower_copy / "text_tokenizer.model").write_bytes(b"garbage")
    with pytest.raises(UserError, match="text tokenizer.*unreadable.*delete the folder"):
        TextTokenizer(tower_copy / "text_tokenizer.model")
    speech = tmp_path / "speech"
    shutil.copytree(tiny_towers["speech"], speech)
    (speech / "audio_tokenizer" / "audio_tokenizer.json").write_text("{truncated")
    with pytest.raises(UserError, match="audio tokenizer.*unreadable.*delete the stage folder"):
        at.AudioTokenizer.load(speech / "audio_tokenizer")


def test_help_is_usage_never_a_config_file_name():
    r = cli("zip", "--help")
    assert r.returncode == 0 and "usage: python -m zipper_pl zip" in r.stdout and not r.stderr


def _small_disk(tmp_path: Path, size: str = "256k") -> Path | None:
    """A real small tmpfs where this process may mount one (root on Linux), else None."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return None
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(disk)],
                       capture_output=True)  # fmt: skip
    return disk if r.returncode == 0 else None


def test_a_full_disk_at_the_weights_export_is_the_one_line_os_error(tmp_path, monkeypatch, capsys):
    """Found by a user (#31): safetensors' Rust writer reported a full disk as SafetensorError,
    which reached the console as a traceback; it is now the OSError every other writer raises."""
    weights = {"w": torch.zeros(200_000)}  # 800 KB: more than the small disk holds
    disk = _small_disk(tmp_path)
    if disk is not None:  # a real full disk
        try:
            with pytest.raises(OSError) as err:
                save_weights(weights, disk / "model.safetensors")
            assert err.value.errno == errno.ENOSPC and "model.safetensors" in err.value.filename
            assert not [p for p in disk.iterdir() if TMP_MARK in p.name]
        finally:
            subprocess.run(["umount", str(disk)], capture_output=True)

    def full(*args, **kwargs):  # the library's own error, worded as it words it
        raise SafetensorError("Error while serializing: I/O error: No space left on device "
                              "(os error 28)")  # fmt: skip

    monkeypatch.setattr("safetensors.torch.save_file", full)
    monkeypatch.setattr(
        zipper_cli,
        "_stage",
        lambda name: lambda cfg: save_weights(weights, tmp_path / "m.safetensors"),
    )
    assert zipper_cli.main(["pretrain", "experiments/tiny/pretrain_text.yaml"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert (
        len(err) == 1 and "No space left on device (ENOSPC)" in err[0] and "m.safetensors" in err[0]
    )


def test_a_real_full_disk_at_the_checkpoint_names_it_and_a_rerun_with_space_completes(
    data_root, tmp_path
):
    """Lightning writes last.ckpt to the system temp folder and moves it into the stage folder: on
    a full disk the message named that temp file (found with a real tmpfs)."""
    disk = _small_disk(tmp_path)
    if disk is None:
        pytest.skip("needs root to mount a small tmpfs (the injected faults run elsewhere)")
    try:
        out = disk / "stage"
        args = ["pretrain", "experiments/tiny/pretrain_text.yaml", f"data.root={data_root}",
                f"data.cache_dir={data_root / 'cache'}", "train.max_steps=3", "train.val_every=3",
                "train.ckpt_every=3", "train.accelerator=cpu", f"out={out}"]  # fmt: skip
        r = cli(*args)
        last = r.stderr.strip().splitlines()[-1]  # after Lightning's own start-up lines
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert last.startswith("error: ") and "No space left on device (ENOSPC)" in last, last
        assert str(out / "last.ckpt") in last and not is_finished(out), last
        subprocess.run(["mount", "-o", "remount,size=16m", str(disk)], check=True)
        r = cli(*args)
        assert r.returncode == 0 and is_finished(out), r.stderr[-2000:]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_stage_whose_weights_changed_on_disk_is_refused_naming_the_folder(tiny_towers, tmp_path):
    """Found by a user (#31): same-size corruption of a finished stage's weights could not be
    noticed (their header still parsed); now its recorded size and sha256 are checked."""
    folder = tmp_path / "tower"
    shutil.copytree(tiny_towers["speech"], folder, copy_function=shutil.copy)  # new mtimes
    assert require_stage(folder, "speech tower", "inputs.speech") == folder  # intact: hashed once
    recorded = json.loads((folder / "checksums.json").read_text())["model.safetensors"]
    assert recorded["mtime_ns"] == (folder / "model.safetensors").stat().st_mtime_ns
    weights = folder / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[-8:] = bytes(8)  # the last tensor's last values: the header still parses
    weights.write_bytes(bytes(data))
    with pytest.raises(
        UserError, match=r"tower.*model.safetensors differs from the sha256.*delete"
    ):
        require_stage(folder, "speech tower", "inputs.speech")
    weights.write_bytes(bytes(data[:-100]))
    with pytest.raises(UserError, match="holds .* bytes"):
        require_stage(folder, "speech tower", "inputs.speech")


# on the tiny corpus the disk fills at the text tokenizer's model (200k) or the token shards (300k)
@pytest.mark.parametrize("size", ["200k", "300k"])
def test_a_real_full_disk_while_preparing_data_names_the_file_and_a_rerun_completes(
    data_root, tmp_path, size
):
    """Found with a real tmpfs: a write that fills the disk raised an OSError naming no file, so
    the message said "No space left on device" without saying where."""
    disk = _small_disk(tmp_path, size)
    if disk is None:
        pytest.skip("needs root to mount a small tmpfs (the injected faults run elsewhere)")
    try:
        cache = disk / "cache"
        args = ["data", "experiments/tiny/pretrain_speech.yaml", f"data.root={data_root}",
                f"data.cache_dir={cache}", f"runs={disk / 'runs'}"]  # fmt: skip
        r = cli(*args)
        last = r.stderr.strip().splitlines()[-1]
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
        assert last.startswith(f"error: {cache}/") and "No space left on device" in last, last
        for index in cache.rglob("index.json"):  # no store claims to be finished unless intact
            assert reusable_store(index.parent), index
        subprocess.run(["mount", "-o", "remount,size=32m", str(disk)], check=True)
        r = cli(*args)
        assert r.returncode == 0 and "tokens cached" in r.stdout, r.stderr[-2000:]
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def _fill(disk: Path) -> Path:
    """Fill a mounted small disk to the last block: the next write fails with ENOSPC."""
    assert os.path.ismount(disk), disk  # never fill the machine's own disk
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as f:
        try:
            while True:
                f.write(bytes(4096))
        except OSError as e:
            assert e.errno == errno.ENOSPC
    return filler


def test_a_real_full_disk_at_tensorboard_names_the_stage_folder_and_a_rerun_completes(
    data_root, tmp_path, monkeypatch, capsys
):
    """Found with a real tmpfs: Lightning's hparams.yaml (written through fsspec) and
    TensorBoard's event writer raise ``No space left on device`` naming no file, so the one line
    said nothing of where; it now names the stage folder."""
    disk = _small_disk(tmp_path, "2m")
    if disk is None:
        pytest.skip("needs root to mount a small tmpfs (the injected faults run elsewhere)")
    real_make = towers.make_trainer
    filled: list[Path] = []

    def make_then_fill(*args, **kwargs):  # the logger's event file exists, then the disk is full
        trainer = real_make(*args, **kwargs)
        assert trainer.logger.experiment is not None
        filled.append(_fill(disk))
        return trainer

    monkeypatch.setattr(towers, "make_trainer", make_then_fill)
    out = disk / "stage"
    args = ["pretrain", "experiments/tiny/pretrain_text.yaml", f"data.root={data_root}",
            f"data.cache_dir={data_root / 'cache'}", "train.max_steps=3", "train.val_every=3",
            "train.ckpt_every=100", "train.accelerator=cpu", f"out={out}"]  # fmt: skip
    try:
        assert zipper_cli.main(args) == 2
        err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error")]
        assert len(err) == 1 and f"{out}: No space left on device (ENOSPC)" in err[0], err
        assert not is_finished(out)
        filled[0].unlink()
        monkeypatch.setattr(towers, "make_trainer", real_make)
        assert zipper_cli.main(args) == 0 and is_finished(out)
    finally:
        subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_damaged_cached_tokenizer_is_said_and_made_again_identical(data_root, tmp_path, capsys):
    """Found by a user (#31, the tokenizer half): a cached tokenizer carried no checksum, so a
    flipped byte or a truncated file was reused as it was (or failed deep inside a library)."""
    cfg = tiny_config(data_root, tmp_path, "pretrain_speech.yaml")
    text = text_tokenizer(cfg).path
    _, folder = audio_tokenizer(cfg)
    kmeans = folder / "units_kmeans.npz"
    good = {text: text.read_bytes(), kmeans: kmeans.read_bytes()}
    data = bytearray(good[text])
    data[len(data) // 2] ^= 0xFF  # same size, other content
    text.write_bytes(bytes(data))
    kmeans.write_bytes(good[kmeans][:-100])  # truncated
    capsys.readouterr()
    assert text_tokenizer(cfg).path == text and audio_tokenizer(cfg)[1] == folder
    out = capsys.readouterr().out
    assert "[cache] text tokenizer" in out and "differs from the sha256" in out, out
    assert "[cache] audio tokenizer" in out and "units_kmeans.npz holds" in out, out
    assert all(p.read_bytes() == b for p, b in good.items())  # made again, bit for bit
    capsys.readouterr()
    text_tokenizer(cfg), audio_tokenizer(cfg)
    assert "[cache]" not in capsys.readouterr().out  # intact now: reused without a word


def test_a_stage_whose_tokenizer_changed_is_refused_naming_the_file(tiny_towers, tmp_path):
    """A finished stage's checksums cover what later stages read: weights and tokenizers."""
    folder = tmp_path / "tower"
    shutil.copytree(tiny_towers["speech"], folder, copy_function=shutil.copy)
    recorded = json.loads((folder / "checksums.json").read_text())
    assert {"model.safetensors", "audio_tokenizer/units_kmeans.npz"} <= set(recorded)
    kmeans = folder / "audio_tokenizer" / "units_kmeans.npz"
    data = bytearray(kmeans.read_bytes())
    data[-1] ^= 0xFF
    kmeans.write_bytes(bytes(data))
    with pytest.raises(UserError, match=r"audio_tokenizer/units_kmeans.npz differs.*delete"):
        require_stage(folder, "speech tower", "inputs.speech")
