"""How much a vocoder loses, apart from the duration predictor: judge WER and frame-unit recovery
of test utterances voiced from their gold frame-level units (true durations) and from their
deduplicated units (predicted durations), beside the gold audio and the Griffin-Lim floor.

``python -m benchmarks.vocoder_quality VOCODER_DIR JUDGE_DIR [--n 60] [--pool valid]`` (both
stage folders of the same codec; the data the vocoder's config names must be built).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from zipper_pl.config import load_config
from zipper_pl.data.corpora.manifest import read_manifest
from zipper_pl.data.prepare import corpus_manifests
from zipper_pl.data.tokenizers.units_inversion import feature_stats, griffin_lim_units
from zipper_pl.fitting.judging import load_judge
from zipper_pl.fitting.vocoding import load_vocoder, speech_clips
from zipper_pl.lit.vocoder import Clip
from zipper_pl.metrics import error_rows
from zipper_pl.models.vocoder import runs_of


def run(vocoder_dir: Path, judge_dir: Path, n: int = 60, pool: str = "test") -> dict[str, dict]:
    cfg = load_config(vocoder_dir / "config.yaml")
    judge, tok = load_judge(judge_dir)
    voice = load_vocoder(vocoder_dir, tok)
    clips: list[Clip] = speech_clips(cfg, tok, pool, n)
    texts = {r.id: r.text for r in read_manifest(corpus_manifests(cfg)[pool])}
    stats = feature_stats(tok, [c.wave for c in clips[: n // 2]])

    def score(waves: list[np.ndarray]) -> dict:
        hyps = judge.transcribe([t.astype(np.int64) for t in tok.encode(waves)], batch_size=50)
        rows = error_rows([texts[c.id] for c in clips], hyps)
        frames = tok.encode_frames(waves)
        pairs = zip(frames, clips, strict=True)
        same = [np.mean(f[: len(c.units)] == c.units[: len(f)]) for f, c in pairs]
        wer = sum(r["errors"] for r in rows) / sum(r["ref_units"] for r in rows)
        return {"wer": wer, "units_recovered": float(np.mean(same))}

    dedup = [runs_of(c.units)[0] for c in clips]
    out = {
        "gold audio": score([c.wave for c in clips]),
        "vocoder, true durations": score(
            [voice.vocoder.synthesize(c.units, expand=False) for c in clips]
        ),
        "griffin-lim, true durations": score(
            [griffin_lim_units(tok, c.units, stats) for c in clips]
        ),
    }
    if tok.collapses_runs:
        out["vocoder, predicted durations"] = score([voice(d) for d in dedup])
        out["griffin-lim, predicted durations"] = score(
            [griffin_lim_units(tok, voice.frames(d), stats) for d in dedup]
        )
    for name, r in out.items():
        print(f"{name:34s} WER {100 * r['wer']:5.1f}  units recovered {r['units_recovered']:.3f}")
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.vocoder_quality")
    ap.add_argument("vocoder", type=Path)
    ap.add_argument("judge", type=Path)
    ap.add_argument("--n", type=int, default=60, help="utterances of the pool")
    ap.add_argument("--pool", default="test", choices=("test", "valid"), help="held-out pool")
    args = ap.parse_args()
    run(args.vocoder, args.judge, args.n, args.pool)


if __name__ == "__main__":
    main()
