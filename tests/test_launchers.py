"""The cluster recipes of examples/, checked where there is no cluster.

Every sbatch script parses, calls real stages on experiment files that exist and reads stage
folders that ``paths`` names (fast). The text tower's sbatch script runs under a stand-in srun
(tests/srun_shim.py) that starts its two tasks here with srun's variables, and the torchrun
script under torchrun, two gloo CPU processes each: Lightning must take ranks and rendezvous from
SLURM's, then TorchElastic's environment, as on a cluster, with nothing set for it.
"""

from __future__ import annotations

import importlib
import json
import os
import re
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from lightning.pytorch.strategies import DDPStrategy

from tests.conftest import ROOT, tiny_config
from zipper_pl.__main__ import STAGES, _chain_paths
from zipper_pl.config import load_config
from zipper_pl.io import TMP_MARK
from zipper_pl.runs import launch
from zipper_pl.runs import trainer as trainer_module
from zipper_pl.runs.layout import stage_dir

SLURM = ROOT / "examples" / "slurm"
TORCHRUN = ROOT / "examples" / "torchrun" / "run_stage.sh"
SBATCH = sorted(SLURM.glob("*.sbatch"))
SCRIPTS = [*SBATCH, *sorted(ROOT.glob("examples/**/*.sh"))]
SCALES = sorted(p for p in (ROOT / "experiments").iterdir() if p.is_dir())
STEPS = ("train.max_steps=3", "train.val_every=3", "train.ckpt_every=3")
# what the processes of a launch inherit and would mistake for their own launch's
LAUNCH_VARS = re.compile(
    r"SLURM_.*|TORCHELASTIC_.*|(RANK|LOCAL_RANK|GROUP_RANK|NODE_RANK|WORLD_SIZE|LOCAL_WORLD_SIZE"
    r"|MASTER_ADDR|MASTER_PORT)"
)


def _bash_syntax_errors(script: Path) -> str:
    """``bash -n``: the script parses (a subprocess of milliseconds, so the test stays fast)."""
    r = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    return r.stderr if r.returncode else ""


def _sbatch_options(script: Path) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(\S+)$", script.read_text(), re.MULTILINE))


def test_every_recipe_parses_and_calls_real_stages_on_real_files():
    assert {s.name for s in SBATCH} >= {"pretrain_text.sbatch", "pretrain_speech.sbatch",
                                        "zip_asr.sbatch", "zip_tts.sbatch", "judge.sbatch",
                                        "vocoder.sbatch", "evaluate.sbatch"}  # fmt: skip
    for script in SCRIPTS:
        assert not _bash_syntax_errors(script), (script, _bash_syntax_errors(script))
    called = set()
    for script in SBATCH:
        text = script.read_text()
        stages = re.findall(r"-m zipper_pl (\S+)", text)
        assert stages and set(stages) <= set(STAGES), (script.name, stages)
        called |= set(stages)
        for name in re.findall(r"\$ZPL_EXP/([\w.-]+)", text):
            missing = [s.name for s in SCALES if not (s / name).is_file()]
            assert not missing, f"{script.name}: {name} missing in experiments/{missing}"
        opts = _sbatch_options(script)
        if "ntasks-per-node" in opts:  # one task per GPU, the allocation's shape read by common.sh
            assert opts["gpus-per-node"] == opts["ntasks-per-node"], script.name
            assert "zpl_distributed" in text, script.name
        else:  # one process: the chain's shape, as given
            assert opts["ntasks"] == "1", script.name
            assert "zpl_distributed" not in text, script.name
    assert called == {"data", "pretrain", "zip", "judge", "vocoder", "evaluate"}
    assert "-m zipper_pl paths" in (SLURM / "common.sh").read_text()


