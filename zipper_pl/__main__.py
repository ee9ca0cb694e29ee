"""``python -m zipper_pl STAGE [config.yaml] [key=value ...]``

User errors (bad keys, values, missing artefacts, bad data) print one short message, no traceback.
"""

from __future__ import annotations

import errno
import importlib
import signal
import sys
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from zipper_pl.errors import Terminated, UserError

USAGE = """usage: python -m zipper_pl STAGE [config.yaml] [key=value ...]

stages:
  data        prepare the corpus, tokenizers and token caches only
              (data EXP/pretrain_speech.yaml [key=value ...] --shard i/n: process i of n
              tokenizes every n-th store shard, the last to finish merges; torchrun's
              RANK/WORLD_SIZE or srun's SLURM_PROCID/SLURM_STEP_NUM_TASKS set it too)
  pretrain    unimodal pretraining of a tower (modality=text|speech)
  zip         zip the pretrained towers and fine-tune on aligned pairs (arch=zipper|single)
  finetune    continue from a zipped stage folder (inputs.init=...)
  judge       train the judge ASR used to score TTS
  vocoder     train the unit vocoder of the codec (speech tokens -> audio)
  export-lhotse  the corpus as lhotse CutSets: out=<folder>/<pool>.jsonl.gz
  evaluate    ASR/TTS WER, text retention, paper-style tables
  ablation    aligned-fraction sweep (table + plots)
  path KIND   print the stage folder a config resolves to (KIND: pretrain|zip|finetune|judge)
  paths EXP [key=value ...] [-- key=value ...]
              print every stage folder of the chain of the experiment folder EXP as NAME=path
              (used by the Makefile); overrides after -- reach the fine-tuning stages only
  keys        list every config key with its default and doc
  runs [RUNS] one line per stage folder: kind, status, keys that differ from its experiment file
  speak STAGE "some text" [-o out.wav] [--vocoder FOLDER] [--temperature T] [--seed N]
              speak with a fine-tuned stage and write a 16-bit wav (default: speech.wav)
  by-length EVAL   TTS WER by utterance length with bootstrap intervals (the paper's Fig. 2) of a
              finished evaluation folder: by_length.md / .png beside its results.md
  export-hf STAGE OUT
              write the text tower of a zipped stage as a Hugging Face model folder (towers
              imported with TEXT_TOWER=hf:...; AutoModelForCausalLM.from_pretrained(OUT) loads it)
"""


HELP = ("-h", "--help", "help")
STAGE_HELP = """usage: python -m zipper_pl {stage} [config.yaml] [key=value ...]

The config is the schema's defaults, then the YAML file (experiments/<scale>/...), then the
key=value overrides; `python -m zipper_pl keys` lists every key with its default and doc."""


# The command line's lazy entry points, "module:attribute", imported on first use by `_entry`
# (the one import inside a function here, allowlisted in tests/test_layers.py): `--help`, `keys`,
# `runs` and `paths` must start fast, without torch, the models or the stage modules.
STAGES = {
    "pretrain": "zipper_pl.stages.chain:pretrain",
    "data": "zipper_pl.stages.chain:prepare_data",
    "zip": "zipper_pl.stages.chain:zip_stage",
    "finetune": "zipper_pl.stages.chain:finetune",
    "judge": "zipper_pl.stages.chain:judge_stage",
    "vocoder": "zipper_pl.stages.chain:vocoder_stage",
    "export-lhotse": "zipper_pl.stages.chain:export_lhotse_stage",
    "evaluate": "zipper_pl.stages.evaluate:evaluate_stage",
    "ablation": "zipper_pl.stages.ablation:ablation_stage",
}
LOAD_CONFIG = "zipper_pl.config:load_config"
DESCRIBE_SCHEMA = "zipper_pl.config:describe_schema"
CHECK_MACHINE = "zipper_pl.runs.machine:check_machine"
USE_THREADS = "zipper_pl.runs.machine:use_threads"
PATH_OF = "zipper_pl.runs.layout:path_of"
CHAIN_PATHS = "zipper_pl.runs.layout:chain_paths"
CHAIN_FILES = "zipper_pl.runs.layout:CHAIN_FILES"
MODALITY_NAMES = "zipper_pl.config.sections:MODALITY_NAMES"
LIST_RUNS = "zipper_pl.runs.inventory:list_runs"
FORMAT_RUNS = "zipper_pl.runs.inventory:format_runs"
LOAD_MODEL = "zipper_pl.api:load"
SPEAK_TO_FILE = "zipper_pl.api:speak_to_file"
LENGTH_REPORT = "zipper_pl.results.lengths:write_length_report"
SPLIT_SHARD_FLAG = "zipper_pl.data.tokens.sharding:split_shard_flag"


