"""Stage identity: one fingerprint of everything a stage's result is computed from.

A stage folder is reused only when its recorded fingerprint equals the one computed now. The
fingerprint hashes, in one place (``stage_fingerprint``):
- the stage kind;
- every config value that can change that kind's result (``RESULT_KEYS``);
- the fingerprints of the stages it reads (towers, judge, the zipped stage it continues);
- the fingerprint of its data sources (``data.sources.data_fingerprint``: file listings and
  manifest contents, not folder names).
Keys that cannot change any result are listed in ``INERT_KEYS``; keys naming the stages a stage
reads are ``INPUT_KEYS`` (they enter through those stages' fingerprints). A test walks the whole
schema and fails when a key is in none of these lists, so a new key cannot be forgotten.

The environment a stage ran on (CPU family and ISA flags, GPU, library versions, git commit) is
recorded next to the fingerprint as provenance (``provenance.py``), not as identity: the same
experiment on another machine is the same experiment; docs/design.md says what varies.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from zipper_pl.config import Config, field_paths
from zipper_pl.data.tokenizers.audio_tokenizers import AUDIO_TOKENIZERS
from zipper_pl.errors import UserError
from zipper_pl.io import file_digest, json_digest
from zipper_pl.models.tower import TOWER_PRESETS

IDENTITY_FILE = "identity.json"
FINETUNING = ("zip", "finetune")
TRAINING = ("pretrain", "zip", "finetune", "judge")
KINDS = (*TRAINING, "eval", "ablation", "vocoder")


def _keys(names: str, prefix: str = "") -> list[str]:
    return [prefix + n for n in names.split()]


# How a stage runs, never what it computes.
INERT_KEYS = frozenset(
    [
        "scale",  # names the folder; the values a scale selects are resolved into other keys
        "runs",  # where stage folders live
        "out",  # where this stage's folder is
        "model.activation_checkpointing",  # recomputes the same activations in backward
        "audio.device",  # where tokenization runs
        "data.cache_dir",  # caches are keyed by their contents
        "data.num_workers",  # the sampler fixes the order, not the worker count
        "data.embedded.workers",  # synthesis processes; the corpus is byte-identical
        "data.max_bad_share",  # a gate that stops a run; re-checked on every cache reuse
        "train.ckpt_every",  # resuming from last.ckpt is bit-identical
        "train.log_every",
        "train.threads",
        "train.progress_bar",  # what the console shows
        "ablation.shard",  # which cells this process runs, not what any cell computes
        "judge.vocab",  # always replaced by the speech tower's tokenizer size (an input stage)
    ]
)

# Names of earlier stage folders: they enter as those stages' fingerprints, not as paths.
INPUT_KEYS = frozenset(
    [
        "inputs.text",
        "inputs.speech",
        "inputs.phonemes",
        "inputs.init",
        "inputs.judge",
        "inputs.vocoder",
        "eval.stages",
    ]
)

# Keys whose values reach the identity through the data fingerprint (a listing of the files they
# select, with sizes and times, or the manifest contents), never as names: a corpus moved to
# another root is the same data, a transcript fixed in place is not.
DATA_SOURCE_KEYS = frozenset(
    _keys("corpus root text_file train_splits valid_splits test_splits", "data.")
    + _keys(
        "seed n_text n_speech n_aligned_train n_valid n_test n_speakers voices min_words "
        "max_words lexicon_frac",
        "data.embedded.",
    )
    + _keys("audio text speaker id", "data.hf.")  # which columns a dataset is read from
)

# Every other key, one by one (no section prefixes: a new key must be sorted in by hand, and
# tests/test_identity.py fails until it is) -> the stage kinds whose result it can change.
_ALL = KINDS
_VOCODER_KEYS = (
    "dim intermediate_dim n_layers n_fft_hops dur_hidden dur_layers dur_kernel dur_dropout "
    "dur_classes dur_context dur_clips segment_frames max_steps lr batch_size "
    "gan_from mel_weight mel_scales mrd_weight val_every max_utterances delta_weight feature_weight"
)
_EVAL_ALL = ("eval", "ablation")
RESULT_KEYS: dict[str, tuple[str, ...]] = {
    "seed": _ALL,
    "modality": ("pretrain",),
    "phonemes.voice": ("pretrain",),  # zipped stages read it through their phoneme tower
    "arch": FINETUNING,
    **dict.fromkeys(
        _keys("size n_layers n_heads d_model d_ff max_seq_len dropout", "model."),
        ("pretrain", *FINETUNING),
    ),
    **dict.fromkeys(_keys("vocab_size model_type max_sentences", "text_tokenizer."), ("pretrain",)),
    # the audio tokenizer of every pool any stage reads
    **dict.fromkeys(
        _keys(
            "codec units_k units_features units_deltas units_dedup units_fit_max_frames seed "
            "encodec_bandwidth encodec_codebooks encodec_weights_dir batch_seconds max_seconds "
            "ssl_model ssl_layer ssl_centroids",
            "audio.",
        ),
        _ALL,
    ),
    "data.seq_len": ("pretrain",),
    "data.batch_size": TRAINING,
    "data.valid_batches": TRAINING,
    **dict.fromkeys(
        _keys("aligned_frac task asr_tts_ratio shrink_batch_to_subset", "data."), FINETUNING
    ),
    "data.max_tokens": (*FINETUNING, "judge"),  # the judge batches by it too
    **dict.fromkeys(
        _keys(
            "max_steps lr min_lr_ratio warmup_steps weight_decay beta1 beta2 grad_clip accumulate "
            "val_every",
            "train.",
        ),
        TRAINING,
    ),
    # the vocoder trains with vocoder.* (steps, lr, batch) on the same hardware settings
    **dict.fromkeys(
        _keys("accelerator devices num_nodes strategy precision", "train."), (*TRAINING, "vocoder")
    ),
    **dict.fromkeys(
        _keys("gate_lr_mult single_lr select_best select_on patience", "train."), FINETUNING
    ),
    # compiled kernels fuse and reorder float operations: the same model, not the same bits
    "train.compile": ("pretrain", *FINETUNING),
    **dict.fromkeys(
        _keys(
            "towers intervals layers directions proj_layers proj_hidden gate_init xattn_heads "
            "xattn_d_ff xattn_ffw input_proj freeze dropout align_prior tokens_per_word "
            "choose_output",
            "zip.",
        ),
        FINETUNING,
    ),
    # zip stages measure test WER, and the judge its oracle WER, with some eval settings
    "eval.max_utterances": (*FINETUNING, *_EVAL_ALL),
    "eval.test_words": (*FINETUNING, *_EVAL_ALL),  # which test sentences
    "eval.batch_size": (*FINETUNING, "judge", *_EVAL_ALL),
    "eval.max_new_text": (*FINETUNING, *_EVAL_ALL),
    **dict.fromkeys(
        _keys("tts_seeds temperature top_k max_new_speech_per_word", "eval."), _EVAL_ALL
    ),
    "eval.tts_asr": ("eval",),
    # same greedy tokens in fp32 (tests), but inductor's kernels are not eager's bit for bit, and
    # TTS scoring samples: a result is what it was computed from
    "eval.engine": _EVAL_ALL,
    **dict.fromkeys(_keys(_VOCODER_KEYS, "vocoder."), ("vocoder",)),
    **dict.fromkeys(
        _keys(
            "d_model n_layers n_heads ff_mult max_len dropout conv_kernel upsample "
            "downsample targets",
            "judge.",
        ),
        ("judge",),
    ),
    **dict.fromkeys(
        _keys(
            "fracs seeds freeze freeze_fracs asr_freeze tower_seeds models tts lrs lr_frac "
            "variants",
            "ablation.",
        ),
        ("ablation",),
    ),
}


MODALITY_KEYS = {"phonemes.voice": "phonemes"}  # key -> the one modality whose tower it shapes

# Keys added after stages were built, with the value at which a stage computes exactly what it
# did before the key existed: at that value the key stays out of the identity, so finished
# stages keep theirs and are reused (any other value is a new stage).
LATE_KEYS: dict[str, Any] = {
    "train.patience": 0,
    "data.max_tokens": 0,
    "vocoder.mel_scales": [1024],
    # the duration predictor as fairseq's (2026-12-05): configurable depth, kernel, loss
    "vocoder.dur_layers": 2,
    "vocoder.dur_kernel": 3,
    "vocoder.dur_dropout": 0.5,
    "vocoder.dur_classes": 0,
    "vocoder.dur_clips": 1,  # the duration predictor's utterances per crop (2026-12-05)
    "vocoder.delta_weight": 0.0,  # the log-mels' changes in the loss (2026-12-06)
    "vocoder.feature_weight": 0.0,  # the codec's unit features in the loss (2026-12-06)
    "vocoder.dur_context": 0,  # previous runs' durations read (2026-12-06)
    "ablation.variants": {},  # studies of designs (2026-12-05)
    "zip.xattn_ffw": "per_modality",  # shared or no cross-attention MLPs (2026-12-05)
    "zip.choose_output": False,  # the model names the next modality (2026-12-05)
    "eval.test_words": [],  # a generated test pool by length (2026-12-05)
    "eval.engine": "static",  # the generation engine (2026-12-06: compiled added)
    "train.compile": False,  # was inert until 2026-12-06: compiled steps differ in the last bits
}


def flat_config(cfg: Config) -> dict[str, Any]:
    """Every leaf key of the schema as ``{"a.b": value}`` (dict-valued keys stay whole)."""
    out: dict[str, Any] = {}
    for key in field_paths(Config):
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        out[key] = dataclasses.asdict(node) if dataclasses.is_dataclass(node) else node
    return out


def category(key: str) -> str | None:
    """inert | input | data | result, or None for a key in no list (a test forbids that)."""
    if key in INERT_KEYS:
        return "inert"
    if key in INPUT_KEYS:
        return "input"
    if key in DATA_SOURCE_KEYS:
        return "data"
    return "result" if key in RESULT_KEYS else None


def kinds_of(key: str) -> tuple[str, ...]:
    """The stage kinds whose result a key can change through its value (not through data)."""
    if category(key) != "result":
        return ()
    return RESULT_KEYS[key]


def result_config(cfg: Config, kind: str, by_content: bool = True) -> dict[str, Any]:
    """The config values that can change a ``kind`` stage's result; with ``by_content``, keys
    naming files a tokenizer reads (``audio.ssl_model``) hold those files' digests instead."""
    if kind not in KINDS:
        raise ValueError(f"unknown stage kind {kind!r}")
    flat = flat_config(cfg)
    # 0 = "the size's preset": resolved, so a stage's saved config.yaml (presets written out)
    # names the same stage as the experiment file it came from
    preset = TOWER_PRESETS.get(flat["model.size"], {})
    for name, value in preset.items():
        if flat.get(f"model.{name}") == 0:
            flat[f"model.{name}"] = value
    codec = AUDIO_TOKENIZERS[cfg.audio.codec]
    # another codec's fields cannot change this config's tokens (a new codec's keys would
    # otherwise give every existing stage a new identity)
    foreign = {f"audio.{f}" for c in AUDIO_TOKENIZERS.values() for f in c.reads} - {
        f"audio.{f}" for f in codec.reads
    }
    flat = {k: v for k, v in flat.items() if k not in foreign}
    # keys only one modality's pretraining reads cannot change another modality's tower (a new
    # modality's keys would otherwise give every existing tower a new identity)
    flat = {k: v for k, v in flat.items() if MODALITY_KEYS.get(k, cfg.modality) == cfg.modality}
    flat = {k: v for k, v in flat.items() if k not in LATE_KEYS or v != LATE_KEYS[k]}
    if by_content and kind in kinds_of("audio.codec"):
        flat |= codec.source_digests(cfg.audio)
    return {k: v for k, v in flat.items() if kind in kinds_of(k)}