def test_recipes_read_only_folders_that_paths_prints():
    printed = set(_chain_paths([str(ROOT / "experiments" / "tiny"), "train.devices=2"]))
    for script in SCRIPTS:
        text = re.sub(r"^\s*#.*$", "", script.read_text(), flags=re.MULTILINE)  # code only
        keys = set(re.findall(r"P\[(\w+)\]", text))
        keys |= set(re.findall(r"^\s+(\w+)\) script=", text, re.MULTILINE))  # zpl_need's
        for words in re.findall(r"need\+?=\(([^)]*)\)", text):  # evaluate.sbatch's needs
            keys |= set(words.split())
        keys |= set(re.findall(r"^submit \w+ ([A-Z]\w+) ", text, re.MULTILINE))  # the chain's
        # the model's folder, ZIPPER_... or SINGLE_...: P[${ARCH^^}_ASR_DIR], "${key}_ASR_DIR"
        for suffix in re.findall(r"(?:\$\{ARCH\^\^\}|\$\{key\})(_\w+_DIR)", text):
            keys |= {f"ZIPPER{suffix}", f"SINGLE{suffix}"}
        assert keys <= printed, (script.name, keys - printed)


def _free_slurm_job_id() -> str:
    """A job id whose port is free: Lightning's SLURM environment listens on 15000 + the id's
    last 4 digits when MASTER_PORT is unset, as on a cluster."""
    for port in range(15000 + os.getpid() % 9000, 25000):
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return f"7{port - 15000:04d}"
    raise RuntimeError("no free port in 15000-24999")


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not LAUNCH_VARS.fullmatch(k)}
    return {**env, "PYTHONHASHSEED": "0", **extra}


def _stage_folder(runs: Path, data_root: Path) -> Path:
    """The folder the stage names for itself, which the recipes' out= must equal."""
    cfg = tiny_config(data_root, runs, "pretrain_text.yaml", "train.strategy=ddp",
                      "train.devices=2", "train.num_nodes=1", *STEPS)  # fmt: skip
    folder = stage_dir(cfg, "pretrain")
    assert list((runs / "tiny-embedded").iterdir()) == [folder]
    return folder


def _written_once(folder: Path) -> None:
    """model.safetensors is whole (no temp file left), as rank 0 recorded it after exporting."""
    assert (folder / "model.safetensors").is_file() and (folder / "metrics.json").is_file()
    assert not [p.name for p in folder.iterdir() if TMP_MARK in p.name]
    recorded = json.loads((folder / "checksums.json").read_text())["model.safetensors"]
    stat = (folder / "model.safetensors").stat()
    assert (recorded["bytes"], recorded["mtime_ns"]) == (stat.st_size, stat.st_mtime_ns)


