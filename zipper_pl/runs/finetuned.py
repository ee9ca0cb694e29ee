"""Save and load fine-tuned models (any architecture in ``registry.ARCHS``: the Zipper, the single
decoder) and their stage folders, and the pretrained towers they start from (``load_tower``).

A zipped stage folder holds everything needed to use the model: ``model.safetensors``,
``config.yaml``, ``towers.json`` (tower configs, one per modality) and each modality's tokenizer
(``text_tokenizer.model``, ``audio_tokenizer/``, ``phoneme_tokenizer.json``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from zipper_pl.config import Config, load_config
from zipper_pl.config.components import TASKS
from zipper_pl.data.batches.aligned import transcribing_task
from zipper_pl.data.corpora.text import TextTokenizer
from zipper_pl.data.modalities import load_tokenizers, modality_specs
from zipper_pl.data.tokenizers.audio_tokenizers import AudioTokenizer
from zipper_pl.data.tokenizers.hf_tokenizer import HFTextTokenizer
from zipper_pl.errors import UserError
from zipper_pl.hub import is_hf_folder
from zipper_pl.io import atomic_write_json, load_weights, read_json
from zipper_pl.models.generation import FinetunedModel
from zipper_pl.models.hf_llama import load_hf_tower
from zipper_pl.models.sequences import ModalitySpec, Segment
from zipper_pl.models.tower import Tower, TowerConfig
from zipper_pl.registry import build_model
from zipper_pl.runs.layout import TOWER_JSON, WEIGHTS, require_stage

TOWERS_JSON = "towers.json"


@dataclass
class Finetuned:
    """A loaded fine-tuned stage: model + tokenizers + config."""

    model: FinetunedModel
    cfg: Config
    specs: dict[str, ModalitySpec]
    tokenizers: dict[str, Any]  # {modality: its tokenizer}, one per tower
    folder: Path

    @property
    def text_tok(self) -> TextTokenizer | HFTextTokenizer:
        return self.tokenizers["text"]

    @property
    def audio_tok(self) -> AudioTokenizer:
        return self.tokenizers["speech"]

    def decode_text(self, ids: list[int]) -> str:
        return self.text_tok.decode(ids)

    @torch.no_grad()
    def transcribe(
        self,
        speech: list[np.ndarray],
        batch_size: int = 32,
        max_new: int = 96,
        task: str | None = None,
        engine: str = "static",
    ) -> list[str]:
        """Greedy ASR of speech-token arrays (batched, KV-cached): the transcript that ``task``
        (default: the stage's own, ``asr``, or ``asr_phonemes``: phonemes first, then text)
        writes last. ``engine``: the generation engine (``models.generation.ENGINES``)."""
        task = task or transcribing_task(self.cfg.data.task)
        out: list[str] = []
        device = next(self.model.parameters()).device
        for lo in range(0, len(speech), batch_size):
            inputs = [
                [Segment("speech", torch.as_tensor(s, dtype=torch.long, device=device))]
                for s in speech[lo : lo + batch_size]
            ]
            t = TASKS[task]
            budgets = t.budgets(max_new)
            gen = self.model.generate(
                inputs, list(t.outputs), max_new_tokens=budgets, engine=engine
            )
            out += [self.text_tok.decode(g[-1].tokens.tolist()) for g in gen]
        return out

    @torch.no_grad()
    def speak(
        self,
        texts: list[str],
        max_new: list[int],
        batch_size: int = 32,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
        engine: str = "static",
    ) -> list[np.ndarray]:
        """TTS: speech-token arrays generated from transcripts (batched, KV-cached; ``engine``:
        the generation engine, ``models.generation.ENGINES``)."""
        out: list[np.ndarray] = []
        device = next(self.model.parameters()).device
        ids = self.text_tok.encode(texts)
        for lo in range(0, len(texts), batch_size):
            inputs = [
                [Segment("text", torch.as_tensor(t, dtype=torch.long, device=device))]
                for t in ids[lo : lo + batch_size]
            ]
            budget = max(max_new[lo : lo + batch_size])
            gen = self.model.generate(
                inputs,
                ["speech"],
                max_new_tokens=budget,
                temperature=temperature,
                top_k=top_k,
                seed=None if seed is None else seed + lo,
                engine=engine,
            )
            out += [g[-1].tokens.cpu().numpy() for g in gen]
        return out


def load_tower(folder: str | Path) -> Tower:
    """Rebuild a pretrained tower from its stage folder alone (or import an HF causal LM)."""
    p = Path(folder)
    if is_hf_folder(p):
        return load_hf_tower(p)
    try:
        tower = Tower(TowerConfig(**read_json(p / TOWER_JSON)))
    except (TypeError, ValueError) as e:
        raise UserError(
            f"{p / TOWER_JSON} does not describe a tower ({e}): delete {str(p)!r} and re-run the "
            "pretraining stage that made it"
        ) from None
    load_weights(tower, p / WEIGHTS)
    return tower


def save_towers_json(folder: Path, towers: dict[str, Tower]) -> None:
    atomic_write_json(folder / TOWERS_JSON, {t: towers[t].config_dict() for t in towers})


def load_finetuned(folder: str | Path, device: str | torch.device = "cpu") -> Finetuned:
    """Rebuild a zipped / single-decoder stage from its folder alone."""
    folder = require_stage(folder, "fine-tuned", "eval.stages / inputs.init")
    cfg = load_config(folder / "config.yaml")
    tower_cfgs = read_json(folder / TOWERS_JSON)  # {modality: tower config}
    toks = load_tokenizers(dict.fromkeys(tower_cfgs, folder))
    specs = modality_specs(toks)
    towers = {t: Tower(TowerConfig(**c)) for t, c in tower_cfgs.items()}
    model = build_model(cfg, towers, specs)
    load_weights(model, folder / WEIGHTS)
    model.to(device).eval()
    return Finetuned(model, cfg, specs, toks, folder)


__all__ = [
    "Finetuned",
    "UserError",
    "load_finetuned",
    "load_tower",
]