def stage_fingerprint(
    cfg: Config, kind: str, inputs: Mapping[str, str], data_fp: str
) -> dict[str, Any]:
    """The identity record of a stage: its fingerprint and everything that went into it."""
    content = {
        "kind": kind,
        "config": result_config(cfg, kind),
        "inputs": dict(sorted(inputs.items())),
        "data": data_fp,
    }
    return {"fingerprint": json_digest(content), **content}


def read_identity(folder: Path) -> dict[str, Any] | None:
    """A stage folder's identity record, or None when it has none (made before identities)."""
    p = Path(folder) / IDENTITY_FILE
    if not p.is_file():
        return None
    try:
        rec = json.loads(p.read_text())
    except (OSError, ValueError) as e:
        raise UserError(f"{p} is unreadable ({e}): delete that stage folder and re-run") from None
    return rec if isinstance(rec, dict) and "fingerprint" in rec else None


def consumed_fingerprint(folder: Path, weights: str) -> str:
    """The fingerprint of a stage another stage reads: its recorded one, else (a folder made
    before identities, or by hand) the hash of its weights file, so any change is still seen."""
    rec = read_identity(folder)
    if rec is not None:
        return rec["fingerprint"]
    print(f"[identity] {folder} has no {IDENTITY_FILE} (made before identities, or by hand): "
          f"identified by the hash of its {weights}")  # fmt: skip
    return "weights:" + file_digest(Path(folder) / weights)


# filled in by the stage when left empty (measured on its data): not a user's choice
FILLED_AT_RUN = frozenset({"zip.tokens_per_word"})


def differing_keys(cfg: Config, base: Config, kind: str) -> dict[str, Any]:
    """Result keys of ``kind`` where ``cfg`` differs from ``base`` (an experiment file)."""
    # by name: what a reader compares (and no model is fetched to list runs)
    mine, theirs = result_config(cfg, kind, False), result_config(base, kind, False)
    return {
        k: v
        for k, v in mine.items()
        if theirs.get(k) != v and not (k in FILLED_AT_RUN and not theirs.get(k))
    }


def replace_inputs(cfg: Config, **folders: str | Path) -> Config:
    """``cfg`` with ``inputs.<name>`` set to stage folders."""
    values = {k: str(v) for k, v in folders.items()}
    return dataclasses.replace(cfg, inputs=dataclasses.replace(cfg.inputs, **values))
