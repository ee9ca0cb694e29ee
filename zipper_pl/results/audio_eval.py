"""TTS judged from audio, as the paper judges it: generated speech tokens are voiced (the codec's
decoder or the unit vocoder) and a recogniser (``eval.tts_asr``) transcribes the waveforms.

Reference rows, on the same test utterances as the systems:
- Oracle: the recogniser on the gold audio (its transcripts are the "target" references);
- Resynthesis: the gold tokens voiced by the vocoder (what the vocoder costs);
- Griffin-Lim floor (``units`` only): the gold tokens inverted without training
  (``data.units_inversion``), expanded by the same predicted durations: the vocoder must beat it.
Each system's greedy and best-of-N samples are scored the same way; best of N picks, per
utterance, the sample the recogniser heard with the fewest errors against the transcript. Every
WER goes through ``normalize_for_scoring`` on both sides (``metrics.error_rows``).

Below the stage modules (``evaluate`` calls it); wav files and the listening page are written by
``write_listen``.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from torch.utils.tensorboard import SummaryWriter

from zipper_pl.config import Config
from zipper_pl.data.corpora.audio import BadAudio, load_record
from zipper_pl.data.corpora.manifest import read_manifest
from zipper_pl.data.prepare import corpus_manifests
from zipper_pl.data.tokenizers.audio_tokenizers import AudioTokenizer, UnitsTokenizer
from zipper_pl.data.tokenizers.units_inversion import FeatureStats, feature_stats, griffin_lim_units
from zipper_pl.errors import UserError
from zipper_pl.fitting.judging import Utterance
from zipper_pl.fitting.vocoding import Voice
from zipper_pl.metrics import best_of, error_rows
from zipper_pl.results.listen import ListenRow, write_listen_page, write_wav
from zipper_pl.results.recognizers import Recognizer, build_recognizer
from zipper_pl.results.scoring import corpus_rate

FLOOR_STATS_UTTERANCES = 50  # valid-pool utterances whose feature statistics the floor uses
REFERENCES = ("oracle", "resynthesis", "griffin_lim")
LABELS = {"oracle": "Oracle (gold audio)", "resynthesis": "Resynthesis (gold tokens -> vocoder)",
          "griffin_lim": "Griffin-Lim floor (gold tokens)"}  # fmt: skip


@dataclass
class AudioScorer:
    """How speech tokens are heard: voiced by ``voice``, transcribed by ``recognizer``."""

    voice: Voice
    recognizer: Recognizer
    floor: FeatureStats | None  # units codec: statistics of the training-free inversion


def _waves(cfg: Config, pool: str, ids: list[str] | None, sample_rate: int) -> list[np.ndarray]:
    """The audio of ``ids`` (or the first utterances) of a pool, at ``sample_rate``."""
    records = {r.id: r for r in read_manifest(corpus_manifests(cfg)[pool]) if r.audio}
    ids = ids if ids is not None else list(records)[:FLOOR_STATS_UTTERANCES]
    try:
        return [load_record(records[i], sample_rate) for i in ids]
    except (KeyError, BadAudio) as e:  # tokenized a moment ago: the corpus changed underneath
        raise UserError(f"the {pool} audio changed while evaluating ({e}): run again") from None


def build_audio_scorer(cfg: Config, voice: Voice, judge, judge_tok: AudioTokenizer) -> AudioScorer:
    """The recogniser ``eval.tts_asr`` names, and the floor's statistics for ``units``."""
    recognizer = build_recognizer(
        cfg.eval.tts_asr, judge=judge, judge_tok=judge_tok, batch_size=cfg.eval.batch_size
    )
    floor = None
    if isinstance(voice.tok, UnitsTokenizer):
        floor = feature_stats(voice.tok, _waves(cfg, "valid", None, voice.sample_rate))
    return AudioScorer(voice, recognizer, floor)


def _heard(scorer: AudioScorer, waves: list[np.ndarray], utts, targets) -> dict:
    """Per-utterance WER rows of what the recogniser hears, against transcript and target."""
    hyps = scorer.recognizer.transcribe(waves, scorer.voice.sample_rate)
    ids, refs = [u.id for u in utts], [u.text for u in utts]
    gold = error_rows(refs, hyps, ids, unit="word")
    return {"gold": gold, "target": error_rows(targets, hyps, ids, unit="word") if targets else []}


def reference_rows(scorer: AudioScorer, utts: list[Utterance], cfg: Config) -> dict:
    """Oracle, Resynthesis and (units) the Griffin-Lim floor: their waves, rows and WERs."""
    t0 = time.perf_counter()
    gold_waves = _waves(cfg, "test", [u.id for u in utts], scorer.voice.sample_rate)
    oracle = _heard(scorer, gold_waves, utts, None)
    targets = [r["hyp"] for r in oracle["gold"]]
    waves = {"oracle": gold_waves, "resynthesis": [scorer.voice(u.tokens) for u in utts]}
    if scorer.floor is not None:
        frames = [scorer.voice.frames(u.tokens) for u in utts]
        waves["griffin_lim"] = [
            griffin_lim_units(scorer.voice.tok, f, scorer.floor) for f in frames
        ]
    out: dict = {"targets": targets, "waves": waves, "rows": {}, "summary": {}}
    for name, w in waves.items():
        heard = oracle if name == "oracle" else _heard(scorer, w, utts, targets)
        out["rows"][name] = heard["gold"]
        out["summary"][name] = {
            "label": LABELS[name],
            "wer_gold": corpus_rate(heard["gold"]),
            "wer_target": corpus_rate(heard["target"]) if heard["target"] else None,
        }
    out["summary"]["wall_s"] = time.perf_counter() - t0
    return out


