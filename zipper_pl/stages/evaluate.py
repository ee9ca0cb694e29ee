"""The evaluation stage: Zipper vs Single Decoder with the paper's metrics, in one command.

For one configuration it evaluates the Zipper and the Single Decoder stage (training whichever is
missing), or exactly the stage folders in ``eval.stages``, on the same test utterances:

- ASR: greedy transcripts, WER and CER (``normalize_for_scoring`` on both sides), Table 1.
- TTS from audio (the paper's protocol, ``audio_eval``): generated tokens voiced by the vocoder
  and transcribed by ``eval.tts_asr``, beside Oracle, Resynthesis and the Griffin-Lim floor;
  and the token judge on the tokens (the earlier yardstick, its own table). Both: WER against
  the gold transcript and against the "target" (the recogniser on the gold); greedy and best of
  ``eval.tts_seeds`` sampling seeds per utterance (chosen by the gold WER).
- Text retention: text-only perplexity of the text tower before zipping and after fine-tuning
  (``text_retention``); with a frozen text tower both are bit-identical.
- Wilcoxon signed-rank between every pair of systems on per-utterance errors.

Outputs in ``stage_dir(cfg, "eval")``: ``results.json``, ``results.md``, per-utterance JSONL under
``utterances/``, TensorBoard text and audio under ``tb/``, every scored TTS sample as a wav under
``audio/`` and ``listen.html``, a page to hear them (opens from disk). All files are written
atomically; the markdown is printed at the end.
"""

from __future__ import annotations

import dataclasses
import json
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from zipper_pl.config import Config, load_config, save_config, to_dict
from zipper_pl.config.components import MIX, TASKS
from zipper_pl.data.batches.aligned import tasks_of
from zipper_pl.data.tokenizers.hf_tokenizer import load_text_tokenizer
from zipper_pl.errors import UserError
from zipper_pl.fitting.judging import (
    Utterance,
    gold_utterances,
    load_judge,
    oracle_scores,
    run_judge,
)
from zipper_pl.fitting.towers import run_zip
from zipper_pl.fitting.vocoding import Voice, load_vocoder, run_vocoder
from zipper_pl.io import atomic_write_json, atomic_write_text, disk_errors_name
from zipper_pl.registry import ARCHS, frozen_towers, needs_vocoder
from zipper_pl.results.audio_eval import (
    build_audio_scorer,
    reference_rows,
    save_reference_audio,
    save_system_audio,
    system_rows,
    write_listen,
)
from zipper_pl.results.lengths import write_length_report
from zipper_pl.results.recognizers import check_spec
from zipper_pl.results.report import render_markdown
from zipper_pl.results.retention import text_retention
from zipper_pl.results.scoring import eval_asr, eval_tts, fitting, significance
from zipper_pl.runs.finetuned import load_finetuned
from zipper_pl.runs.identity import IDENTITY_FILE
from zipper_pl.runs.layout import (
    CONFIG,
    check_identity,
    eval_identity,
    input_fingerprints,
    is_finished,
    require_stage,
    stage_dir,
    tower_input,
)
from zipper_pl.runs.machine import check_machine, use_threads
from zipper_pl.runs.provenance import PROVENANCE_FILE, provenance

__all__ = ["evaluate_stage", "resolve_systems"]

N_SAMPLES = 5  # utterances shown in TensorBoard text / written as wav per system


@dataclass
class System:
    """One evaluated model: ``folders[task]`` is the stage folder that serves ASR / TTS."""

    name: str
    arch: str
    folders: dict[str, Path] = field(default_factory=dict)
    cfg: Config | None = None


def resolve_systems(cfg: Config) -> list[System]:
    """The systems to evaluate; in the default mode missing stages are trained (``run_zip``: the
    zip stage's work, the machine checked by ``evaluate_stage``)."""
    systems: list[System] = []
    if cfg.eval.stages:
        _check_commas(cfg.eval.stages)
        for f in cfg.eval.stages:
            folder = require_stage(f, "evaluated", "eval.stages")
            scfg = load_config(folder / CONFIG)
            name = folder.name if folder.name not in {s.name for s in systems} else str(folder)
            tasks = tasks_of(scfg.data.task)
            systems.append(System(name, scfg.arch, dict.fromkeys(tasks, folder), scfg))
        return systems
    for arch in ARCHS:  # the paper's table order: the baseline first
        system = System(arch, arch)
        for task in ["mix"] if cfg.data.task == "mix" else list(MIX):
            scfg = dataclasses.replace(
                cfg, arch=arch, out="", data=dataclasses.replace(cfg.data, task=task)
            )
            folder = run_zip(scfg)  # returns at once when the stage is finished
            system.folders.update(dict.fromkeys(tasks_of(task), folder))
            system.cfg = load_config(folder / CONFIG)
        systems.append(system)
    return systems


