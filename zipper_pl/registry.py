"""Name -> builder tables. Plain dicts: add an entry to add a size, a codec or a corpus."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import fields

from zipper_pl.config import ModelConfig
from zipper_pl.data.audio_tokenizers import AUDIO_TOKENIZERS
from zipper_pl.data.readers import CORPUS_READERS
from zipper_pl.errors import UserError
from zipper_pl.models.tower import TOWER_PRESETS, Tower, TowerConfig, tower_config

# Tower sizes: name -> builder(vocab_size, **field overrides) -> Tower
TOWERS: dict[str, Callable[..., Tower]] = {
    name: (lambda vocab_size, _name=name, **kw: Tower(tower_config(_name, vocab_size, **kw)))
    for name in TOWER_PRESETS
}

__all__ = ["AUDIO_TOKENIZERS", "CORPUS_READERS", "TOWERS", "resolve_tower_config"]


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