def _entry(target: str) -> Any:
    """The attribute a ``"module:attribute"`` entry point names, its module imported now."""
    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)


def _stage(name: str) -> Callable:
    if name not in STAGES:
        raise UserError(f"unknown stage {name!r}\n\n{USAGE}")
    return _entry(STAGES[name])


def _split_args(args: list[str]) -> tuple[str | None, list[str]]:
    """The optional YAML path comes first; everything else is key=value."""
    if args and "=" not in args[0]:
        return args[0], args[1:]
    return None, args


FINETUNING_FILES = ("zip_asr", "zip_tts", "evaluate")


def _chain_paths(args: list[str]) -> dict:
    """``paths EXP [--zip-task=TASK [--zip-towers=a,b,c]] [common overrides] [-- fine-tuning
    overrides]``: with ``--zip-task``, also the folders of ``make zip`` (EXP/zip_TASK.yaml)."""
    load_config = _entry(LOAD_CONFIG)
    if not args or "=" in args[0]:
        raise UserError("usage: python -m zipper_pl paths EXPERIMENT_FOLDER [key=value ...]")
    exp, rest = Path(args[0]), args[1:]
    opts = dict(a[2:].split("=", 1) for a in rest if a.startswith("--") and "=" in a)
    rest = [a for a in rest if not (a.startswith("--") and "=" in a)]
    cut = rest.index("--") if "--" in rest else len(rest)
    common, ft = rest[:cut], rest[cut + 1 :]
    cfgs = {
        name: load_config(exp / file, common + (ft if name in FINETUNING_FILES else []))
        for name, file in _entry(CHAIN_FILES).items()
        if (exp / file).is_file() or not name.startswith("pretrain_")
    }
    zip_cfg = None
    if opts.get("zip-task"):
        towers = opts.get("zip-towers", "").strip(",")
        extra = [f"data.task={opts['zip-task']}"] + ([f"zip.towers=[{towers}]"] if towers else [])
        zip_cfg = load_config(exp / f"zip_{opts['zip-task']}.yaml", common + ft + extra)
    inputs = cfgs["zip_asr"].inputs
    towers = {m: getattr(inputs, m) for m in _entry(MODALITY_NAMES)}
    return _entry(CHAIN_PATHS)(cfgs, towers, zip_cfg)


SPEAK_USAGE = ('usage: python -m zipper_pl speak STAGE_FOLDER "some text" [-o out.wav] '
               "[--vocoder FOLDER] [--temperature T] [--seed N]")  # fmt: skip
SPEAK_FLAGS = {"-o": "out", "--out": "out", "--vocoder": "vocoder", "--temperature": "temperature",
               "--seed": "seed"}  # fmt: skip


def _speak_args(args: list[str]) -> tuple[str, str, dict]:
    """(stage, text, options) of ``speak STAGE TEXT [flags]``."""
    positional, options = [], {}
    it = iter(args)
    for a in it:
        if a in SPEAK_FLAGS:
            value = next(it, None)
            if value is None:
                raise UserError(f"{a} needs a value\n{SPEAK_USAGE}")
            options[SPEAK_FLAGS[a]] = value
        elif a.startswith("-") and len(a) > 1:
            raise UserError(f"unknown option {a}\n{SPEAK_USAGE}")
        else:
            positional.append(a)
    if len(positional) != 2:
        raise UserError(SPEAK_USAGE)
    try:
        if "temperature" in options:
            options["temperature"] = float(options["temperature"])
        if "seed" in options:
            options["seed"] = int(options["seed"])
    except ValueError as e:
        raise UserError(f"{e}\n{SPEAK_USAGE}") from None
    return positional[0], positional[1], options


_THREAD_EXCEPTHOOK = threading.excepthook


