"""TTS WER by utterance length, per system, with 95% bootstrap intervals: the paper's Fig. 2
("the Zipper's advantage grows with utterance length").

Reads an evaluation folder's per-utterance rows (``utterances/<system>.tts_audio.jsonl``, TTS
judged from audio; else ``<system>.tts.jsonl``, the token judge), groups the test utterances
into length buckets of whole words, and writes ``by_length.md`` and ``by_length.png`` beside
``results.md``. A bucket's WER is its errors over its words (as the corpus WER); its interval
resamples utterances (``scipy.stats.bootstrap``, percentile, seeded), and so does the interval
of the difference between two systems, on the same utterances (paired).

``python -m zipper_pl by-length EVAL_FOLDER`` writes them for a finished evaluation.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_text
from zipper_pl.registry import ARCHS
from zipper_pl.results.figures import new_axes, save_png

MAX_BUCKETS = 4
RESAMPLES = 2000
SOURCES = {"tts_audio": "TTS judged from audio", "tts": "TTS judged by the token judge"}
ERRORS = "best_errors_gold"  # best of N samples against the gold transcript, as Table 2


def length_buckets(lengths: list[int], k: int = MAX_BUCKETS) -> list[tuple[int, int]]:
    """Up to ``k`` word ranges ``(lo, hi)`` (inclusive) holding about equal shares of the
    utterances; a length never straddles two buckets."""
    values = np.sort(np.asarray(lengths))
    if values.size == 0:
        return []
    cuts = sorted({int(np.quantile(values, q, method="lower")) for q in np.arange(1, k) / k})
    bounds, lo = [], int(values[0])
    for c in cuts:
        if lo <= c < int(values[-1]):
            bounds.append((lo, c))
            lo = c + 1
    return [*bounds, (lo, int(values[-1]))]


def _wer(errors: np.ndarray, words: np.ndarray, axis: int = -1) -> np.ndarray:
    return errors.sum(axis=axis) / words.sum(axis=axis)


def _gap(errors_a: np.ndarray, errors_b: np.ndarray, words: np.ndarray, axis: int = -1):
    return (errors_a.sum(axis=axis) - errors_b.sum(axis=axis)) / words.sum(axis=axis)


def _interval(data: tuple, statistic) -> tuple[float, float]:
    if len(data[0]) < 2:  # one utterance: nothing to resample
        return float("nan"), float("nan")
    res = stats.bootstrap(data, statistic, paired=True, vectorized=True, method="percentile",
                          n_resamples=RESAMPLES, random_state=np.random.default_rng(0))  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def by_length(rows: dict[str, list[dict]]) -> list[dict]:
    """One row per (bucket, system): WER and its interval; per bucket also the first system's
    WER minus each other's, with its paired interval. ``rows``: system -> per-utterance rows
    (``ref_words`` and ``best_errors_gold``), on the same utterances."""
    first, *others = list(rows)
    by_id = {s: {r["id"]: r for r in rs} for s, rs in rows.items()}
    ids = [i for i in by_id[first] if all(i in by_id[s] for s in others)]
    words = {i: by_id[first][i]["ref_words"] for i in ids}
    out = []
    for lo, hi in length_buckets(list(words.values())):
        mine = [i for i in ids if lo <= words[i] <= hi]
        w = np.array([words[i] for i in mine], dtype=float)
        errors = {s: np.array([by_id[s][i][ERRORS] for i in mine], dtype=float) for s in rows}
        for s in rows:
            low, high = _interval((errors[s], w), _wer)
            row = {"words": (lo, hi), "system": s, "n": len(mine), "wer": float(_wer(errors[s], w))}
            row |= {"low": low, "high": high}
            if s != first:
                gap = _gap(errors[first], errors[s], w)
                row |= {"gap_vs": first, "gap": float(gap),
                        "gap_interval": _interval((errors[first], errors[s], w), _gap)}  # fmt: skip
            out.append(row)
    return out


def markdown(table: list[dict], labels: dict[str, str], source: str) -> str:
    lines = [
        "# TTS WER by utterance length (the paper's Fig. 2)",
        "",
        f"{source}; best of the samples, against the gold transcript; 95% percentile bootstrap "
        f"intervals over utterances ({RESAMPLES} resamples); the gap is the first system's WER "
        "minus the row's, on the same utterances (positive: the row's system is better).",
        "",
        "| words | utterances | system | WER % | 95% interval | gap (points) | 95% interval |",
        "|---|---:|---|---:|---|---:|---|",
    ]
    for r in table:
        lo, hi = r["words"]
        gap = f"{100 * r['gap']:+.1f} | {_pair(r['gap_interval'])}" if "gap" in r else " | "
        label = labels.get(r["system"], r["system"])
        wer = f"{100 * r['wer']:.1f} | {_pair((r['low'], r['high']))}"
        lines.append(f"| {lo}-{hi} | {r['n']} | {label} | {wer} | {gap} |")
    return "\n".join(lines) + "\n"


def _pair(interval: tuple[float, float]) -> str:
    return f"{100 * interval[0]:.1f} .. {100 * interval[1]:.1f}"


def plot(path: Path, table: list[dict], labels: dict[str, str]) -> None:
    """WER per length bucket and system, with the intervals as error bars."""
    buckets = list(dict.fromkeys(r["words"] for r in table))
    fig, ax = new_axes()
    for s in dict.fromkeys(r["system"] for r in table):
        mine = [r for r in table if r["system"] == s]
        wer = np.array([100 * r["wer"] for r in mine])
        err = np.array([[100 * r["wer"] - 100 * r["low"], 100 * r["high"] - 100 * r["wer"]]
                        for r in mine]).T  # fmt: skip
        ax.errorbar(range(len(mine)), wer, yerr=err, marker="o", capsize=3, label=labels.get(s, s))
    ax.set_xticks(range(len(buckets)), [f"{lo}-{hi}" for lo, hi in buckets])
    ax.set_xlabel("utterance length (words)")
    ax.set_ylabel("TTS WER (%)")
    ax.set_title("TTS WER by utterance length (95% bootstrap intervals)")
    ax.grid(True, alpha=0.3)
    ax.legend()
    save_png(fig, path)


def write_length_report(folder: Path, labels: dict[str, str] | None = None) -> Path:
    """``by_length.md`` / ``.png`` of an evaluation folder with TTS rows of two systems."""
    folder = Path(folder)
    utterances = folder / "utterances"
    for kind in SOURCES:
        files = sorted(utterances.glob(f"*.{kind}.jsonl"))
        if len(files) >= 2:
            break
    else:
        raise UserError(f"{folder} has no per-utterance TTS rows of two systems (utterances/"
                        "<system>.tts.jsonl): give a finished `make evaluate` folder")  # fmt: skip
    rows = {f.name.removesuffix(f".{kind}.jsonl"): _read(f) for f in files}
    arch = {name: name for name in rows}  # the default systems are named by their arch
    if (folder / "results.json").is_file():  # a finished evaluation: its names and archs
        systems = json.loads((folder / "results.json").read_text()).get("systems", [])
        arch |= {e["name"]: e["arch"] for e in systems if "name" in e and "arch" in e}
        if labels is None:
            labels = {e["name"]: e["label"] for e in systems if "name" in e and "label" in e}
    labels = labels or {}
    # the baseline (an unzipped system) first: gaps are its WER minus the others', as the paper's
    zipped = {n: arch[n] not in ARCHS or ARCHS[arch[n]].zipped for n in rows}
    rows = dict(sorted(rows.items(), key=lambda kv: zipped[kv[0]]))
    table = by_length(rows)
    atomic_write_text(folder / "by_length.md", markdown(table, labels, SOURCES[kind]))
    plot(folder / "by_length.png", table, labels)
    return folder / "by_length.md"


def _read(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
