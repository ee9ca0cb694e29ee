"""The modalities, declared: how a modality's tokenizer ids become its tower's vocabulary (with
bos / eos / pad), what its pretraining stage reads, and how that stage is named. A plain dict:
a new modality is an entry here, its corpus reader and its config block; nothing outside this
table branches on a modality's name to build a vocabulary or a pretraining corpus.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from zipper_pl.config import Config, load_config
from zipper_pl.data.batches.aligned import store_encoder
from zipper_pl.data.corpora.manifest import Record
from zipper_pl.data.corpora.phonemes import PHONEME_TOKENIZER_FILE, PhonemeTokenizer
from zipper_pl.data.prepare import (
    audio_store,
    audio_tokenizer,
    phoneme_tokenizer,
    prepare_aligned,
    text_store,
    text_tokenizer,
)
from zipper_pl.data.tokenizers.audio_tokenizers import AUDIO_TOKENIZER_DIR, AudioTokenizer
from zipper_pl.data.tokenizers.hf_tokenizer import load_text_tokenizer
from zipper_pl.data.tokens.store import LMData, TokenStore
from zipper_pl.io import copy_artefact
from zipper_pl.models.sequences import ModalitySpec

CONFIG_FILE = "config.yaml"  # a stage folder's resolved config (layout.CONFIG, a layer above)
Encoder = Callable[[Sequence[Record]], list[np.ndarray | None]]


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


def phonemes_lm_data(cfg: Config) -> LMData:
    tok = phoneme_tokenizer(cfg)
    train, valid = text_store(cfg, tok, "text"), text_store(cfg, tok, "valid")
    _show_unknown(tok, "the pretraining text")
    return _lm_data(text_spec(cfg.modality, tok), train, valid, [tok.path], {})


def _show_unknown(tok: Any, what: str) -> None:
    if getattr(tok, "unknown", 0):
        print(f"[phonemes] {tok.unknown} phoneme(s) of {what} are not in the tower's symbol "
              "table: encoded as <unk>")  # fmt: skip
        tok.unknown = 0


def load_units_tokenizer(folder: Path) -> AudioTokenizer:
    return AudioTokenizer.load(folder / AUDIO_TOKENIZER_DIR)


def load_phoneme_tokenizer(folder: Path) -> PhonemeTokenizer:
    """The folder's symbol table, with the espeak-ng language its stage was configured with."""
    return PhonemeTokenizer(
        folder / PHONEME_TOKENIZER_FILE, load_config(folder / CONFIG_FILE).phonemes.voice
    )


def copy_units_tokenizer(tok: AudioTokenizer, folder: Path, out: Path) -> None:
    copy_artefact(folder / AUDIO_TOKENIZER_DIR, out)  # as fitted (k-means centroids included)


def copy_file_tokenizer(tok: Any, folder: Path, out: Path) -> None:
    tok.copy_to(out)


def transcript_tokens(cfg: Config, tok: Any, pool: str) -> Encoder:
    """A pool's transcripts through the modality's tokenizer (text, phonemes)."""

    def encode(records: Sequence[Record]) -> list[np.ndarray | None]:
        ids = tok.encode([r.text for r in records])
        _show_unknown(tok, f"the {pool} transcripts")
        return ids

    return encode


def audio_tokens(cfg: Config, tok: Any, pool: str) -> Encoder:
    """A pool's cached audio tokens (tokenized now where missing; bad files counted)."""
    return store_encoder(audio_store(cfg, tok, pool, need_transcript=True))


