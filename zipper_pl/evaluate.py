"""The evaluation stage: Zipper vs Single Decoder with the paper's metrics, in one command.

For one configuration it evaluates the Zipper and the Single Decoder stage (training whichever is
missing), or exactly the stage folders in ``eval.stages``, on the same test utterances:

- ASR: greedy transcripts, WER and CER (``normalize_for_scoring`` on both sides), Table 1.
- TTS: speech tokens generated from the test transcripts, transcribed by the judge ASR; WER
  against the gold transcript and against the "target" (the judge on the gold tokens); greedy and
  best of ``eval.tts_seeds`` sampling seeds per utterance (the seed is chosen by the gold WER and
  the target WER is of that same sample), Table 2 with the judge's Oracle row.
- Text retention: text-only perplexity of the text tower before zipping and after fine-tuning
  (``text_retention``); with a frozen text tower both are bit-identical.
- Wilcoxon signed-rank between every pair of systems on per-utterance errors.

Outputs in ``stage_dir(cfg, "eval")``: ``results.json``, ``results.md``, per-utterance JSONL under
``utterances/``, TensorBoard text (and audio when the codec decodes) under ``tb/``, wavs under
``audio/``. All files are written atomically; the markdown is printed at the end.
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as Fn
from torch.utils.tensorboard import SummaryWriter

from zipper_pl.config import Config, load_config, save_config, to_dict
from zipper_pl.data.aligned import tasks_of
from zipper_pl.data.hf_tokenizer import load_text_tokenizer
from zipper_pl.data.prepare import text_lines
from zipper_pl.errors import UserError
from zipper_pl.finetuned import Finetuned, load_finetuned, load_tower
from zipper_pl.hub import is_hf_folder
from zipper_pl.identity import IDENTITY_FILE, PROVENANCE_FILE, provenance
from zipper_pl.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from zipper_pl.judging import Utterance, gold_utterances, load_judge, oracle_scores, run_judge
from zipper_pl.layout import (
    CONFIG,
    eval_identity,
    input_fingerprints,
    is_finished,
    require_stage,
    stage_dir,
    tower_input,
)
from zipper_pl.machine import check_machine
from zipper_pl.models.sequences import IGNORE, ModalitySpec, Segment
from zipper_pl.models.tower import Tower
from zipper_pl.registry import ARCHS, frozen_towers
from zipper_pl.report import render_markdown
from zipper_pl.scoring import eval_asr, eval_tts, fitting, significance
from zipper_pl.training import run_zip

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
        for f in cfg.eval.stages:
            folder = require_stage(f, "evaluated", "eval.stages")
            scfg = load_config(folder / CONFIG)
            name = folder.name if folder.name not in {s.name for s in systems} else str(folder)
            tasks = tasks_of(scfg.data.task)
            systems.append(System(name, scfg.arch, dict.fromkeys(tasks, folder), scfg))
        return systems
    for arch in ARCHS:  # the paper's table order: the baseline first
        system = System(arch, arch)
        for task in ["mix"] if cfg.data.task == "mix" else ["asr", "tts"]:
            scfg = dataclasses.replace(
                cfg, arch=arch, out="", data=dataclasses.replace(cfg.data, task=task)
            )
            folder = run_zip(scfg)  # returns at once when the stage is finished
            system.folders.update(dict.fromkeys(tasks_of(task), folder))
            system.cfg = load_config(folder / CONFIG)
        systems.append(system)
    return systems


def _judge_folder(cfg: Config) -> Path:
    if cfg.inputs.judge:
        return require_stage(cfg.inputs.judge, "judge", "inputs.judge")
    speech = input_fingerprints(speech=tower_input(cfg, "speech"))
    folder = stage_dir(dataclasses.replace(cfg, out=""), "judge", speech)
    if not is_finished(folder):
        print(f"[evaluate] no judge at {folder}: training it with this config (make judge)")
        folder = run_judge(dataclasses.replace(cfg, out=""))
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


# ---- text retention --------------------------------------------------------------------------


@torch.no_grad()
def _nll(step: Callable, seqs: list[np.ndarray], batch_size: int) -> tuple[float, int]:
    """Summed next-token NLL and target count; ``step(seqs) -> (logits [B,T,V], targets [B,T])``.

    The same batches in the same order for every model: equal weights give bit-equal sums."""
    total, count = 0.0, 0
    for lo in range(0, len(seqs), batch_size):
        logits, targets = step(seqs[lo : lo + batch_size])
        nll = Fn.cross_entropy(
            logits.float().flatten(0, 1), targets.flatten(), ignore_index=IGNORE, reduction="sum"
        )
        total += float(nll)
        count += int((targets != IGNORE).sum())
    return total, count


def _tower_step(tower: Tower, spec: ModalitySpec) -> Callable:
    """A tower run standalone on ``bos text eos`` (right-padded; causal, so pads cannot leak)."""

    def step(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        rows = [torch.as_tensor(np.r_[spec.bos_id, s, spec.eos_id], dtype=torch.long) for s in seqs]
        ids = torch.full((len(rows), max(map(len, rows))), spec.pad_id, dtype=torch.long)
        targets = torch.full_like(ids, IGNORE)  # (B, T)
        for b, r in enumerate(rows):
            ids[b, : len(r)], targets[b, : len(r) - 1] = r, r[1:]
        return tower(ids), targets

    return step


def _model_step(ft: Finetuned) -> Callable:
    """The whole fine-tuned model on text alone (the Zipper: its input projection and fusion
    layers with no speech keys); the logits of the one stream that carries the text's targets."""

    def step(seqs: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        samples = [[Segment("text", torch.as_tensor(s, dtype=torch.long), loss=True)] for s in seqs]
        batch = ft.model.collate(samples)
        (name,) = (t for t in batch if bool((batch[t]["targets"] != IGNORE).any()))
        return ft.model(batch, outputs={"text"})[name], batch[name]["targets"]

    return step


def text_retention(ft: Finetuned, cfg: Config) -> dict:
    """Text perplexity on held-out text: pretrained text tower (before) vs the fine-tuned model's
    text tower run standalone (after; the single decoder's extended tower, over its full
    vocabulary) and, for a model with fusion layers (gates), the whole model on text only."""
    after = ft.model.tower_for("text")
    lines = text_lines(cfg, "valid")[: cfg.eval.max_utterances or None]
    seqs = [s[: after.cfg.max_seq_len - 2] for s in ft.text_tok.encode(lines) if len(s)]
    spec, bs = ft.specs["text"], cfg.eval.batch_size
    nll_after, n = _nll(_tower_step(after, spec), seqs, bs)
    res: dict = {
        "folder": str(ft.folder),
        "sentences": len(seqs),
        "tokens": n,
        "ppl_after": math.exp(nll_after / n),
        "ppl_before": None,
        "identical": None,
        "frozen_text": "text" in ft.model.frozen,
    }
    before_dir = Path(ft.cfg.inputs.text) if ft.cfg.inputs.text else None
    if before_dir is not None and (is_finished(before_dir) or is_hf_folder(before_dir)):
        before = load_tower(before_dir).eval()
        nll_before, _ = _nll(_tower_step(before, spec), seqs, bs)
        res |= {"ppl_before": math.exp(nll_before / n), "identical": nll_before == nll_after}
        a, b = before.state_dict(), after.state_dict()
        res["weights_identical"] = a.keys() == b.keys() and all(
            a[k].shape == b[k].shape and torch.equal(a[k], b[k]) for k in a
        )
    else:
        res["before_missing"] = f"pretrained text stage {before_dir} not found"
    if ft.model.gates():  # else the model on text alone is its tower alone: ppl_after
        res["ppl_zipped_text_only"] = math.exp(_nll(_model_step(ft), seqs, bs)[0] / n)
    return res


# ---- outputs ---------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in rows))


def safe_file_name(name: str) -> str:
    """A manifest id as one file name: separators and anything else outside [A-Za-z0-9._-]
    become "_", so no id ("../x", "a/b", LibriLight's "small/100/book/name") leaves its folder."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"


def _write_audio(writer, out: Path, ft: Finetuned, name: str, utts, tokens) -> str | None:
    """Wav files + TensorBoard audio of a few utterances; the reason when the codec cannot."""
    import soundfile as sf

    sr = ft.audio_tok.sample_rate
    for i, u in enumerate(utts[:N_SAMPLES]):
        try:
            wavs = {"gold": ft.audio_tok.decode(u.tokens), name: ft.audio_tok.decode(tokens[i])}
        except (UserError, ValueError, NotImplementedError) as e:
            return f"no audio: {e}"
        for who, wav in wavs.items():
            buf = io.BytesIO()
            sf.write(buf, wav, sr, format="WAV")
            atomic_write_bytes(out / "audio" / safe_file_name(f"{who}_{u.id}.wav"), buf.getvalue())
            writer.add_audio(f"{who}/{u.id}", torch.from_numpy(wav)[None], 0, sample_rate=sr)
    return None


def evaluate_stage(cfg: Config) -> Path:
    """Evaluate this config's Zipper and Single Decoder (or ``eval.stages``); see module doc."""
    check_machine(cfg)
    t_start = time.perf_counter()
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    systems = resolve_systems(cfg)
    judge_dir = _judge_folder(cfg)
    folders = {f"{s.name}.{task}": f for s in systems for task, f in s.folders.items()}
    identity = eval_identity(cfg, folders, judge_dir)
    out = stage_dir(cfg, "eval", identity["inputs"])
    judge, judge_tok = load_judge(judge_dir)
    utts, skipped = _test_set(cfg, systems, judge_tok)
    if not utts:
        raise UserError("no test utterance fits the models: raise model.max_seq_len")
    oracle = oracle_scores(judge, utts, cfg.eval.batch_size)
    targets = oracle["hyps"]
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / "utterances" / "oracle.jsonl", oracle["rows"])
    writer = SummaryWriter(str(out / "tb"))
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
        "systems": [],  # a list: results.json sorts mapping keys, the tables keep this order
        "retention": [],
    }
    errors: dict[str, dict[str, list[float]]] = {}
    for system in systems:
        label = ARCHS[system.name].label if system.name in ARCHS else system.name
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
            if task == "asr":
                entry["asr"], rows = eval_asr(ft, utts, cfg)
                errors[system.name]["asr"] = [r["errors"] for r in rows]
                samples = [f"ref: {r['ref']}  \nhyp: {r['hyp']}" for r in rows[:N_SAMPLES]]
            else:
                entry["tts"], rows, tokens = eval_tts(ft, judge, utts, targets, cfg)
                errors[system.name]["tts_best"] = [r["best_errors_gold"] for r in rows]
                errors[system.name]["tts_greedy"] = [r["greedy_errors_gold"] for r in rows]
                samples = [
                    f"ref: {r['ref']}  \njudge(greedy TTS): {r['greedy_hyp']}"
                    for r in rows[:N_SAMPLES]
                ]
                entry["audio"] = _write_audio(writer, out, ft, system.name, utts, tokens)
            _write_jsonl(out / "utterances" / f"{system.name}.{task}.jsonl", rows)
            writer.add_text(f"{system.name}/{task}", "\n\n".join(samples), 0)
            print(f"[evaluate] {label} {task}: {json.dumps(entry[task], default=float)}")
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
    markdown = render_markdown(results)
    atomic_write_json(out / IDENTITY_FILE, identity)
    save_config(cfg, out / "config.yaml")
    atomic_write_json(out / PROVENANCE_FILE, provenance())
    atomic_write_json(out / "results.json", results)  # last: the Makefile's target
    atomic_write_text(out / "results.md", markdown)
    print(markdown)
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
