"""The evaluation stage: Zipper vs Single Decoder with the paper's metrics, in one command.

For one configuration it evaluates the Zipper and the Single Decoder stage (training whichever is
missing), or exactly the stage folders in ``eval.stages``, on the same test utterances:

- ASR: greedy transcripts, WER and CER (``normalize_for_scoring`` on both sides), Table 1.
- TTS: speech tokens generated from the test transcripts, transcribed by the judge ASR; WER
  against the gold transcript and against the "target" (the judge on the gold tokens); greedy and
  best of ``eval.tts_seeds`` sampling seeds per utterance (the seed is chosen by the gold WER and
  the target WER is of that same sample), Table 2 with the judge's Oracle row.
- Text retention: text-only perplexity of the text tower before zipping and after fine-tuning
  (see ``zipper_pl.retention``); with a frozen text tower both are bit-identical.
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
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from zipper_pl.config import Config, load_config, to_dict
from zipper_pl.errors import UserError
from zipper_pl.finetuned import TOWERS_JSON, Finetuned, load_finetuned
from zipper_pl.io import atomic_write_bytes, atomic_write_json, atomic_write_text, read_json
from zipper_pl.judging import Utterance, gold_utterances, judge_stage, load_judge, oracle_scores
from zipper_pl.metrics import best_of, error_rows, wilcoxon_paired
from zipper_pl.report import render_markdown
from zipper_pl.retention import text_retention

__all__ = ["evaluate_stage", "judge_stage", "resolve_systems"]

LABELS = {"zipper": "Zipper", "single": "Single Decoder"}
N_SAMPLES = 5  # utterances shown in TensorBoard text / written as wav per system


@dataclass
class System:
    """One evaluated model: ``folders[task]`` is the stage folder that serves ASR / TTS."""

    name: str
    arch: str
    folders: dict[str, Path] = field(default_factory=dict)
    cfg: Config | None = None


def _tasks_of(task: str) -> list[str]:
    return ["asr", "tts"] if task == "mix" else [task]


def resolve_systems(cfg: Config) -> list[System]:
    """The systems to evaluate; in the default mode missing stages are trained via ``zip_stage``."""
    from zipper_pl.stages import CONFIG, require_stage, zip_stage

    systems: list[System] = []
    if cfg.eval.stages:
        for f in cfg.eval.stages:
            folder = require_stage(f, "evaluated", "eval.stages")
            scfg = load_config(folder / CONFIG)
            name = folder.name if folder.name not in {s.name for s in systems} else str(folder)
            tasks = _tasks_of(scfg.data.task)
            systems.append(System(name, scfg.arch, dict.fromkeys(tasks, folder), scfg))
        return systems
    for arch in ("zipper", "single"):
        system = System(arch, arch)
        for task in ["mix"] if cfg.data.task == "mix" else ["asr", "tts"]:
            scfg = dataclasses.replace(
                cfg, arch=arch, out="", data=dataclasses.replace(cfg.data, task=task)
            )
            folder = zip_stage(scfg)  # returns at once when the stage is finished
            system.folders.update(dict.fromkeys(_tasks_of(task), folder))
            system.cfg = load_config(folder / CONFIG)
        systems.append(system)
    return systems


def _judge_folder(cfg: Config) -> Path:
    from zipper_pl.stages import is_finished, require_stage, stage_dir

    if cfg.inputs.judge:
        return require_stage(cfg.inputs.judge, "judge", "inputs.judge")
    folder = stage_dir(dataclasses.replace(cfg, out=""), "judge")
    if not is_finished(folder):
        print(f"[evaluate] no judge at {folder}: training it with this config (make judge)")
        folder = judge_stage(dataclasses.replace(cfg, out=""))
    return folder


def _test_set(cfg: Config, systems: list[System], judge_tok) -> tuple[list[Utterance], int]:
    """Test utterances every system can take (same rule as training: speech + text + 4 specials
    within the shortest tower), capped at ``eval.max_utterances``; returns (utterances, skipped)."""
    from zipper_pl.data.text import TOKENIZER_FILE, TextTokenizer

    utts = gold_utterances(cfg, judge_tok, "test")
    if cfg.eval.max_utterances:
        utts = utts[: cfg.eval.max_utterances]
    keep = np.ones(len(utts), dtype=bool)
    for folder in {f for s in systems for f in s.folders.values()}:
        max_total = min(c["max_seq_len"] for c in read_json(folder / TOWERS_JSON).values())
        text_ids = TextTokenizer(folder / TOKENIZER_FILE).encode([u.text for u in utts])
        keep &= [len(u.tokens) + len(t) + 4 <= max_total for u, t in zip(utts, text_ids)]
    return [u for u, k in zip(utts, keep, strict=True) if k], int((~keep).sum())


# ---- generation ------------------------------------------------------------------------------


def _chunks(lengths: list[int], batch_size: int) -> list[list[int]]:
    """Indices sorted by length, in batches: similar lengths pad less and share one budget."""
    order = sorted(range(len(lengths)), key=lambda i: (lengths[i], i))
    return [order[lo : lo + batch_size] for lo in range(0, len(order), batch_size)]


def _budget_cap(ft: Finetuned, out_mod: str, longest_input: int) -> int:
    """Largest generation budget the model's max_seq_len allows after the longest prompt."""
    if ft.arch == "zipper":  # the output tower holds only bos + generated + eos
        return ft.model.towers[out_mod].cfg.max_seq_len - 2
    return ft.model.tower.cfg.max_seq_len - (longest_input + 3) - 2  # one shared sequence


