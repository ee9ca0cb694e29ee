"""Name -> builder tables. Plain dicts: add an entry to add a size, a codec, a corpus or a
fine-tuned architecture; nothing outside a table branches on these names."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, fields

from zipper_pl.config import Config, ModelConfig
from zipper_pl.data.corpora.readers import CORPUS_READERS
from zipper_pl.data.tokenizers.audio_tokenizers import AUDIO_TOKENIZERS
from zipper_pl.errors import UserError
from zipper_pl.models.generation import FinetunedModel
from zipper_pl.models.sequences import ModalitySpec
from zipper_pl.models.single import SingleDecoder
from zipper_pl.models.tower import TOWER_PRESETS, Tower, TowerConfig, tower_config
from zipper_pl.models.zipper import ZipperModel

# Tower sizes: name -> builder(vocab_size, **field overrides) -> Tower
TOWERS: dict[str, Callable[..., Tower]] = {
    name: (lambda vocab_size, _name=name, **kw: Tower(tower_config(_name, vocab_size, **kw)))
    for name in TOWER_PRESETS
}


@dataclass(frozen=True)
class Arch:
    """A fine-tuned architecture (``arch=NAME``): its builder and the config keys it reads."""

    build: Callable[[Config, dict[str, Tower], dict[str, ModalitySpec]], FinetunedModel]
    zipped: bool  # reads zip.* (freeze, placement, alignment prior); else every weight trains
    lr_key: str  # the train.* key with its peak learning rate (0 there = train.lr)
    label: str  # its name in tables


def _single(cfg: Config, towers: dict[str, Tower], specs: dict[str, ModalitySpec]):
    # the text tower's vocabulary extended by every other modality's, in zip.towers order
    others = [spec for m, spec in specs.items() if m != "text"]
    return SingleDecoder.from_text_tower(towers["text"], [specs["text"], *others], cfg.seed)


# in the paper's table order: the baseline first
ARCHS: dict[str, Arch] = {
    "single": Arch(_single, zipped=False, lr_key="single_lr", label="Single Decoder"),
    "zipper": Arch(
        lambda cfg, towers, specs: ZipperModel(cfg.zip, towers, specs),
        zipped=True,
        lr_key="lr",
        label="Zipper",
    ),
}


def build_model(cfg: Config, towers: dict[str, Tower], specs: dict[str, ModalitySpec]):
    """The fine-tuned model ``cfg.arch`` names, from its pretrained towers."""
    if cfg.zip.choose_output and not ARCHS[cfg.arch].zipped:
        raise UserError(
            f"zip.choose_output needs a zipped architecture (arch=zipper), not arch={cfg.arch}: "
            "drop zip.choose_output=true"
        )
    return ARCHS[cfg.arch].build(cfg, towers, specs)


def frozen_towers(cfg: Config) -> str:
    """What stays frozen, as stage names and tables write it (``none`` for a model that
    fine-tunes every weight)."""
    return cfg.zip.freeze if ARCHS[cfg.arch].zipped else "none"


def uses_align_prior(cfg: Config) -> bool:
    return ARCHS[cfg.arch].zipped and bool(cfg.zip.align_prior)


def peak_lr(cfg: Config) -> float:
    return getattr(cfg.train, ARCHS[cfg.arch].lr_key) or cfg.train.lr


__all__ = [
    "ARCHS",
    "AUDIO_TOKENIZERS",
    "CORPUS_READERS",
    "TOWERS",
    "Arch",
    "build_model",
    "frozen_towers",
    "peak_lr",
    "resolve_tower_config",
    "uses_align_prior",
]


def resolve_tower_config(model: ModelConfig, vocab_size: int) -> TowerConfig:
    """The size preset with every non-zero ``model.*`` field applied on top."""
    if model.size not in TOWER_PRESETS:
        raise UserError(f"model.size={model.size!r} is not registered: {', '.join(TOWER_PRESETS)}")
    names = {f.name for f in fields(TowerConfig)}
    overrides = {
        f.name: getattr(model, f.name)
        for f in fields(ModelConfig)
        if f.name in names and getattr(model, f.name)
    }
    return tower_config(model.size, vocab_size, **overrides)


def needs_vocoder(cfg: Config) -> bool:
    """Whether an evaluation with ``cfg`` voices TTS through a trained vocoder: it scores audio
    (``eval.tts_asr``) and the codec has no decoder of its own."""
    return cfg.eval.tts_asr != "none" and not AUDIO_TOKENIZERS[cfg.audio.codec].decodes