def system_rows(
    scorer: AudioScorer, utts: list[Utterance], runs: dict[str, list[np.ndarray]], targets
) -> tuple[dict, list[dict], dict[str, list[np.ndarray]]]:
    """A TTS system's greedy and best-of-N samples (``runs``: name -> tokens per utterance,
    "greedy" and "seed<k>") heard from audio: (summary, per-utterance rows, waves per run)."""
    t0, skipped = time.perf_counter(), scorer.recognizer.skipped
    waves = {name: [scorer.voice(t) for t in tokens] for name, tokens in runs.items()}
    heard = {name: _heard(scorer, w, utts, targets) for name, w in waves.items()}
    if scorer.recognizer.skipped > skipped:  # a system that said nothing: all deletions
        print(f"[evaluate] {scorer.recognizer.skipped - skipped} empty or non-finite samples "
              "scored as silence (every word deleted)")  # fmt: skip
    seeds = [name for name in runs if name != "greedy"]
    best = best_of([heard[s]["gold"] for s in seeds])
    best_target = [heard[seeds[b["seed"]]]["target"][i] for i, b in enumerate(best)]
    greedy = heard["greedy"]
    rows = [
        {
            "id": u.id,
            "greedy_hyp": greedy["gold"][i]["hyp"],
            "greedy_errors_gold": greedy["gold"][i]["errors"],
            "best_seed": best[i]["seed"],
            "best_hyp": best[i]["hyp"],
            "best_errors_gold": best[i]["errors"],
            "best_errors_target": best_target[i]["errors"],
            "best_wer_gold": best[i]["rate"],
            "ref_words": best[i]["ref_units"],
            "seconds": len(waves["greedy"][i]) / scorer.voice.sample_rate,
        }
        for i, u in enumerate(utts)
    ]
    summary = {
        "greedy": {
            "wer_gold": corpus_rate(greedy["gold"]),
            "wer_target": corpus_rate(greedy["target"]),
        },
        "best_of_n": {"wer_gold": corpus_rate(best), "wer_target": corpus_rate(best_target)},
        "recognizer": scorer.recognizer.name,
        "skipped_waves": scorer.recognizer.skipped,
        "wall_s": time.perf_counter() - t0,
    }
    return summary, rows, waves


# a listening-page cell: wav path (relative; None: the system said nothing), WER, what was heard
Cell = tuple[str | None, float | None, str]


def _save(out: Path, column: str, name: str, wave: np.ndarray, sr: int, writer, tb: bool) -> str:
    rel = f"audio/{column}/{name}.wav"
    write_wav(out / rel, wave, sr)
    if tb:
        writer.add_audio(f"{column}/{name}", wave, 0, sample_rate=sr)
    return rel


def save_reference_audio(
    out: Path, utts: list[Utterance], refs: dict, sr: int, writer: SummaryWriter, samples: int
) -> dict[str, list[Cell]]:
    """Gold, resynthesised and floor audio as wavs (the first ``samples`` in TensorBoard too):
    the listening page's reference columns."""
    columns: dict[str, list[Cell]] = {}
    for name, waves in refs["waves"].items():
        columns[name] = [
            (
                _save(out, name, safe_file_name(u.id), w, sr, writer, i < samples),
                r["rate"],
                r["hyp"],
            )
            for i, (u, w, r) in enumerate(zip(utts, waves, refs["rows"][name], strict=True))
        ]
    return columns


def save_system_audio(
    out: Path, system: str, utts: list[Utterance], rows: list[dict],
    waves: dict[str, list[np.ndarray]], sr: int, writer: SummaryWriter, samples: int,
) -> list[Cell]:  # fmt: skip
    """Every sample a system's TTS was scored on, as ``audio/<system>/<run>/<id>.wav``; its
    best-of-N sample per utterance is its listening-page column (and TensorBoard's)."""
    cells = []
    for i, (u, row) in enumerate(zip(utts, rows, strict=True)):
        name, best = safe_file_name(u.id), f"seed{row['best_seed']}"
        for run, w in waves.items():
            _save(out, f"{system}/{run}", name, w[i], sr, writer, run == best and i < samples)
        rel = f"audio/{system}/{best}/{name}.wav" if len(waves[best][i]) else None
        cells.append((rel, row["best_wer_gold"], row["best_hyp"]))
    return cells


def write_listen(
    out: Path, utts: list[Utterance], columns: dict[str, list[Cell]], title: str, notes: list[str]
) -> Path:
    """``listen.html``: per test sentence its text and one player per column, with the WER."""
    rows = [
        ListenRow(
            u.id,
            u.text,
            clips={c: cells[i][0] for c, cells in columns.items() if cells[i][0]},
            wers={c: cells[i][1] for c, cells in columns.items()},
            hyps={c: cells[i][2] for c, cells in columns.items()},
        )
        for i, u in enumerate(utts)
    ]
    return write_listen_page(out, rows, list(columns), title=title, notes=notes)


def safe_file_name(name: str) -> str:
    """A manifest id as one file name: separators and anything else outside [A-Za-z0-9._-]
    become "_", so no id ("../x", "a/b", LibriLight's "small/100/book/name") leaves its folder."""
    return re.sub(r"[^A-Za-z0-9._-]", "_", name).lstrip(".") or "_"