def generate_asr(ft: Finetuned, utts: list[Utterance], cfg: Config) -> tuple[list[str], int]:
    """Greedy transcripts (batched, KV-cached) and how many batches had their budget clipped."""
    hyps, clipped = [""] * len(utts), 0
    for idx in _chunks([len(u.tokens) for u in utts], cfg.eval.batch_size):
        cap = _budget_cap(ft, "text", max(len(utts[i].tokens) for i in idx))
        clipped += cap < cfg.eval.max_new_text
        out = ft.transcribe(
            [utts[i].tokens for i in idx], len(idx), min(cfg.eval.max_new_text, cap)
        )
        for i, h in zip(idx, out, strict=True):
            hyps[i] = h
    return hyps, clipped


def generate_tts(
    ft: Finetuned, utts: list[Utterance], cfg: Config, temperature: float, seed: int | None
) -> tuple[list[np.ndarray], int]:
    """Speech tokens per transcript; budget = eval.max_new_speech_per_word x words (per batch)."""
    text_len = [len(t) for t in ft.text_tok.encode([u.text for u in utts])]
    want = [math.ceil(cfg.eval.max_new_speech_per_word * max(1, len(u.text.split()))) for u in utts]
    out: list[np.ndarray] = [np.zeros(0, dtype=np.int64)] * len(utts)
    clipped = 0
    for k, idx in enumerate(_chunks(want, cfg.eval.batch_size)):
        cap = _budget_cap(ft, "speech", max(text_len[i] for i in idx))
        budget = min(max(want[i] for i in idx), cap)
        clipped += budget < max(want[i] for i in idx)
        gen = ft.speak(
            [utts[i].text for i in idx],
            [budget] * len(idx),
            batch_size=len(idx),
            temperature=temperature,
            top_k=cfg.eval.top_k or None,
            seed=None if seed is None else seed * 100_003 + k,
        )
        for i, g in zip(idx, gen, strict=True):
            out[i] = g
    return out, clipped


# ---- scoring ---------------------------------------------------------------------------------


def _rate(rows: list[dict]) -> float | None:
    """Corpus rate, or None when no reference has a unit (e.g. a judge that outputs nothing)."""
    units = sum(r["ref_units"] for r in rows)
    return sum(r["errors"] for r in rows) / units if units else None


def eval_asr(ft: Finetuned, utts: list[Utterance], cfg: Config) -> tuple[dict, list[dict]]:
    t0 = time.perf_counter()
    hyps, clipped = generate_asr(ft, utts, cfg)
    refs, ids = [u.text for u in utts], [u.id for u in utts]
    words = error_rows(refs, hyps, ids, unit="word")
    chars = error_rows(refs, hyps, ids, unit="char")
    rows = [
        {
            **w,
            "wer": w["rate"],
            "char_errors": c["errors"],
            "ref_chars": c["ref_units"],
            "cer": c["rate"],
        }
        for w, c in zip(words, chars, strict=True)
    ]
    for r in rows:
        del r["rate"]
    summary = {
        "wer": _rate(words),
        "cer": _rate(chars),
        "n": len(rows),
        "budget_clipped_batches": clipped,
        "wall_s": time.perf_counter() - t0,
    }
    return summary, rows