def _check_commas(stages: list[str]) -> None:
    """A stage folder whose name holds a comma (``freeze_text,phonemes``) is split in two by an
    unquoted list: say how to quote it rather than that two folders are missing."""
    for i in range(len(stages) - 1):
        for j in range(i + 2, len(stages) + 1):
            joined = ",".join(stages[i:j])
            if not Path(stages[i]).exists() and Path(joined).is_dir():
                raise UserError(
                    f"eval.stages: {joined!r} holds a comma, which splits a list: quote it, "
                    f"eval.stages=['{joined}']"
                )


def _judge_folder(cfg: Config) -> Path:
    if cfg.inputs.judge:
        return require_stage(cfg.inputs.judge, "judge", "inputs.judge")
    speech = input_fingerprints(speech=tower_input(cfg, "speech"))
    folder = stage_dir(dataclasses.replace(cfg, out=""), "judge", speech)
    if not is_finished(folder):
        print(f"[evaluate] no judge at {folder}: training it with this config (make judge)")
        folder = run_judge(dataclasses.replace(cfg, out=""))
    return folder


def _vocoder_folder(cfg: Config) -> Path | None:
    """The vocoder TTS audio is voiced with: ``inputs.vocoder``, else this config's (trained now
    when missing); None when audio is not scored or the codec decodes itself."""
    if not needs_vocoder(cfg):
        return None
    if cfg.inputs.vocoder:
        return require_stage(cfg.inputs.vocoder, "vocoder", "inputs.vocoder")
    folder = stage_dir(dataclasses.replace(cfg, out=""), "vocoder")
    if not is_finished(folder):
        print(f"[evaluate] no vocoder at {folder}: training it with this config (make vocoder)")
        folder = run_vocoder(dataclasses.replace(cfg, out=""))
    return folder


def _test_set(cfg: Config, systems: list[System], judge_tok) -> tuple[list[Utterance], int]:
    """Test utterances every system can take (the training rule, ``aligned.fits``, within the
    shortest tower), capped at ``eval.max_utterances``; returns (utterances, skipped)."""
    utts = gold_utterances(cfg, judge_tok, "test")
    if cfg.eval.max_utterances:
        utts = utts[: cfg.eval.max_utterances]
    keep = np.ones(len(utts), dtype=bool)
    for folder in {f for s in systems for f in s.folders.values()}:
        keep &= fitting(utts, folder, load_text_tokenizer(folder).encode)
    return [u for u, k in zip(utts, keep, strict=True) if k], int((~keep).sum())


# ---- outputs ---------------------------------------------------------------------------------


class _Writer:
    """A ``SummaryWriter`` whose disk errors name its folder: its event writer thread raises
    ``No space left on device`` naming no file (found with a real full disk)."""

    def __init__(self, folder: Path) -> None:
        self._writer, self._folder = SummaryWriter(str(folder)), folder

    def __getattr__(self, name: str):
        method = getattr(self._writer, name)

        def call(*args, **kwargs):
            with disk_errors_name(self._folder):
                return method(*args, **kwargs)

        return call


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in rows))


