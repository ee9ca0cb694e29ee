"""The evaluation report: ``results.json`` rendered as paper-style markdown tables."""

from __future__ import annotations


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _ppl(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.4f}"


def _audio_table(r: dict) -> list[str]:
    """Table 2: TTS judged from audio (the paper's protocol), with the reference rows."""
    audio, n = r.get("audio"), r["eval"]["tts_seeds"]
    if not audio:
        return ["", "## Table 2: TTS from audio: not scored (eval.tts_asr=none)"]
    lines = [
        "",
        f"## Table 2: TTS, WER % of `{audio['recognizer']}` on the audio (as the paper)",
        "",
        f"Speech voiced by `{audio['vocoder'] or 'the codec decoder'}`. gold = against the "
        "transcript; target = against the recogniser's transcript of the gold audio. The last "
        f"column is the token judge's best of {n} (Table 2b), for comparison with earlier runs.",
        "",
        f"| Row | frozen | aligned frac | gold, best of {n} | target, best of {n} "
        f"| gold, greedy | target, greedy | token judge, best of {n} |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for name in ("oracle", "resynthesis", "griffin_lim"):
        if name in audio:
            a = audio[name]
            gold, target = _pct(a["wer_gold"]), _pct(a["wer_target"])
            lines.append(f"| {a['label']} | - | - | {gold} | {target} | {gold} | {target} | - |")
    for s in systems_with(r, "tts_audio"):
        b, g = s["tts_audio"]["best_of_n"], s["tts_audio"]["greedy"]
        lines.append(
            f"| {s['label']} | {s['freeze']} | {s['aligned_frac']:g} | {_pct(b['wer_gold'])} | "
            f"{_pct(b['wer_target'])} | {_pct(g['wer_gold'])} | {_pct(g['wer_target'])} | "
            f"{_pct(s['tts']['best_of_n']['wer_gold'])} |"
        )
    if r.get("listen"):
        lines += ["", f"Listen: `{r['listen']}` (opens from disk)."]
    return lines


def systems_with(r: dict, key: str) -> list[dict]:
    return [s for s in r["systems"] if key in s]


def render_markdown(r: dict) -> str:
    """results.json -> results.md: Table 1 (ASR), Table 2 (TTS), text retention, significance."""
    systems, n = r["systems"], r["eval"]["tts_seeds"]
    lines = [
        f"# Evaluation: scale {r['scale']}, corpus {r['corpus']}, codec {r['codec']}, "
        f"seed {r['seed']}",
        "",
        f"{r['test_utterances']} test utterances ({r['skipped_too_long']} too long for the "
        f"models skipped). Judge: `{r['judge']['folder']}`. Scores are computed after "
        "`normalize_for_scoring` (NFKC, lowercase, punctuation to spaces, in-word apostrophes "
        "kept) on reference and hypothesis alike.",
        "",
        "## Table 1: ASR (greedy), WER / CER %",
        "",
        "| Model | frozen | aligned frac | WER | CER | utterances |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for s in systems:
        if "asr" in s:
            a = s["asr"]
            lines.append(
                f"| {s['label']} | {s['freeze']} | {s['aligned_frac']:g} | "
                f"{_pct(a['wer'])} | {_pct(a['cer'])} | {a['n']} |"
            )
    lines += _audio_table(r)
    oracle = _pct(r["judge"]["oracle_wer"])
    lines += [
        "",
        "## Table 2b: TTS, WER % of the judge ASR on the generated speech tokens",
        "",
        "gold = against the transcript; target = against the judge's transcript of the gold "
        f"tokens. Best of {n} sampling seeds per utterance (T={r['eval']['temperature']:g}, "
        f"top-k {r['eval']['top_k'] or 'off'}), and greedy.",
        "",
        f"| Model | frozen | aligned frac | gold, best of {n} | target, best of {n} "
        "| gold, greedy | target, greedy |",
        "|---|---|---:|---:|---:|---:|---:|",
        f"| Oracle (judge on gold tokens) | - | - | {oracle} | - | {oracle} | - |",
    ]
    for s in systems:
        if "tts" in s:
            b, g = s["tts"]["best_of_n"], s["tts"]["greedy"]
            lines.append(
                f"| {s['label']} | {s['freeze']} | {s['aligned_frac']:g} | "
                f"{_pct(b['wer_gold'])} | {_pct(b['wer_target'])} | {_pct(g['wer_gold'])} | "
                f"{_pct(g['wer_target'])} |"
            )
    lines += [
        "",
        "## Text retention: text-only perplexity on held-out text",
        "",
        "| Model | tasks | before (pretrained tower) | after (text tower alone) | identical "
        "| zipped, text only |",
        "|---|---|---:|---:|---|---:|",
    ]
    notes = []
    for t in r["retention"]:
        same = "n/a" if t["identical"] is None else ("yes" if t["identical"] else "no")
        lines.append(
            f"| {t['label']} | {'+'.join(t['tasks'])} | {_ppl(t['ppl_before'])} | "
            f"{_ppl(t['ppl_after'])} | {same} | {_ppl(t.get('ppl_zipped_text_only'))} |"
        )
        if t["frozen_text"] and t["identical"]:
            notes.append(
                f"- {t['label']} ({'+'.join(t['tasks'])}): the text tower is frozen and "
                "its perplexity before and after fine-tuning is bit-identical "
                f"({t['ppl_before']!r} == {t['ppl_after']!r})."
            )
        elif t["frozen_text"] and t["identical"] is False:
            notes.append(
                f"- WARNING {t['label']}: the text tower is frozen but its perplexity "
                "changed: the frozen weights were modified."
            )
        elif t["frozen_text"] is False and t["identical"] is not None:
            zipped = "ppl_zipped_text_only" in t  # a model with fusion layers
            what = "the text tower is" if zipped else "every parameter is"
            notes.append(
                f"- {t['label']} ({'+'.join(t['tasks'])}): {what} fine-tuned, so the "
                "text perplexity may change (the single decoder's over its full "
                "extended vocabulary)."
            )
    lines += [
        "",
        *notes,
        "",
        "## Significance: Wilcoxon signed-rank on per-utterance errors",
        "",
        "| task | A | B | mean errors A | mean errors B | W | p-value | pairs (non-zero) |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for s in r["significance"]:
        lines.append(
            f"| {s['task']} | {s['a']} | {s['b']} | {s['mean_errors_a']:.3f} | "
            f"{s['mean_errors_b']:.3f} | {s['statistic']:g} | {s['p_value']:.3g} | "
            f"{s['n']} ({s['n_nonzero']}) |"
        )
    lines += ["", f"Evaluation wall time: {r.get('wall_s', 0):.0f} s.", ""]
    return "\n".join(lines)
