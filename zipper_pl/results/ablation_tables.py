"""The aligned-data ablation's tables and plots, from one row per finished cell.

A row holds the cell (system, fraction, seed, learning rate), its corpus test WERs, the step its
exported weights come from, and its per-utterance error counts (``asr_errors`` / ``tts_errors``:
{utterance id: errors}). Tables show mean +- sd over seeds; every fraction gets a paired test
between each other system and the reference system (Wilcoxon signed-rank on the errors of the
same utterances under the same seed, pooled over seeds), with the p-values adjusted for the number
of tests in the table (Benjamini-Hochberg, ``scipy.stats.false_discovery_control``).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from pathlib import Path

from scipy.stats import false_discovery_control

from zipper_pl.io import atomic_write_text
from zipper_pl.metrics import wilcoxon_paired
from zipper_pl.results.figures import new_axes, save_png

METRICS = {
    "asr": ("asr_wer", "ASR WER"),
    "tts": ("tts_wer", "TTS WER (the token judge on generated tokens, not audio; vs gold)"),
}
CSV_SKIP = ("asr_errors", "tts_errors")  # per-utterance lists: in the cells' folders, not the CSV


def spread(values: list[float | None]) -> tuple[float | None, float | None, int]:
    """(mean, sample sd or None for one value, n) of the values that are not None."""
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None, 0
    return statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else None, len(vals)


def systems_with(rows: list[dict], metric: str) -> list[str]:
    """The systems, in order, with a value of ``metric`` (a system can be in one task only)."""
    return list(dict.fromkeys(r["system"] for r in rows if r[metric] is not None))


def paired_errors(a_rows: list[dict], b_rows: list[dict], task: str) -> tuple[list, list]:
    """Errors of the utterances both systems scored under the same seed, pooled over seeds."""
    key = f"{task}_errors"
    by_seed = {r["seed"]: r[key] or {} for r in b_rows}
    ea, eb = [], []
    for r in a_rows:
        other = by_seed.get(r["seed"], {})
        for uid, err in sorted((r[key] or {}).items()):
            if uid in other:
                ea.append(err)
                eb.append(other[uid])
    return ea, eb


def paired_tests(rows: list[dict], reference: str, pairs: list[tuple[str, str]] = ()) -> list[dict]:
    """One Wilcoxon test per (task, fraction, system other than ``reference``) against
    ``reference``, and per (task, fraction) for each extra ``(system, vs)`` pair (e.g. the Zipper
    with its speech tower frozen vs trained), with Benjamini-Hochberg adjusted p-values over all
    of them."""
    tests = []
    systems = [s for s in dict.fromkeys(r["system"] for r in rows) if s != reference]
    for task in METRICS:
        for frac in sorted({r["frac"] for r in rows}):
            for s, vs in [(s, reference) for s in systems] + list(pairs):
                mine = [r for r in rows if r["system"] == s and r["frac"] == frac]
                other = [r for r in rows if r["system"] == vs and r["frac"] == frac]
                ea, eb = paired_errors(mine, other, task)
                if ea:
                    res = wilcoxon_paired(ea, eb)
                    tests.append({"task": task, "frac": frac, "system": s, "vs": vs, **res})
    for t, p in zip(tests, adjust_p([t["p_value"] for t in tests]), strict=True):
        t["p_adjusted"] = p
    return tests


def adjust_p(p_values: list[float]) -> list[float]:
    """Benjamini-Hochberg adjusted p-values (false discovery rate over the family), in order."""
    if not p_values:
        return []
    return [float(p) for p in false_discovery_control(p_values, method="bh")]


def _cell(mean: float | None, sd: float | None) -> str:
    if mean is None:
        return "-"
    return f"{100 * mean:.1f}" + ("" if sd is None else f" ± {100 * sd:.1f}")


def _p(p: float) -> str:
    return f"{p:.2g}" if p >= 1e-4 else f"{p:.0e}"


def table_lines(rows: list[dict], tests: list[dict], task: str, reference: str) -> list[str]:
    metric, title = METRICS[task]
    fracs = sorted({r["frac"] for r in rows})
    seeds = sorted({r["seed"] for r in rows})
    lines = [
        f"## {title}",
        "",
        f"Test WER %, mean ± sd over seeds {seeds}. p: two-sided Wilcoxon signed-rank test against "
        f"{reference} (or the system its row names) on per-utterance errors (same utterances and "
        f"seed, pooled over seeds), Benjamini-Hochberg adjusted over the {len(tests)} tests of "
        "this ablation.",
        "",
        "| system | " + " | ".join(f"aligned {f:g}" for f in fracs) + " |",
        "|---|" + "---|" * len(fracs),
    ]
    for s in systems_with(rows, metric):
        stats = [
            spread([r[metric] for r in rows if r["system"] == s and r["frac"] == f]) for f in fracs
        ]
        lines.append(f"| {s} | " + " | ".join(_cell(m, sd) for m, sd, _ in stats) + " |")
        for vs in dict.fromkeys(t["vs"] for t in tests if t["task"] == task and t["system"] == s):
            mine = {t["frac"]: t for t in tests
                    if t["task"] == task and t["system"] == s and t["vs"] == vs}  # fmt: skip
            ps = [_p(mine[f]["p_adjusted"]) if f in mine else "-" for f in fracs]
            lines.append(f"| p ({s} vs {vs}) | " + " | ".join(ps) + " |")
    lines.append("")
    return lines


def grid_lines(grid: list[dict], frac: float, seed: int) -> list[str]:
    """The lr grid's section of ablation.md: every rate's validation scores, the chosen bold."""
    if not grid:
        return []
    lines = [
        "## Learning rate per system (selected on validation only)",
        "",
        f"Grid at aligned fraction {frac:g}, seed {seed}; ASR selects on validation WER, TTS on "
        "validation loss. **bold** = selected, used for every cell of that system.",
        "",
        "| system | task | lr | validation WER | validation loss |",
        "|---|---|---|---|---|",
    ]
    for g in grid:
        wer = g.get("val_wer")
        row = [g["system"], g["task"], f"{g['lr']:g}",
               "-" if wer is None else f"{100 * wer:.1f}",
               "-" if g["val_loss"] is None else f"{g['val_loss']:.3f}"]  # fmt: skip
        if g.get("diverged"):
            row[3:] = ["diverged (non-finite loss or gradient)", "-"]
        if g["selected"]:
            row[2] = f"**{row[2]}**"
        lines.append("| " + " | ".join(row) + " |")
    return [*lines, ""]


def write_tables(
    out: Path,
    rows: list[dict],
    reference: str,
    extra: list[str] = (),
    pairs: list[tuple[str, str]] = (),
    title: str = "Aligned-data ablation",
) -> list[dict]:
    """ablation.csv (one row per cell), ablation.md (mean ± sd, p-values against ``reference``
    and for the extra ``pairs``, ``extra`` lines such as the learning-rate selection) and one
    PNG per task; returns the paired tests."""
    out.mkdir(parents=True, exist_ok=True)
    fields = [k for k in rows[0] if k not in CSV_SKIP]
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out / "ablation.csv", buf.getvalue())
    tests = paired_tests(rows, reference, pairs)
    lines = [f"# {title}", ""]
    for task, (metric, title) in METRICS.items():
        if all(r[metric] is None for r in rows):
            continue
        lines += table_lines(rows, tests, task, reference)
        plot(out / f"{metric}.png", rows, metric, title)
    atomic_write_text(out / "ablation.md", "\n".join([*lines, *extra]) + "\n")
    return tests


def plot(path: Path, rows: list[dict], metric: str, title: str) -> None:
    """WER vs aligned fraction per system: mean over seeds, error bars one sd."""
    fig, ax = new_axes()
    for s in systems_with(rows, metric):
        fracs = sorted({r["frac"] for r in rows if r["system"] == s})
        stats = [
            spread([r[metric] for r in rows if r["system"] == s and r["frac"] == f]) for f in fracs
        ]
        means = [math.nan if m is None else 100 * m for m, _, _ in stats]
        sds = [0.0 if sd is None else 100 * sd for _, sd, _ in stats]
        ax.errorbar([100 * f for f in fracs], means, yerr=sds, marker="o", capsize=3, label=s)
    fracs = sorted({100 * r["frac"] for r in rows})
    ax.set_xscale("log")
    ax.set_xticks(fracs, [f"{f:g}%" for f in fracs])
    ax.minorticks_off()
    ax.set_xlabel("aligned training data (%)")
    ax.set_ylabel(f"{title} (%)")
    ax.set_title(f"{title} vs aligned data (mean ± sd over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    save_png(fig, path)
