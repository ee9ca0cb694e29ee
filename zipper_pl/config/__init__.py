"""The config layer: the dataclass schema with a doc per field, YAML + ``key=value`` overrides.

The bottom layer of the package (layers one-way: config -> models and data -> runs/layout ->
stage modules). It imports no model, data, Lightning or torch code (``tests/test_layers.py``
holds it to that), so ``python -m zipper_pl keys`` / ``paths`` read configs without them.

- ``schema``: the ``F`` field helper (doc + valid range) and value coercion;
- ``components``: the sub-configs models and data take as they are (``ZipperConfig``,
  ``JudgeConfig``, ``AudioTokenizerConfig``, ``EmbeddedCorpusConfig``) and their constants;
- ``sections``: the root ``Config`` and the run sections it nests;
- ``loading``: defaults <- YAML <- overrides, validated all at once; saving; ``keys``.

Checks of a config against the machine (``train.accelerator=gpu`` without CUDA) need torch:
``zipper_pl.runs.machine.check_machine`` makes them, above this layer, before any work.
"""

from __future__ import annotations

from zipper_pl.config.components import (
    ENCODEC_CHECKPOINT,
    SAMPLE_RATES,
    VOICES,
    AudioTokenizerConfig,
    EmbeddedCorpusConfig,
    JudgeConfig,
    VocoderConfig,
    ZipperConfig,
)
from zipper_pl.config.loading import (
    FREEZE_WORDS,
    describe_schema,
    field_paths,
    load_config,
    parse_overrides,
    save_config,
    to_dict,
    with_overrides,
)
from zipper_pl.config.schema import F, check_range, coerce
from zipper_pl.config.sections import (
    SCALES,
    AblationConfig,
    Config,
    DataConfig,
    EvalConfig,
    ModelConfig,
    StageInputs,
    TextTokenizerConfig,
    TrainConfig,
)

__all__ = [
    "ENCODEC_CHECKPOINT",
    "FREEZE_WORDS",
    "SAMPLE_RATES",
    "SCALES",
    "VOICES",
    "AblationConfig",
    "AudioTokenizerConfig",
    "Config",
    "DataConfig",
    "EmbeddedCorpusConfig",
    "EvalConfig",
    "F",
    "JudgeConfig",
    "ModelConfig",
    "StageInputs",
    "TextTokenizerConfig",
    "TrainConfig",
    "VocoderConfig",
    "ZipperConfig",
    "check_range",
    "coerce",
    "describe_schema",
    "field_paths",
    "load_config",
    "parse_overrides",
    "save_config",
    "to_dict",
    "with_overrides",
]
