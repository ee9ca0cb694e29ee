"""The modalities, declared: how a modality's tokenizer ids become its tower's vocabulary (with
bos / eos / pad), what its pretraining stage reads, and how that stage is named. A plain dict:
a new modality is an entry here, its corpus reader and its config block; nothing outside this
table branches on a modality's name to build a vocabulary or a pretraining corpus.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from zipper_pl.config import Config
from zipper_pl.data.audio_tokenizers import AUDIO_TOKENIZER_DIR, AudioTokenizer
from zipper_pl.data.hf_tokenizer import load_text_tokenizer
from zipper_pl.data.lm_datamodule import LMData
from zipper_pl.data.prepare import audio_store, audio_tokenizer, text_store, text_tokenizer
from zipper_pl.data.store import TokenStore
from zipper_pl.models.sequences import ModalitySpec


def text_spec(name: str, tok: Any) -> ModalitySpec:
    """A text tokenizer's own ids, bos, eos and pad (SentencePiece or a Hugging Face one)."""
    return ModalitySpec(name, tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id)


def units_spec(name: str, tok: Any) -> ModalitySpec:
    """K discrete units (codec codes, HuBERT clusters) + begin/end-of-audio; pad = end."""
    k = tok.vocab_size
    return ModalitySpec(name, k + 2, k, k + 1, k + 1)


def _lm_data(spec: ModalitySpec, train, valid, artefacts, info: dict) -> LMData:
    store = TokenStore(train)
    info = {"train_utterances": len(store), "train_tokens": store.total_tokens, **info}
    return LMData(
        vocab_size=spec.vocab_size,
        bos_id=spec.bos_id,
        eos_id=spec.eos_id,
        train_store=train,
        valid_store=valid,
        artefacts=artefacts,
        info=info,
    )


def text_lm_data(cfg: Config) -> LMData:
    tok = text_tokenizer(cfg)
    train, valid = text_store(cfg, tok, "text"), text_store(cfg, tok, "valid")
    return _lm_data(text_spec(cfg.modality, tok), train, valid, [tok.path], {})


def speech_lm_data(cfg: Config) -> LMData:
    tok, folder = audio_tokenizer(cfg)
    train, valid = audio_store(cfg, tok, "speech"), audio_store(cfg, tok, "valid")
    info = {"audio_vocab": tok.vocab_size, "frame_rate": tok.frame_rate}
    return _lm_data(units_spec(cfg.modality, tok), train, valid, [folder], info)


def load_units_tokenizer(folder: Path) -> AudioTokenizer:
    return AudioTokenizer.load(folder / AUDIO_TOKENIZER_DIR)


@dataclass(frozen=True)
class Modality:
    """One modality: its vocabulary rule, pretraining data, stage-name tag and the tokenizer a
    stage folder (its pretraining stage, or a zipped stage) holds."""

    spec: Callable[[str, Any], ModalitySpec]  # (name, tokenizer) -> tower vocabulary
    lm_data: Callable[[Config], LMData]  # what ``pretrain`` with ``modality=NAME`` trains on
    tag: Callable[[Config], str]  # the pretraining folder's name part
    load: Callable[[Path], Any]  # stage folder -> its tokenizer


MODALITIES: dict[str, Modality] = {
    "text": Modality(text_spec, text_lm_data, lambda cfg: "text", load_text_tokenizer),
    # the codec names the speech stage: towers of different codecs never share a folder name
    "speech": Modality(
        units_spec, speech_lm_data, lambda cfg: f"speech-{cfg.audio.codec}", load_units_tokenizer
    ),
}


def prepare_pretraining(cfg: Config) -> LMData:
    """The token streams of the modality ``cfg.modality`` names (train and valid)."""
    return MODALITIES[cfg.modality].lm_data(cfg)


def load_tokenizers(folders: Mapping[str, Path]) -> dict[str, Any]:
    """{modality: the tokenizer its stage folder holds}, in the order of ``folders``."""
    return {m: MODALITIES[m].load(Path(f)) for m, f in folders.items()}


def modality_specs(tokenizers: dict[str, Any]) -> dict[str, ModalitySpec]:
    """{modality: its tower vocabulary} from {modality: its tokenizer}."""
    return {m: MODALITIES[m].spec(m, tok) for m, tok in tokenizers.items()}