def evaluate_stage(cfg: Config) -> Path:
    """Evaluate this config's Zipper and Single Decoder (or ``eval.stages``); see module doc."""
    check_machine(cfg)
    t_start = time.perf_counter()
    use_threads(cfg)
    if cfg.eval.tts_asr != "none":
        check_spec(cfg.eval.tts_asr)  # a typo fails now, not after training the systems
    systems = resolve_systems(cfg)
    judge_dir = _judge_folder(cfg)
    folders = {f"{s.name}.{task}": f for s in systems for task, f in s.folders.items()}
    vocoder_dir = _vocoder_folder(cfg)
    identity = eval_identity(cfg, folders, judge_dir, vocoder_dir)
    out = stage_dir(cfg, "eval", identity["inputs"])
    check_identity(out, identity, "evaluate")  # out= of another evaluation is never overwritten
    judge, judge_tok = load_judge(judge_dir)
    utts, skipped = _test_set(cfg, systems, judge_tok)
    if not utts:
        raise UserError("no test utterance fits the models: raise model.max_seq_len")
    oracle = oracle_scores(judge, utts, cfg.eval.batch_size)
    targets = oracle["hyps"]
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "utterances" / "oracle.jsonl", oracle["rows"])
    writer = _Writer(out / "tb")
    scorer, refs, columns = None, None, {}
    if cfg.eval.tts_asr != "none":
        voice = load_vocoder(vocoder_dir, judge_tok) if vocoder_dir else Voice(judge_tok)
        scorer = build_audio_scorer(cfg, voice, judge, judge_tok)
        refs = reference_rows(scorer, utts, cfg)
        for name, rows in refs["rows"].items():
            _write_jsonl(out / "utterances" / f"audio_{name}.jsonl", rows)
        columns = save_reference_audio(out, utts, refs, voice.sample_rate, writer, N_SAMPLES)
    results: dict = {
        "eval": to_dict(cfg.eval),
        "scale": cfg.scale,
        "corpus": cfg.data.corpus,
        "codec": cfg.audio.codec,
        "aligned_frac": cfg.data.aligned_frac,
        "seed": cfg.seed,
        "test_utterances": len(utts),
        "skipped_too_long": skipped,
        "judge": {
            "folder": str(judge_dir),
            "oracle_wer": oracle["wer"],
            "oracle_cer": oracle["cer"],
        },
        "audio": None
        if refs is None
        else {
            "recognizer": cfg.eval.tts_asr,
            "vocoder": None if vocoder_dir is None else str(vocoder_dir),
            **refs["summary"],
        },
        "systems": [],  # a list: results.json sorts mapping keys, the tables keep this order
        "retention": [],
    }
    errors: dict[str, dict[str, list[float]]] = {}
    for system in systems:
        own = system.name in ARCHS  # else a folder of eval.stages: its arch's name, the folder
        label = ARCHS[system.name].label if own else f"{ARCHS[system.arch].label}: {system.name}"
        entry = {
            "name": system.name,
            "label": label,
            "arch": system.arch,
            "freeze": frozen_towers(system.cfg),
            "aligned_frac": system.cfg.data.aligned_frac,
            "folders": {t: str(f) for t, f in system.folders.items()},
        }
        errors[system.name] = {}
        for task, folder in system.folders.items():
            ft = load_finetuned(folder)
            if ft.audio_tok.fingerprint() != judge_tok.fingerprint():
                raise UserError(
                    f"stage {folder} uses other speech tokens than the judge in {judge_dir}: "
                    "set inputs.judge to a judge trained with the same audio tokenizer"
                )
            if TASKS[task].writes_text:  # ASR, also through phonemes (asr_phonemes)
                entry["asr"], rows = eval_asr(ft, utts, cfg)
                errors[system.name]["asr"] = [r["errors"] for r in rows]
                samples = [f"ref: {r['ref']}  \nhyp: {r['hyp']}" for r in rows[:N_SAMPLES]]
            else:
                entry["tts"], rows, runs = eval_tts(ft, judge, utts, targets, cfg)
                errors[system.name]["tts_best"] = [r["best_errors_gold"] for r in rows]
                errors[system.name]["tts_greedy"] = [r["greedy_errors_gold"] for r in rows]
                samples = [
                    f"ref: {r['ref']}  \njudge(greedy TTS): {r['greedy_hyp']}"
                    for r in rows[:N_SAMPLES]
                ]
                if scorer is not None:
                    entry["tts_audio"], arows, waves = system_rows(
                        scorer, utts, runs, refs["targets"]
                    )
                    errors[system.name]["tts_audio_best"] = [r["best_errors_gold"] for r in arows]
                    _write_jsonl(out / "utterances" / f"{system.name}.tts_audio.jsonl", arows)
                    columns[system.name] = save_system_audio(
                        out, system.name, utts, arows, waves, scorer.voice.sample_rate, writer,
                        N_SAMPLES,
                    )  # fmt: skip
            _write_jsonl(out / "utterances" / f"{system.name}.{task}.jsonl", rows)
            writer.add_text(f"{system.name}/{task}", "\n\n".join(samples), 0)
            shown = entry["asr" if TASKS[task].writes_text else "tts"]  # result keys
            print(f"[evaluate] {label} {task}: {json.dumps(shown, default=float)}")
        for folder in dict.fromkeys(system.folders.values()):
            ret = text_retention(load_finetuned(folder), cfg)
            results["retention"].append(
                {
                    "system": system.name,
                    "label": label,
                    "tasks": [t for t, f in system.folders.items() if f == folder],
                    **ret,
                }
            )
        results["systems"].append(entry)
    results["significance"] = significance(errors)
    for entry in results["systems"]:
        name = entry["name"]
        for key, value in _flat_scalars(entry):
            writer.add_scalar(f"{name}/{key}", value, 0)
    writer.close()
    results["wall_s"] = time.perf_counter() - t_start
    if columns:
        notes = [f"recogniser: {cfg.eval.tts_asr}", f"vocoder: {vocoder_dir or 'the codec'}"]
        results["listen"] = str(write_listen(out, utts, columns, out.name, notes))
    markdown = render_markdown(results)
    atomic_write_json(out / IDENTITY_FILE, identity)
    save_config(cfg, out / "config.yaml")
    atomic_write_json(out / PROVENANCE_FILE, provenance())
    atomic_write_json(out / "results.json", results)  # last: the Makefile's target
    atomic_write_text(out / "results.md", markdown)
    print(markdown)
    if len(list((out / "utterances").glob("*.tts.jsonl"))) > 1:  # two systems speak: Fig. 2
        labels = {e["name"]: e["label"] for e in results["systems"]}
        print(f"[evaluate] TTS by utterance length: {write_length_report(out, labels)}")
    print(f"[evaluate] {out} ({results['wall_s']:.0f} s)")
    return out


def _flat_scalars(entry: dict, prefix: str = "") -> list[tuple[str, float]]:
    out = []
    for k, v in entry.items():
        if isinstance(v, dict):
            out += _flat_scalars(v, f"{prefix}{k}/")
        elif isinstance(v, float) and k not in ("aligned_frac", "wall_s", "temperature"):
            out.append((f"{prefix}{k}", v))
    return out
