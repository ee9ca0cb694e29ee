"""Speech recognisers that turn TTS audio into transcripts, as the Zipper paper scores TTS.

Every recogniser has one interface, ``transcribe(waves, sample_rate) -> transcripts`` (lower
case, single spaces), and is named by a spec (``eval.tts_asr``):

- ``judge``: the judge ASR (``models.judge``) on the audio re-tokenized by the codec. The demo
  world's closed-vocabulary recogniser: it knows every word of the corpus and nothing else, so it
  measures the TTS without spelling or out-of-vocabulary noise, but it was trained here.
- ``pocketsphinx``: an offline English recogniser written by nobody here (its wheel ships the
  acoustic model, dictionary and LM). Good on natural English voices, poor on espeak's formant
  voice, so on the demo world it is a sanity check, not a score to compare with the paper.
- ``hf:<hub id or folder>``: a transformers ASR model, Whisper (or any speech seq2seq model) or a
  CTC model (wav2vec2, HuBERT): what real corpora are scored with.

Empty and non-finite waves (a failed vocoding) transcribe to "" without reaching the model, and
are counted in ``skipped``, which callers report: such an utterance scores as all deletions.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from transformers import (
    AutoConfig,
    AutoModelForCTC,
    AutoModelForSpeechSeq2Seq,
    AutoProcessor,
)
from transformers.models.auto.modeling_auto import MODEL_FOR_CTC_MAPPING_NAMES

from zipper_pl.data.corpora.audio import resample
from zipper_pl.errors import UserError

try:  # a declared dependency, but only the "pocketsphinx" recogniser needs it
    import pocketsphinx
except ImportError:  # pragma: no cover - depends on the environment
    pocketsphinx = None

KEY = "eval.tts_asr"
CHOICES = "judge, pocketsphinx, hf:<hub id or folder>"
SPHINX_RATE = 16000  # the rate of the en-us acoustic model the pocketsphinx wheel ships


class Recognizer(Protocol):
    name: str  # the spec it was built from, e.g. "judge", "hf:openai/whisper-small"
    skipped: int  # empty or non-finite waves seen so far (transcribed to "")

    def transcribe(self, waves: list[np.ndarray], sample_rate: int) -> list[str]: ...


def _clean(text: str) -> str:
    return " ".join(text.lower().split())  # WER compares words: case and spacing are noise


class _Base:
    """Filters unusable waves, then hands the rest to ``_run`` (resampling is ``_run``'s)."""

    name: str
    skipped: int = 0

    def transcribe(self, waves: list[np.ndarray], sample_rate: int) -> list[str]:
        out = [""] * len(waves)
        keep: list[int] = []
        arrays: list[np.ndarray] = []
        for i, wave in enumerate(waves):
            a = np.asarray(wave, dtype=np.float32)
            if a.ndim != 1:
                raise ValueError(f"{self.name}: wave {i} has shape {a.shape}, expected 1-D mono")
            if a.size == 0 or not np.isfinite(a).all():  # NaN/inf would poison a padded batch
                self.skipped += 1
                continue
            keep.append(i)
            arrays.append(a)
        if arrays:
            for i, text in zip(keep, self._run(arrays, sample_rate), strict=True):
                out[i] = _clean(text)
        return out

    def _run(self, waves: list[np.ndarray], sample_rate: int) -> list[str]:
        raise NotImplementedError


class JudgeRecognizer(_Base):
    """The judge on the codec's tokens of the audio: what the TTS "sounds like" to the judge."""

    name = "judge"

    def __init__(self, judge: Any, judge_tok: Any, batch_size: int = 32) -> None:
        self.judge, self.tok, self.batch_size = judge, judge_tok, batch_size
        self.skipped = 0

    def _run(self, waves: list[np.ndarray], sample_rate: int) -> list[str]:
        rate = int(self.tok.sample_rate)
        tokens = self.tok.encode([resample(w, sample_rate, rate) for w in waves])
        arrays = [np.asarray(t, dtype=np.int64) for t in tokens]
        return list(self.judge.transcribe(arrays, batch_size=self.batch_size))


class PocketSphinxRecognizer(_Base):
    """CMU PocketSphinx 5 with its bundled en-us model, one utterance at a time."""

    name = "pocketsphinx"

    def __init__(self) -> None:
        if pocketsphinx is None:
            raise UserError(f"{KEY}=pocketsphinx needs its package: pip install pocketsphinx")
        self._decoder: Any = None  # built on first use: loading the model takes ~0.5 s
        self.skipped = 0

    def _run(self, waves: list[np.ndarray], sample_rate: int) -> list[str]:
        if self._decoder is None:  # defaults: the wheel's en-us acoustic model, LM and dict
            self._decoder = pocketsphinx.Decoder(samprate=SPHINX_RATE, loglevel="FATAL")
        out = []
        for wave in waves:
            pcm = np.clip(resample(wave, sample_rate, SPHINX_RATE), -1.0, 1.0)
            buf = (pcm * 32767.0).astype("<i2").tobytes()  # 16-bit little-endian raw audio
            self._decoder.start_utt()
            # full_utt: the whole utterance at once, so cepstral mean normalisation sees all of it
            self._decoder.process_raw(buf, full_utt=True)
            self._decoder.end_utt()
            hyp = self._decoder.hyp()
            out.append(hyp.hypstr if hyp else "")
        return out


def _load_error(spec: str, why: str) -> UserError:
    return UserError(
        f"{KEY}={spec}: {why}; pass hf:<hub id> (e.g. hf:openai/whisper-small) or hf:<folder> "
        "with config.json, weights and the processor files"
    )


class HFRecognizer(_Base):
    """A transformers ASR model: CTC (greedy argmax) or speech seq2seq (``generate``)."""

    def __init__(self, spec: str, batch_size: int = 32, device: str | torch.device = "cpu") -> None:
        self.name, self.batch_size, self.device = spec, batch_size, torch.device(device)
        self.skipped = 0
        source = spec.partition(":")[2]
        if not source:
            raise _load_error(spec, "no model named after 'hf:'")
        local = source.startswith(("/", ".", "~"))  # a path, never a hub id
        if local and not Path(source).expanduser().is_dir():
            raise _load_error(spec, f"no such folder {source}")
        if local:
            source = str(Path(source).expanduser())
        try:  # the library's normal loading: a hub id downloads (or uses the cache), a folder reads
            cfg = AutoConfig.from_pretrained(source)
            # the saved head decides; a config that names none falls back to its model type
            archs = cfg.architectures or []
            ctc_type = cfg.model_type in MODEL_FOR_CTC_MAPPING_NAMES
            self.ctc = any(a.endswith("ForCTC") for a in archs) if archs else ctc_type
            auto = AutoModelForCTC if self.ctc else AutoModelForSpeechSeq2Seq
            self.model = auto.from_pretrained(source).to(self.device).eval()
            self.processor = AutoProcessor.from_pretrained(source)
        except OSError as e:
            raise _load_error(spec, f"does not load ({_first_line(e)})") from None
        except ValueError as e:  # the config is no CTC or speech-to-text model (e.g. a bare LM)
            raise _load_error(
                spec, f"is no CTC or speech seq2seq model ({_first_line(e)})"
            ) from None
        self.rate = int(self.processor.feature_extractor.sampling_rate)

    @torch.no_grad()
    def _run(self, waves: list[np.ndarray], sample_rate: int) -> list[str]:
        waves = [resample(w, sample_rate, self.rate) for w in waves]
        order = sorted(range(len(waves)), key=lambda i: len(waves[i]))  # less padding per batch
        out = [""] * len(waves)
        for start in range(0, len(order), self.batch_size):
            idx = order[start : start + self.batch_size]
            batch = [waves[i] for i in idx]
            if self.ctc:  # padding=True: CTC extractors do not pad by default
                inputs = self.processor(
                    batch, sampling_rate=self.rate, return_tensors="pt", padding=True
                ).to(self.device)
                ids = self.model(**inputs).logits.argmax(dim=-1)
            else:  # the extractor's own padding: Whisper wants its fixed 30 s of features
                inputs = self.processor(batch, sampling_rate=self.rate, return_tensors="pt")
                ids = self.model.generate(**inputs.to(self.device))
            texts = self.processor.batch_decode(ids.cpu(), skip_special_tokens=True)
            for i, text in zip(idx, texts, strict=True):
                out[i] = text
        return out


def _first_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def _no_argument(spec: str) -> None:
    if ":" in spec:  # "judge:x" is a typo of something, not a judge with an argument
        raise UserError(f"{KEY}={spec}: '{spec.split(':')[0]}' takes no ':' argument")


def _make_judge(spec: str, *, judge: Any, judge_tok: Any, batch_size: int, **_: Any) -> Recognizer:
    _no_argument(spec)
    if judge is None or judge_tok is None:
        raise UserError(
            f"{KEY}=judge needs a trained judge and its audio tokenizer: train the judge stage "
            "first, or pick another recogniser (pocketsphinx, hf:<hub id or folder>)"
        )
    return JudgeRecognizer(judge, judge_tok, batch_size=batch_size)


def _make_sphinx(spec: str, **_: Any) -> Recognizer:
    _no_argument(spec)
    return PocketSphinxRecognizer()


def _make_hf(spec: str, *, batch_size: int, device: str | torch.device, **_: Any) -> Recognizer:
    return HFRecognizer(spec, batch_size=batch_size, device=device)


# spec prefix (before any ':') -> factory(spec, judge=, judge_tok=, batch_size=, device=)
RECOGNIZERS: dict[str, Callable[..., Recognizer]] = {
    "judge": _make_judge,
    "pocketsphinx": _make_sphinx,
    "hf": _make_hf,
}


def build_recognizer(
    spec: str,
    *,
    judge: Any = None,
    judge_tok: Any = None,
    batch_size: int = 32,
    device: str | torch.device = "cpu",
) -> Recognizer:
    """The recogniser ``spec`` names; ``judge`` / ``judge_tok`` are needed by ``judge`` only
    (which runs where the judge already is: ``device`` is for ``hf:`` models)."""
    make = RECOGNIZERS[check_spec(spec)]
    return make(spec, judge=judge, judge_tok=judge_tok, batch_size=batch_size, device=device)


def check_spec(spec: str) -> str:
    """The registry key of ``spec``, or a one-line error: before any training, not after it."""
    key = spec.split(":", 1)[0]
    if key not in RECOGNIZERS:
        raise UserError(f"{KEY}={spec!r} is no recogniser: pick one of {CHOICES} (or none)")
    return key
