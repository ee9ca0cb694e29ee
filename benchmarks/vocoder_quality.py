"""How much a vocoder loses, apart from the duration predictor: judge WER and frame-unit recovery
of test utterances voiced from their gold frame-level units (true durations) and from their
deduplicated units (predicted durations), beside the gold audio and the Griffin-Lim floor; the
unit error rate of the deduplicated units the codec reads back (what a recogniser of a
deduplicating codec reads, so comparable across true and predicted durations); and,
for the voicings of true durations, spectral fidelity measures that do not read the codec (the
log-mel L1 at four scales, the log-magnitude L1 of a 1024-point STFT; 0 for the gold audio).

``python -m benchmarks.vocoder_quality VOCODER_DIR JUDGE_DIR [--n 60] [--pool test valid]``
(both stage folders of the same codec; the data the vocoder's config names must be built; ``--n``
utterances of each pool).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import jiwer
import numpy as np
import torch

from zipper_pl.config import load_config
from zipper_pl.data.corpora.manifest import read_manifest
from zipper_pl.data.prepare import corpus_manifests
from zipper_pl.data.tokenizers.units_inversion import feature_stats, griffin_lim_units
from zipper_pl.fitting.judging import load_judge
from zipper_pl.fitting.vocoding import load_vocoder, speech_clips
from zipper_pl.lit.vocoder import Clip, mel_loss_at
from zipper_pl.metrics import error_rows
from zipper_pl.models.vocoder import runs_of

FIDELITY_SCALES = [256, 512, 1024, 2048]  # the demo vocoder's mel scales


@torch.no_grad()
def fidelity(waves: list[np.ndarray], clips: list[Clip], sample_rate: int) -> dict[str, float]:
    """Mean over utterances of the log-mel L1 (four scales) and the log-magnitude L1 (1024-point
    STFT) against the gold audio, for voicings of the true durations (cut to the shorter of the
    two: the Griffin-Lim floor's last frame may differ by a few samples)."""
    mels = [mel_loss_at(n, sample_rate) for n in FIDELITY_SCALES]  # the vocoder's own losses
    window = torch.hann_window(1024)

    def log_magnitude(x: torch.Tensor) -> torch.Tensor:
        spec = torch.stft(x, 1024, 256, window=window, return_complex=True).abs()
        return torch.log(spec + 1e-5)

    mel, mag = [], []
    for wave, clip in zip(waves, clips, strict=True):
        n = min(len(wave), len(clip.wave))
        y_hat, y = torch.from_numpy(wave[:n])[None], torch.from_numpy(clip.wave[:n])[None]
        mel.append(float(np.mean([float(loss(y_hat, y)) for loss in mels])))
        mag.append(float((log_magnitude(y_hat) - log_magnitude(y)).abs().mean()))
    return {"log_mel_l1": float(np.mean(mel)), "log_magnitude_l1": float(np.mean(mag))}


def unit_measures(
    got: list[np.ndarray], voiced: list[np.ndarray], gold: list[np.ndarray]
) -> dict[str, float]:
    """The codec's reading of voiced audio, frame by frame and deduplicated.

    got[i]: frame units the codec reads from utterance i's audio; voiced[i]: the frame units it
    was voiced from (for predicted durations their expansion, not the gold frames: those lie
    elsewhere in time, and a frame-by-frame match against them reads ~0.5 for a perfect voicing);
    gold[i]: its gold frame units. Returns the mean over utterances of the share of frames read
    back as voiced, over the length both have (``units_recovered``), and the edit distance
    between the deduplicated units read back and the gold's, per gold unit
    (``unit_error_rate``, with its insertion and deletion shares).
    """
    pairs = zip(got, voiced, strict=True)
    same = [np.mean(g[: len(v)] == v[: len(g)]) if len(g) * len(v) else 0.0 for g, v in pairs]
    # gold clips always have frames (a clip is len(wave) // hop + 1 of them): jiwer, which
    # refuses an empty reference, never sees one
    refs, hyps = ([" ".join(map(str, runs_of(np.asarray(u))[0])) for u in x] for x in (gold, got))
    m = jiwer.process_words(refs, hyps)
    n = sum(len(r.split()) for r in refs)
    return {
        "units_recovered": float(np.mean(same)),
        "unit_error_rate": (m.substitutions + m.deletions + m.insertions) / n,
        "unit_insertions": m.insertions / n,
        "unit_deletions": m.deletions / n,
    }


def run(
    vocoder_dir: Path, judge_dir: Path, n: int = 60, pools: tuple[str, ...] = ("test",)
) -> dict[str, dict]:
    cfg = load_config(vocoder_dir / "config.yaml")
    judge, tok = load_judge(judge_dir)
    voice = load_vocoder(vocoder_dir, tok)
    clips: list[Clip] = [c for pool in pools for c in speech_clips(cfg, tok, pool, n)]
    texts = {r.id: r.text for pool in pools for r in read_manifest(corpus_manifests(cfg)[pool])}
    stats = feature_stats(tok, [c.wave for c in clips[: n // 2]])

    gold = [c.units for c in clips]

    def score(waves: list[np.ndarray], voiced: list[np.ndarray], same_length: bool = False) -> dict:
        hyps = judge.transcribe([t.astype(np.int64) for t in tok.encode(waves)], batch_size=50)
        rows = error_rows([texts[c.id] for c in clips], hyps)
        wer = sum(r["errors"] for r in rows) / sum(r["ref_units"] for r in rows)
        out = {"wer": wer, **unit_measures(tok.encode_frames(waves), voiced, gold)}
        return {**out, **fidelity(waves, clips, tok.sample_rate)} if same_length else out

    out = {
        "gold audio": score([c.wave for c in clips], gold),
        "vocoder, true durations": score(
            [voice.vocoder.synthesize(u, expand=False) for u in gold], gold, same_length=True
        ),
        "griffin-lim, true durations": score(
            [griffin_lim_units(tok, u, stats) for u in gold], gold, same_length=True
        ),
    }
    if tok.collapses_runs:
        predicted = [voice.frames(runs_of(u)[0]) for u in gold]  # the predictor's expansions
        out["vocoder, predicted durations"] = score(
            [voice.vocoder.synthesize(f, expand=False) for f in predicted], predicted
        )
        out["griffin-lim, predicted durations"] = score(
            [griffin_lim_units(tok, f, stats) for f in predicted], predicted
        )
    for name, r in out.items():
        line = f"{name:34s} WER {100 * r['wer']:5.2f}  units recovered {r['units_recovered']:.3f}"
        line += f"  unit error rate {r['unit_error_rate']:.3f}"
        if "log_mel_l1" in r:
            line += f"  log-mel L1 {r['log_mel_l1']:.4f}"
            line += f"  log-magnitude L1 {r['log_magnitude_l1']:.4f}"
        print(line)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.vocoder_quality")
    ap.add_argument("vocoder", type=Path)
    ap.add_argument("judge", type=Path)
    ap.add_argument("--n", type=int, default=60, help="utterances of each pool")
    ap.add_argument(
        "--pool", nargs="+", default=["test"], choices=("test", "valid"), help="held-out pools"
    )
    args = ap.parse_args()
    run(args.vocoder, args.judge, args.n, tuple(args.pool))


if __name__ == "__main__":
    main()