@pytest.mark.slow
def test_sbatch_script_trains_with_two_slurm_tasks(data_root, tmp_path):
    """pretrain_text.sbatch as sbatch runs it on one node with --ntasks-per-node=2: its srun
    starts two tasks of `python -m zipper_pl pretrain ...` with SLURM's variables only."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    srun = bin_dir / "srun"
    srun.write_text(f'#!/bin/bash\nexec "{sys.executable}" "{ROOT}/tests/srun_shim.py" "$@"\n')
    srun.chmod(0o755)
    job = _free_slurm_job_id()
    runs, logs = tmp_path / "runs", tmp_path / "tasks"
    # what sbatch gives the batch script (SLURM_PROCID & co. of the batch step included)
    job_env = {"SLURM_JOB_ID": job, "SLURM_JOB_NAME": "zpl-pretrain-text",
               "SLURM_SUBMIT_DIR": str(ROOT), "SLURM_JOB_NUM_NODES": "1", "SLURM_NNODES": "1",
               "SLURM_NTASKS": "2", "SLURM_NTASKS_PER_NODE": "2", "SLURM_CPUS_PER_TASK": "1",
               "SLURM_NODELIST": "localhost", "SLURM_JOB_NODELIST": "localhost",
               "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}  # fmt: skip
    data = [f"data.root={data_root}", f"data.cache_dir={data_root / 'cache'}"]
    settings = {"ZPL_EXP": "experiments/tiny", "ZPL_RUNS": str(runs), "ZPL_ACCELERATOR": "cpu",
                "ZPL_STRATEGY": "ddp", "ZPL_ARGS": " ".join([*data, *STEPS]),
                "SRUN_SHIM_LOGS": str(logs)}  # fmt: skip
    env = _clean_env(PATH=f"{bin_dir}:{os.environ['PATH']}", **job_env, **settings)
    r = subprocess.run(["bash", str(SLURM / "pretrain_text.sbatch")], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=240)  # fmt: skip
    out = [(logs / f"task{i}.log").read_text() for i in range(2)]
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:] + out[0][-3000:] + out[1][-3000:]
    assert [(logs / f"task{i}.rc").read_text() for i in range(2)] == ["0", "0"]
    assert "[slurm] chain: 1 node(s) x 2 device(s)" in r.stdout
    folder = _stage_folder(runs, data_root)
    _written_once(folder)
    export = f"[pretrain-text] {folder}\n"
    assert export in out[0] and export not in out[1]  # printed right after rank 0's export
    for rank, text in enumerate(out):
        # Lightning's own lines: the SLURM environment's signal handlers, the rank it read
        assert "SLURM auto-requeueing enabled" in text, text[-3000:]
        assert f"GLOBAL_RANK: {rank}, MEMBER: {rank + 1}/2" in text
    prov = json.loads((folder / "provenance.json").read_text())
    assert (prov["world_size"], prov["launch"]) == (2, f"slurm:{job}.0")


@pytest.mark.slow
def test_torchrun_script_trains_with_two_processes(data_root, tmp_path):
    """run_stage.sh: torchrun --standalone --nproc-per-node=2 `-m zipper_pl pretrain ...`."""
    runs = tmp_path / "runs"
    args = [f"data.root={data_root}", f"data.cache_dir={data_root / 'cache'}", f"runs={runs}",
            "train.accelerator=cpu", "train.strategy=ddp", *STEPS]  # fmt: skip
    r = subprocess.run(["bash", str(TORCHRUN), "pretrain", "experiments/tiny/pretrain_text.yaml",
                        *args], cwd=tmp_path, env=_clean_env(NPROC_PER_NODE="2"),
                       capture_output=True, text=True, timeout=240)  # fmt: skip
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-5000:]
    folder = _stage_folder(runs, data_root)
    _written_once(folder)
    assert out.count(f"[pretrain-text] {folder}\n") == 1  # rank 0 alone exported
    assert "GLOBAL_RANK: 1, MEMBER: 2/2" in out and "SLURM auto-requeueing" not in out
    prov = json.loads((folder / "provenance.json").read_text())
    assert prov["world_size"] == 2 and prov["launch"].startswith("torchrun:")


@pytest.mark.slow
def test_zip_stage_trains_under_torchrun(data_root, tiny_towers, tmp_path):
    """The zipped model has parameters the ASR loss never reaches (the speech tower's last
    layers): DDP must look for them, or its first step fails."""
    out = tmp_path / "zip"
    args = [f"data.root={data_root}", f"data.cache_dir={data_root / 'cache'}",
            f"runs={tiny_towers['runs']}", f"out={out}", f"inputs.text={tiny_towers['text']}",
            f"inputs.speech={tiny_towers['speech']}", "train.accelerator=cpu",
            "train.strategy=ddp", "train.max_steps=2", "train.val_every=2"]  # fmt: skip
    r = subprocess.run(["bash", str(TORCHRUN), "zip", "experiments/tiny/zip_asr.yaml", *args],
                       cwd=tmp_path, env=_clean_env(NPROC_PER_NODE="2"), capture_output=True,
                       text=True, timeout=240)  # fmt: skip
    assert r.returncode == 0, (r.stdout + r.stderr)[-5000:]
    _written_once(out)
    assert json.loads((out / "provenance.json").read_text())["world_size"] == 2


# ---- the library side: rank 0 decides for the ranks an external launcher starts with it ------


def test_ranks_of_an_external_launch_follow_their_rank_0(tmp_path, monkeypatch):
    for var in [v for v in os.environ if LAUNCH_VARS.fullmatch(v)]:
        monkeypatch.delenv(var)
    folder = tmp_path / "stage"
    assert launch.launch_id() is None and launch.await_claim(folder, "t", lambda: False)
    # torchrun: RANK numbers the processes, whatever task of an srun started this torchrun
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "run")
    monkeypatch.setenv("SLURM_PROCID", "1")
    monkeypatch.setenv("RANK", "0")
    assert launch.is_launching_process()
    folder.mkdir()
    launch.record_claim(folder, train=True)  # rank 0's record, then a later launch's rank 1:
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("TORCHELASTIC_RESTART_COUNT", "1")
    assert not launch.is_launching_process()
    result: list[bool] = []
    waited = threading.Thread(target=lambda: result.append(launch.await_claim(
        folder, "t", lambda: False, poll_s=0.01)))  # fmt: skip
    waited.start()
    waited.join(0.3)
    assert waited.is_alive()  # the older launch's record is not this launch's
    launch.record_claim(folder, train=False)
    waited.join(5)
    assert result == [False]
    # a stage finished while waiting (rank 0 found it so before locking, and records nothing)
    assert not launch.await_claim(tmp_path / "other", "t", lambda: True)
    monkeypatch.delenv("TORCHELASTIC_RUN_ID")
    monkeypatch.setenv("SLURM_JOB_ID", "42")
    monkeypatch.setenv("SLURM_STEP_ID", "3")
    assert launch.launch_id() == "slurm:42.3"


def test_ddp_searches_unused_parameters_only_when_asked():
    def strategy(unused: bool, *overrides: str):
        cfg = load_config(ROOT / "experiments" / "tiny" / "zip_asr.yaml", list(overrides))
        return trainer_module._strategy(cfg, unused)

    assert strategy(True, "train.strategy=auto", "train.devices=1") == "auto"  # one process
    assert strategy(False, "train.strategy=auto", "train.devices=2") == "auto"  # Lightning's
    for over in (["train.strategy=auto", "train.devices=2"], ["train.strategy=ddp"],
                 ["train.strategy=auto", "train.num_nodes=2"]):  # fmt: skip
        chosen = strategy(True, "train.accelerator=cpu", *over)
        assert isinstance(chosen, DDPStrategy), over
        assert chosen._ddp_kwargs["find_unused_parameters"] is True
        assert chosen.process_group_backend == "gloo"
    assert strategy(False, "train.strategy=ddp")._ddp_kwargs["find_unused_parameters"] is False


def test_a_stage_process_ends_its_process_group(tmp_path, monkeypatch):
    """A finished stage destroys its gloo group before exit (left to exit, a rank once aborted
    with "terminate called without an active exception" after finishing its work)."""
    import torch.distributed as dist

    from zipper_pl.__main__ import _close_process_group

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", "29533")
    dist.init_process_group("gloo", rank=0, world_size=1)
    _close_process_group()
    assert not dist.is_initialized()
    _close_process_group()  # nothing to close: a no-op


def test_a_stage_runs_on_train_threads_from_its_start(monkeypatch):
    """`train.threads` holds before a stage reads anything: applied only when the Trainer was
    built, the demo's vocoder (one thread per lane) loaded and tokenized its utterances on every
    core beside the other lane's stage, 3.5x slower than alone."""
    import torch

    from zipper_pl import __main__ as cli

    before = torch.get_num_threads()
    wanted = before + 1  # not what torch runs on by default here
    monkeypatch.setitem(cli.STAGES, "vocoder", "tests.test_launchers:_record_threads")
    seen = importlib.import_module("tests.test_launchers")._SEEN  # the module the CLI imports
    seen.clear()
    try:
        rc = cli.main(["vocoder", str(ROOT / "experiments/tiny/vocoder.yaml"),
                       f"train.threads={wanted}"])  # fmt: skip
    finally:
        torch.set_num_threads(before)
    assert rc == 0 and seen == [wanted]


_SEEN: list[int] = []


def _record_threads(cfg) -> None:
    import torch

    _SEEN.append(torch.get_num_threads())