def _quiet_event_writer_thread(args: threading.ExceptHookArgs) -> None:
    """TensorBoard's event writer thread prints its disk error as a traceback, then the main
    thread raises the same error at the writer's next call, where it becomes one line naming the
    folder: print it there only (found with a real full disk)."""
    if isinstance(args.exc_value, OSError) and type(args.thread).__name__ == "_AsyncWriterThread":
        return
    _THREAD_EXCEPTHOOK(args)


def _close_process_group() -> None:
    """End a finished stage's distributed process group (torchrun, srun) before the interpreter
    exits: left to exit, gloo's threads can abort a rank ("terminate called without an active
    exception", exit -6) after it finished its work; seen once in ~8 two-rank CI runs."""
    dist = sys.modules.get("torch.distributed")  # loaded only by a stage that used it
    if dist is not None and dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    threading.excepthook = _quiet_event_writer_thread
    if not argv or argv[0] in HELP:
        print(USAGE)
        return 0
    if any(a in HELP for a in argv[1:]):  # `zipper-pl zip --help`: never read as a file name
        print(STAGE_HELP.format(stage=argv[0]) + "\n" + USAGE)
        return 0
    try:
        stage, rest = argv[0], argv[1:]
        if stage == "runs":
            root = Path(rest[0] if rest else "runs")
            print(_entry(FORMAT_RUNS)(_entry(LIST_RUNS)(root), root))
            return 0
        if stage == "export-hf":
            if len(rest) != 2:
                raise UserError("usage: python -m zipper_pl export-hf STAGE_FOLDER OUT_FOLDER")
            print(_entry(LOAD_MODEL)(rest[0]).export_hf(rest[1]))
            return 0
        if stage == "by-length":
            if len(rest) != 1:
                raise UserError("usage: python -m zipper_pl by-length EVAL_FOLDER")
            print(Path(_entry(LENGTH_REPORT)(rest[0])).read_text())
            return 0
        if stage == "speak":
            print(_entry(SPEAK_TO_FILE)(*_speak_args(rest)))
            return 0
        if stage == "keys":
            for key, default, doc in _entry(DESCRIBE_SCHEMA)():
                print(f"{key:36s} {default!s:>14s}  {doc}")
            return 0
        kind = None
        if stage == "path":
            if not rest:
                raise UserError(
                    "usage: python -m zipper_pl path KIND [config.yaml] [key=value ...]"
                )
            kind, rest = rest[0], rest[1:]
        if stage == "paths":
            print(" ".join(f"{k}={v}" for k, v in _chain_paths(rest).items()))
            return 0
        shard = None
        if any(a.startswith("--shard") for a in rest):  # checked before the config is read
            if stage != "data":
                raise UserError(f"--shard is an option of the data command only, not of {stage}")
            shard, rest = _entry(SPLIT_SHARD_FLAG)(rest)
        path, overrides = _split_args(rest)
        cfg = _entry(LOAD_CONFIG)(path, overrides)
        if kind is not None:
            print(_entry(PATH_OF)(cfg, kind))
            return 0
        options = {"shard": shard} if stage == "data" else {}
        _stage(stage)(_entry(USE_THREADS)(_entry(CHECK_MACHINE)(cfg)), **options)
        _close_process_group()
        return 0
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except OSError as e:  # read-only or full disk, a missing parent: the path and what it means
        # a move or copy names its source first: the path the user must free is its target
        path = getattr(e, "filename2", None) or e.filename
        where = f"{path}: " if path else ""
        code = errno.errorcode.get(e.errno or 0, "")
        print(
            f"error: {where}{e.strerror or e} ({code}): check that the folder exists and is "
            "writable (RUNS, DATA_ROOT, data.cache_dir) and that its disk has space",
            file=sys.stderr,
        )
        return 2
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM (errors.Terminated, its subclass)
        return _interrupted(e)


def _interrupted(e: KeyboardInterrupt) -> int:
    """Say how to resume; exit as a shell reports a process the signal ended (128 + signal)."""
    if isinstance(e, Terminated):  # says what last.ckpt holds
        print(f"interrupted: {e}; re-run the same command to resume", file=sys.stderr)
        return 128 + signal.SIGTERM
    # Ctrl-C: possibly in the middle of a step, so nothing is saved then
    print("interrupted: re-run the same command to resume from last.ckpt (saved every "
          "train.ckpt_every steps)", file=sys.stderr)  # fmt: skip
    return 128 + signal.SIGINT


if __name__ == "__main__":
    sys.exit(main())
