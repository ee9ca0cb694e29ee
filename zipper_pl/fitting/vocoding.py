"""The vocoder stage's work, and loading a trained vocoder to voice speech tokens.

``make vocoder`` trains ``models.vocoder.UnitVocoder`` for the active codec on the speech pool:
its audio and the codec's frame-level tokens of that audio (one token per frame even for
``units_dedup`` codecs, whose runs give the duration predictor its targets). The stage's
identity is the codec's config, the data and ``vocoder.*`` (``identity.py``), so a vocoder is
shared by every stage that speaks the same tokens. A folder holds ``model.safetensors``,
``vocoder.json`` (its ``VocoderConfig``, vocabulary, hop), ``audio_tokenizer/`` (whose
fingerprint must equal a speaking stage's), ``config.yaml``, TensorBoard audio under ``tb/`` and
``metrics.json``. A codec with a decoder of its own (EnCodec) needs no vocoder: ``Voice`` uses it.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import filelock
import numpy as np
import torch

from zipper_pl.config import Config, VocoderConfig, save_config
from zipper_pl.config.components import TASKS
from zipper_pl.data.batches.aligned import tasks_of
from zipper_pl.data.corpora.audio import BadAudio, SkipCounter, load_record
from zipper_pl.data.corpora.manifest import read_manifest
from zipper_pl.data.modalities import load_units_tokenizer
from zipper_pl.data.prepare import audio_tokenizer, corpus_manifests
from zipper_pl.data.tokenizers.audio_tokenizers import AUDIO_TOKENIZER_DIR, AudioTokenizer
from zipper_pl.errors import UserError
from zipper_pl.io import atomic_write_json, copy_artefact, load_weights, read_json, save_weights
from zipper_pl.lit.vocoder import Clip, CropDataset, VocoderData, VocoderModule, clip_of
from zipper_pl.models.vocoder import UnitVocoder
from zipper_pl.runs.layout import (
    CONFIG,
    METRICS,
    WEIGHTS,
    claim_stage,
    is_finished,
    require_stage,
    stage_dir,
    stage_identity,
)
from zipper_pl.runs.trainer import LAST_CKPT, fit_unless_terminated, make_trainer

VOCODER_JSON = "vocoder.json"
VALID_CLIPS = 8  # whole validation utterances: the mel loss, and TensorBoard's audio samples


def hop_of(tok: AudioTokenizer) -> int:
    """Samples per token frame (320 for 50/s tokens at 16 kHz)."""
    hop = tok.sample_rate / tok.frame_rate
    if abs(hop - round(hop)) > 1e-6:
        raise UserError(f"audio.codec={tok.name}: {hop} samples per frame is not an integer")
    return round(hop)


def run_vocoder(cfg: Config) -> Path:
    """Train the unit vocoder of ``cfg``'s codec: its stage folder, trained now unless finished
    (the machine is the caller's to check)."""
    out = stage_dir(cfg, "vocoder")
    with claim_stage(out, "vocoder", stage_identity(cfg, "vocoder")) as todo:
        if todo:
            _train_vocoder(cfg, out)
    return out


def speech_clips(cfg: Config, tok: AudioTokenizer, pool: str, limit: int) -> list[Clip]:
    """A pool's utterances as (frame-level tokens, audio); unreadable files skipped, counted."""
    records = [r for r in read_manifest(corpus_manifests(cfg)[pool]) if r.audio]
    records = records[:limit] if limit else records
    hop, skips, clips = hop_of(tok), SkipCounter(), []
    for lo in range(0, len(records), 64):
        waves, ids = [], []
        for r in records[lo : lo + 64]:
            try:
                waves.append(load_record(r, tok.sample_rate, cfg.audio.max_seconds or None))
                ids.append(r.id)
            except BadAudio as e:
                skips.add_bad(r.id, e)
        for uid, units, wave in zip(ids, tok.encode_frames(waves), waves, strict=True):
            clips.append(clip_of(uid, units, wave, hop))
    skips.check(len(records), cfg.data.max_bad_share)
    print(f"[vocoder] {pool}: {len(clips)} utterances; skipped: {skips.summary() or 'none'}")
    return clips


def _train_vocoder(cfg: Config, out: Path) -> None:
    v = cfg.vocoder
    with filelock.FileLock(str(Path(cfg.data.cache_dir).with_suffix(".lock"))):
        tok, tok_folder = audio_tokenizer(cfg)
    if tok.decodes:
        raise UserError(f"audio.codec={tok.name} decodes audio itself: it needs no vocoder")
    out.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out / CONFIG)
    torch.manual_seed(cfg.seed)
    hop = hop_of(tok)
    clips = speech_clips(cfg, tok, "speech", v.max_utterances)
    train = CropDataset(clips, v.segment_frames, hop, v.dur_clips if tok.collapses_runs else 1)
    short = len(train.clips) - len({c for c, _ in train.items})
    print(f"[vocoder] {len(train)} crops of {v.segment_frames} frames; {short} utterances "
          "shorter than vocoder.segment_frames skipped")  # fmt: skip
    if len(train) < v.batch_size:
        raise UserError(f"{len(train)} training crops cannot fill vocoder.batch_size: add audio")
    valid = speech_clips(cfg, tok, "valid", VALID_CLIPS)
    module = VocoderModule(
        v, vocab_size=tok.vocab_size, hop=hop, sample_rate=tok.sample_rate,
        durations=tok.collapses_runs, unit_features=tok.feature_module(),
    )  # fmt: skip
    # the Trainer reads train.* and data.batch_size: the vocoder's own values, no clipping
    # (Vocos clips nothing), one validation of whole utterances every vocoder.val_every steps
    tcfg = dataclasses.replace(
        cfg,
        train=dataclasses.replace(
            cfg.train, max_steps=v.max_steps, val_every=v.val_every, accumulate=1, grad_clip=0.0
        ),
        data=dataclasses.replace(cfg.data, batch_size=v.batch_size, valid_batches=VALID_CLIPS),
    )
    trainer = make_trainer(tcfg, out, unused_parameters=True)  # discriminators before gan_from
    t0 = time.perf_counter()
    fit_unless_terminated(trainer, module, VocoderData(train, valid, tcfg), out / LAST_CKPT)
    fit_s = time.perf_counter() - t0
    if not trainer.is_global_zero:
        return
    metrics = {
        "stage": "vocoder",
        "codec": tok.name,
        "audio_fingerprint": tok.fingerprint(),
        "durations": tok.collapses_runs,
        "steps": trainer.global_step,
        "train_utterances": len(train.clips),
        "train_crops": len(train),
        "train_seconds": sum(len(c.wave) for c in train.clips) / tok.sample_rate,
        "val_loss": float(trainer.callback_metrics.get("val/loss", float("nan"))),
        "train_mel": float(trainer.callback_metrics.get("train/mel", float("nan"))),
        "params": sum(p.numel() for p in module.net.parameters()),
        "gan": module.gan,
        "fit_wall_s": fit_s,
        "precision": trainer.precision,
    }
    copy_artefact(tok_folder, out)
    atomic_write_json(
        out / VOCODER_JSON,
        {"config": dataclasses.asdict(v), "vocab_size": tok.vocab_size, "hop": hop},
    )
    atomic_write_json(out / METRICS, metrics)
    save_weights(module.net.state_dict(), out / WEIGHTS)  # last: marks the stage finished
    print(f"[vocoder] {out}\n{json.dumps(metrics, indent=2, default=float)}")