@dataclass(frozen=True)
class Modality:
    """One modality: its vocabulary rule, pretraining data, stage-name tag and the tokenizer a
    stage folder (its pretraining stage, or a zipped stage) holds."""

    spec: Callable[[str, Any], ModalitySpec]  # (name, tokenizer) -> tower vocabulary
    lm_data: Callable[[Config], LMData]  # what ``pretrain`` with ``modality=NAME`` trains on
    tag: Callable[[Config], str]  # the pretraining folder's name part
    load: Callable[[Path], Any]  # stage folder -> its tokenizer
    save: Callable[[Any, Path, Path], None]  # (tokenizer, its stage folder, another stage
    # folder): copies what ``load`` reads back
    pair_tokens: Callable[[Config, Any, str], Encoder]  # (cfg, tokenizer, pool) -> an aligned
    # pair's token arrays of this modality
    budget: Callable[[Config, Mapping[str, int]], int]  # (cfg, longest input segment per
    # modality) -> the new tokens a generated segment of this modality may take
    from_hub: bool = False  # a Hugging Face model can be this modality's tower
    make_var: str = ""  # how make names its tower folder; "" = ARGS="inputs.<name>=<folder>"


MODALITIES: dict[str, Modality] = {
    "text": Modality(
        spec=text_spec,
        lm_data=text_lm_data,
        tag=lambda cfg: "text",
        load=load_text_tokenizer,
        save=copy_file_tokenizer,
        pair_tokens=transcript_tokens,
        budget=lambda cfg, longest: cfg.eval.max_new_text,
        from_hub=True,
        make_var="TEXT_TOWER=<folder> or hf:<hub id or folder>",
    ),
    "speech": Modality(
        spec=units_spec,
        lm_data=speech_lm_data,
        # the codec names the stage: towers of different codecs never share a folder name
        tag=lambda cfg: f"speech-{cfg.audio.codec}",
        load=load_units_tokenizer,
        save=copy_units_tokenizer,
        pair_tokens=audio_tokens,
        # per word of the text it says (text tokens stand in for words; 8 without a text)
        budget=lambda cfg, longest: math.ceil(
            cfg.eval.max_new_speech_per_word * longest.get("text", 8)
        ),
        make_var="SPEECH_TOWER=<folder>",
    ),
    "phonemes": Modality(
        spec=text_spec,
        lm_data=phonemes_lm_data,
        tag=lambda cfg: f"phonemes-{cfg.phonemes.voice}",
        load=load_phoneme_tokenizer,
        save=copy_file_tokenizer,
        pair_tokens=transcript_tokens,
        # ~3-5x a subword transcript, as Task.budgets gives a phoneme output before the text
        budget=lambda cfg, longest: 4 * cfg.eval.max_new_text,
    ),
}


def prepare_pretraining(cfg: Config) -> LMData:
    """The token streams of the modality ``cfg.modality`` names (train and valid)."""
    return MODALITIES[cfg.modality].lm_data(cfg)


def load_tokenizers(folders: Mapping[str, Path]) -> dict[str, Any]:
    """{modality: the tokenizer its stage folder holds}, in the order of ``folders``."""
    return {m: MODALITIES[m].load(Path(f)) for m, f in folders.items()}


def prepare_pairs(cfg: Config, tokenizers: Mapping[str, Any], max_total: int) -> dict:
    """Aligned train / valid / test pairs carrying a token array of every modality in
    ``tokenizers`` (``data.prepare.prepare_aligned``)."""

    def encoders_of(pool: str) -> dict[str, Encoder]:
        return {m: MODALITIES[m].pair_tokens(cfg, tok, pool) for m, tok in tokenizers.items()}

    return prepare_aligned(cfg, encoders_of, max_total)


def copy_tokenizers(tokenizers: Mapping[str, Any], folders: Mapping[str, Path], out: Path) -> None:
    """Every modality's tokenizer, loaded from ``folders[m]``, into the stage folder ``out``
    (where ``load_tokenizers`` finds them)."""
    for m, tok in tokenizers.items():
        MODALITIES[m].save(tok, Path(folders[m]), out)


def modality_specs(tokenizers: dict[str, Any]) -> dict[str, ModalitySpec]:
    """{modality: its tower vocabulary} from {modality: its tokenizer}."""
    return {m: MODALITIES[m].spec(m, tok) for m, tok in tokenizers.items()}