def eval_tts(
    ft: Finetuned, judge, utts: list[Utterance], targets: list[str], cfg: Config
) -> tuple[dict, list[dict], list[np.ndarray]]:
    """Greedy + best-of-N TTS scored by the judge; returns (summary, rows, greedy tokens)."""
    t0 = time.perf_counter()
    ids, golds = [u.id for u in utts], [u.text for u in utts]
    runs = [("greedy", 0.0, None)] + [
        (f"seed{s}", cfg.eval.temperature, cfg.seed + s) for s in range(cfg.eval.tts_seeds)
    ]
    scored, clipped, truncated = {}, 0, {}
    for name, temperature, seed in runs:
        tokens, c = generate_tts(ft, utts, cfg, temperature, seed)
        clipped += c
        hyps = judge.transcribe(tokens, cfg.eval.batch_size, stats=truncated)
        scored[name] = {
            "tokens": tokens,
            "gold": error_rows(golds, hyps, ids, unit="word"),
            "target": error_rows(targets, hyps, ids, unit="word"),
        }
    seeds = [f"seed{s}" for s in range(cfg.eval.tts_seeds)]
    best = best_of([scored[s]["gold"] for s in seeds])  # per utterance, by errors vs gold
    best_target = [scored[seeds[b["seed"]]]["target"][i] for i, b in enumerate(best)]
    greedy = scored["greedy"]
    rows = []
    for i, u in enumerate(utts):
        rows.append(
            {
                "id": u.id,
                "ref": greedy["gold"][i]["ref"],
                "target": greedy["target"][i]["ref"],
                "gold_tokens": len(u.tokens),
                "greedy_tokens": len(greedy["tokens"][i]),
                "greedy_hyp": greedy["gold"][i]["hyp"],
                "greedy_errors_gold": greedy["gold"][i]["errors"],
                "greedy_errors_target": greedy["target"][i]["errors"],
                "best_seed": best[i]["seed"],
                "best_hyp": best[i]["hyp"],
                "best_errors_gold": best[i]["errors"],
                "best_errors_target": best_target[i]["errors"],
                "ref_words": best[i]["ref_units"],
                "target_words": best_target[i]["ref_units"],
                "seed_hyps": [scored[s]["gold"][i]["hyp"] for s in seeds],
            }
        )
    summary = {
        "greedy": {"wer_gold": _rate(greedy["gold"]), "wer_target": _rate(greedy["target"])},
        "best_of_n": {"wer_gold": _rate(best), "wer_target": _rate(best_target)},
        "seeds": cfg.eval.tts_seeds,
        "temperature": cfg.eval.temperature,
        "top_k": cfg.eval.top_k,
        "n": len(rows),
        "budget_clipped_batches": clipped,
        "judge_truncated": truncated.get("truncated", 0),
        "wall_s": time.perf_counter() - t0,
    }
    return summary, rows, greedy["tokens"]


def significance(per_system: dict[str, dict[str, list[float]]]) -> list[dict]:
    """Wilcoxon signed-rank for every pair of systems on every error list both have."""
    out, names = [], list(per_system)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            for task in per_system[a]:
                if task not in per_system[b]:
                    continue
                ea, eb = per_system[a][task], per_system[b][task]
                res = wilcoxon_paired(ea, eb)
                out.append(
                    {
                        "task": task,
                        "a": a,
                        "b": b,
                        "mean_errors_a": float(np.mean(ea)),
                        "mean_errors_b": float(np.mean(eb)),
                        **res,
                    }
                )
    return out


# ---- outputs ---------------------------------------------------------------------------------


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, "".join(json.dumps(r, default=float) + "\n" for r in rows))


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
            atomic_write_bytes(out / "audio" / f"{who}_{u.id}.wav", buf.getvalue())
            writer.add_audio(f"{who}/{u.id}", torch.from_numpy(wav)[None], 0, sample_rate=sr)
    return None


def evaluate_stage(cfg: Config) -> Path:
    """Evaluate this config's Zipper and Single Decoder (or ``eval.stages``); see module doc."""
    from torch.utils.tensorboard import SummaryWriter

    from zipper_pl.stages import stage_dir

    t_start = time.perf_counter()
    out = stage_dir(cfg, "eval")
    systems = resolve_systems(cfg)
    judge_dir = _judge_folder(cfg)
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
        "systems": {},
        "retention": [],
    }
    errors: dict[str, dict[str, list[float]]] = {}
    for system in systems:
        label = LABELS.get(system.name, system.name)
        entry = {
            "label": label,
            "arch": system.arch,
            "freeze": system.cfg.zip.freeze if system.arch == "zipper" else "none",
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
        results["systems"][system.name] = entry
    results["significance"] = significance(errors)
    for name, entry in results["systems"].items():
        for key, value in _flat_scalars(entry):
            writer.add_scalar(f"{name}/{key}", value, 0)
    writer.close()
    results["wall_s"] = time.perf_counter() - t_start
    markdown = render_markdown(results)
    atomic_write_json(out / "results.json", results)
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