# ---- voicing tokens ----------------------------------------------------------------------------


@dataclasses.dataclass
class Voice:
    """Speech tokens -> float32 audio at ``sample_rate``: the codec's own decoder, or a trained
    vocoder (which expands deduplicated units by its predicted durations)."""

    tok: AudioTokenizer
    vocoder: UnitVocoder | None = None
    folder: Path | None = None

    @property
    def sample_rate(self) -> int:
        return self.tok.sample_rate

    def __call__(self, tokens: np.ndarray) -> np.ndarray:
        """float32 audio of one utterance's tokens; no tokens (a model that said nothing) are
        no samples."""
        if np.asarray(tokens).size == 0:
            return np.zeros(0, dtype=np.float32)
        if self.vocoder is None:
            return self.tok.decode(np.asarray(tokens))
        return self.vocoder.synthesize(tokens, expand=self.tok.collapses_runs)

    def frames(self, tokens: np.ndarray) -> np.ndarray:
        """One token per frame: deduplicated units repeated by their predicted durations."""
        units = np.asarray(tokens)
        if self.vocoder is None or not self.tok.collapses_runs:
            return units
        x = torch.as_tensor(
            self.vocoder.check_units(units), device=self.vocoder.embed.weight.device
        )
        return torch.repeat_interleave(x, self.vocoder.durations(x)).cpu().numpy()


