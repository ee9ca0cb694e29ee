"""The Python API: ``zipper_pl.load(stage_folder)`` -> a model that transcribes audio files and
arrays, speaks text, and generates any output modality sequence.

    import zipper_pl
    model = zipper_pl.load("runs/demo-embedded/zipper-asr-units-...")
    model.transcribe(["a.wav", "b.flac"])          # -> ["the cat sat", ...]
    model.speak(["hello world"])[0].audio           # float32 waveform (.tokens: speech tokens)

Token budgets are automatic (``eval.max_new_text``; ``eval.max_new_speech_per_word`` x words),
audio at any sample rate is resampled to the codec's, stereo is down-mixed. Speech becomes
audio through the codec's decoder (EnCodec) or the unit vocoder (``units``, ``hubert``): the one
named by ``vocoder=`` / the stage's ``inputs.vocoder``, else the newest beside the stage for
the same tokens (``vocoding.voice_for``).
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from zipper_pl.data.corpora.audio import BadAudio, load_audio, resample, split_at_silences
from zipper_pl.data.modalities import MODALITIES
from zipper_pl.data.tokenizers.hf_tokenizer import HF_TEXT_DIR
from zipper_pl.errors import UserError
from zipper_pl.fitting.vocoding import Voice, voice_for
from zipper_pl.hub import is_hf_folder
from zipper_pl.models.choices import AUTO
from zipper_pl.models.hf_llama import export_hf_tower
from zipper_pl.models.sequences import Segment
from zipper_pl.results.listen import write_wav
from zipper_pl.runs.finetuned import Finetuned, load_finetuned

AudioInput = str | os.PathLike | np.ndarray


@dataclass
class Speech:
    """One spoken text: the speech tokens and their waveform (None only without a vocoder)."""

    tokens: np.ndarray
    audio: np.ndarray | None
    sample_rate: int


class Model:
    """A fine-tuned stage (Zipper or Single Decoder) behind three calls."""

    def __init__(self, ft: Finetuned, vocoder: str | os.PathLike = "") -> None:
        self.ft = ft
        self.sample_rate = ft.audio_tok.sample_rate
        self._vocoder = str(vocoder or ft.cfg.inputs.vocoder)
        self._voice: Voice | None = None

    @property
    def voice(self) -> Voice:
        """Speech tokens -> audio for this stage's codec (loaded on first use)."""
        if self._voice is None:
            device = str(next(self.ft.model.parameters()).device)
            self._voice = voice_for(self.ft.folder, self.ft.audio_tok, self._vocoder, device)
        return self._voice

    def _wave(self, audio: AudioInput, sample_rate: int | None) -> np.ndarray:
        if isinstance(audio, np.ndarray):
            if sample_rate is None:
                raise UserError("transcribe(arrays): pass sample_rate= (the arrays' rate in Hz)")
            wave = audio.mean(axis=-1) if audio.ndim == 2 else audio  # [T, C] -> [T]
            if wave.size == 0:
                raise UserError("transcribe: an audio array is empty: there is nothing to hear")
            if not np.isfinite(wave).all():
                raise UserError("transcribe: an audio array holds NaN or inf samples: fix it first")
            return resample(np.asarray(wave, dtype=np.float32), sample_rate, self.sample_rate)
        try:
            return load_audio(audio, self.sample_rate)
        except BadAudio as e:
            raise UserError(f"cannot read audio {audio}: {e}") from None

    def transcribe(
        self,
        audio: AudioInput | Sequence[AudioInput],
        sample_rate: int | None = None,
        batch_size: int = 32,
        chunk_seconds: float | None = None,
    ) -> list[str]:
        """Greedy ASR of audio files (any format soundfile reads) or float arrays at
        ``sample_rate``; batched, KV-cached. Audio longer than ``chunk_seconds`` (default: the
        most the model reads at once) is cut at its quietest moments into chunks, transcribed
        and joined: a model fine-tuned on short utterances reads best near their length."""
        items = [audio] if isinstance(audio, str | os.PathLike | np.ndarray) else list(audio)
        tok, longest = self.ft.audio_tok, self.longest_input()
        hop = round(self.sample_rate / tok.frame_rate)  # samples per (undeduplicated) token
        most = longest * hop if chunk_seconds is None else round(chunk_seconds * self.sample_rate)
        if most < 4 * hop:
            raise UserError(f"transcribe: chunk_seconds={chunk_seconds} is shorter than 4 tokens")
        chunks = [split_at_silences(self._wave(a, sample_rate), most, hop) for a in items]
        # a chunk still too long in tokens (a codec without pauses): equal parts that fit
        pieces = [
            [p for t in tok.encode(c) for p in np.array_split(t, max(1, -(-len(t) // longest)))]
            for c in chunks
        ]
        for item, p in zip(items, pieces, strict=True):
            if len(p) > 1:
                name = item if not isinstance(item, np.ndarray) else "an array"
                print(f"[transcribe] {name}: {sum(map(len, p))} speech tokens in {len(p)} "
                      "chunks, cut at pauses", file=sys.stderr)  # fmt: skip
        flat = [c for p in pieces for c in p]
        texts = iter(self.ft.transcribe(flat, batch_size, self.ft.cfg.eval.max_new_text))
        return [" ".join(t for t in (next(texts) for _ in p) if t) for p in pieces]

    def longest_input(self) -> int:
        """The most speech tokens one transcription reads: its input fits the speech tower and
        leaves the text budget (``eval.max_new_text``) room (``budget_cap``)."""
        model, want = self.ft.model, self.ft.cfg.eval.max_new_text
        lo, hi = 1, model.tower_for("speech").cfg.max_seq_len - 2
        while lo < hi:  # the largest input length whose text budget is still the full one
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if model.budget_cap("text", mid) >= want else (lo, mid - 1)
        return lo

    def speak(
        self,
        texts: str | Sequence[str],
        temperature: float = 0.0,
        seed: int | None = None,
        batch_size: int = 32,
    ) -> list[Speech]:
        """TTS: speech tokens and their waveform per text (greedy unless ``temperature`` > 0).
        Without a vocoder for the codec the tokens come back with ``audio=None`` and the
        console says why once."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        blank = [i for i, t in enumerate(texts) if not t.strip()]
        if blank:
            raise UserError(f"speak: text {blank[0]} is empty: there is nothing to say")
        per_word = self.ft.cfg.eval.max_new_speech_per_word
        budgets = [math.ceil(per_word * max(1, len(t.split()))) for t in texts]
        tokens = self.ft.speak(texts, budgets, batch_size, temperature, None, seed)
        return [Speech(t, self._decode(t), self.sample_rate) for t in tokens]

    def _decode(self, tokens: np.ndarray) -> np.ndarray | None:
        try:
            return self.voice(tokens)
        except UserError as e:
            if not getattr(self, "_said_no_audio", False):
                print(f"[speak] no audio: {e}", file=sys.stderr)
                self._said_no_audio = True
            return None

    @torch.no_grad()
    def generate(
        self,
        inputs: Sequence[Sequence[tuple[str, Sequence[int]]]],
        output_modalities: Sequence[str] | str,
        temperature: float = 0.0,
        seed: int | None = None,
    ) -> list[list[tuple[str, list[int]]]]:
        """Continue each sample's ``(modality, token ids)`` segments with one segment per output
        modality, in order (the paper's section 3.2); budgets per modality are automatic.
        ``"auto"``: the model chooses the modalities (a stage zipped with zip.choose_output)."""
        device = next(self.ft.model.parameters()).device
        batch = [
            [
                Segment(m, torch.as_tensor(list(ids), dtype=torch.long, device=device))
                for m, ids in s
            ]
            for s in inputs
        ]
        auto = output_modalities == AUTO
        if isinstance(output_modalities, str) and not auto:
            raise UserError(
                f"output_modalities={output_modalities!r}: give a list, e.g. "
                f"[{output_modalities!r}], or 'auto' to let the model choose"
            )
        wanted = list(self.ft.model.specs) if auto else list(output_modalities)
        unknown = sorted(set(wanted) - set(MODALITIES))
        if unknown:
            raise UserError(f"output modalities {unknown}: known are {', '.join(MODALITIES)}")
        longest: dict[str, int] = {}
        for s in inputs:
            for m, ids in s:
                longest[m] = max(longest.get(m, 0), len(ids))
        budgets = {m: MODALITIES[m].budget(self.ft.cfg, longest) for m in wanted}
        out = self.ft.model.generate(
            batch, AUTO if auto else wanted, budgets, temperature=temperature, seed=seed
        )
        return [[(seg.modality, seg.tokens.tolist()) for seg in sample] for sample in out]

    def export_hf(self, out: str | os.PathLike) -> Path:
        """Write the (fine-tuned) text tower as a Hugging Face model folder, with its config and
        tokenizer, when it was imported from one (``TEXT_TOWER=hf:...``)."""
        side = self.ft.folder / HF_TEXT_DIR
        if not is_hf_folder(side):
            raise UserError(
                f"{self.ft.folder}: its text tower was not imported from Hugging Face "
                "(TEXT_TOWER=hf:...), so there is no HF layout to export to"
            )
        model = self.ft.model
        tower = model.towers["text"] if hasattr(model, "towers") else model.tower
        return export_hf_tower(tower, side, out)


def load(
    stage_folder: str | os.PathLike,
    device: str | torch.device = "cpu",
    vocoder: str | os.PathLike = "",
) -> Model:
    """A fine-tuned stage folder (a ``zip`` or ``finetune`` stage), ready to use; ``vocoder``:
    the vocoder stage folder its speech is voiced with (default: see the module doc)."""
    return Model(load_finetuned(Path(stage_folder), device), vocoder)


def speak_to_file(stage: str, text: str, options: dict) -> str:
    """``python -m zipper_pl speak STAGE TEXT -o out.wav``: one 16-bit wav; what was written."""
    model = load(stage, vocoder=options.get("vocoder", ""))
    out = Path(options.get("out", "speech.wav"))
    model.voice  # noqa: B018 (first: without a vocoder, the one-line error before any work)
    (speech,) = model.speak([text], options.get("temperature", 0.0), options.get("seed"))
    audio = speech.audio
    write_wav(out, audio, model.sample_rate)
    seconds = len(audio) / model.sample_rate
    return f"{out}: {seconds:.2f} s at {model.sample_rate} Hz ({len(speech.tokens)} speech tokens)"