def load_vocoder(folder: str | Path, tok: AudioTokenizer, device: str = "cpu") -> Voice:
    """The vocoder in ``folder`` for tokens of ``tok``, or a one-line error naming the fix when
    it was trained for other tokens."""
    folder = require_stage(folder, "vocoder", "inputs.vocoder (make: VOCODER=<folder>)")
    theirs = load_units_tokenizer(folder)
    if theirs.fingerprint() != tok.fingerprint():
        raise UserError(
            f"the vocoder in {folder} was trained for other speech tokens ({theirs.name} "
            f"{theirs.fingerprint()[:8]}, these are {tok.name} {tok.fingerprint()[:8]}): run "
            "`make vocoder` with this stage's codec settings, or set VOCODER to that folder"
        )
    saved = read_json(folder / VOCODER_JSON)
    net = UnitVocoder(VocoderConfig(**saved["config"]), vocab_size=saved["vocab_size"],
                      hop=saved["hop"])  # fmt: skip
    load_weights(net, folder / WEIGHTS)
    return Voice(tok, net.to(device).eval(), folder)


def find_vocoder(stage: Path, tok: AudioTokenizer, named: str = "") -> Path | None:
    """The vocoder a stage speaks through: ``named`` (``inputs.vocoder``) if given, else the
    newest finished vocoder folder beside the stage (the one its chain built) whose tokens are
    the stage's; None when there is none."""
    if named:
        return Path(named)
    candidates = sorted(stage.parent.glob("vocoder-*"), key=lambda p: p.stat().st_mtime)
    for folder in reversed(candidates):
        tokens_dir = folder / AUDIO_TOKENIZER_DIR
        if is_finished(folder) and tokens_dir.is_dir() and _same_tokens(folder, tok):
            return folder
    return None


def _same_tokens(folder: Path, tok: AudioTokenizer) -> bool:
    return load_units_tokenizer(folder).fingerprint() == tok.fingerprint()


def voice_for(stage: Path, tok: AudioTokenizer, named: str = "", device: str = "cpu") -> Voice:
    """How a stage's speech tokens become audio: the codec's decoder, or its vocoder (else a
    one-line error naming ``make vocoder``)."""
    if tok.decodes:
        return Voice(tok)
    folder = find_vocoder(stage, tok, named)
    if folder is None:
        raise UserError(
            f"no vocoder for {tok.name} tokens beside {stage}: run `make vocoder` (same SCALE, "
            "DATA, CODEC) or pass VOCODER=<vocoder stage folder> (inputs.vocoder)"
        )
    return load_vocoder(folder, tok, device)


def validation_voice(out: Path, toks: dict, cfg: Config) -> Voice | None:
    """How a TTS stage's validation samples are heard in TensorBoard: the vocoder beside it
    (a codec with a decoder needs none); None, said once, when there is none yet."""
    if not any(TASKS[t].speaks for t in tasks_of(cfg.data.task)):
        return None
    tok = next(t for t in toks.values() if isinstance(t, AudioTokenizer))
    try:
        return voice_for(out, tok)
    except UserError:
        print(f"[zip] no vocoder beside {out.parent} yet: TTS validation samples stay tokens "
              "(make vocoder first to hear them in TensorBoard)")  # fmt: skip
        return None
