"""The root ``Config`` and the run sections it nests (model size, tokenizer, data, training, stage
inputs, evaluation, ablation) next to the sub-configs of ``config/components.py``.

Every field is declared with ``F`` (a one-line doc and its valid range); ``config/loading.py``
builds, validates and saves the tree. A run's config is: these defaults <- the YAML file
(``experiments/...``) <- ``key=value`` overrides. Field names, defaults, docs and order are what
stage identities hash (``runs/identity.py``): change them as a schema change, never as a
refactoring.
"""

from __future__ import annotations

from dataclasses import dataclass

from zipper_pl.config.components import (
    TASKS,
    AudioTokenizerConfig,
    EmbeddedCorpusConfig,
    HFColumnsConfig,
    JudgeConfig,
    PhonemeConfig,
    VocoderConfig,
    ZipperConfig,
)
from zipper_pl.config.schema import F

SCALES = ("tiny", "demo", "s", "l")
# the names of ``data.modalities.MODALITIES`` (a test keeps them equal): the config layer
# imports no data code
MODALITY_NAMES = ("text", "speech", "phonemes")


@dataclass
class AblationConfig:
    """Which cells the aligned-fraction sweep (``ablation`` stage) runs."""

    fracs: list[float] = F(
        None, "aligned fractions (x axis)", factory=lambda: [0.01, 0.03, 0.1, 0.3, 1.0]
    )
    seeds: list[int] = F(None, "seeds per cell (mean and spread over them)", factory=lambda: [0])
    freeze: list[str] = F(
        None,
        "Zipper freeze settings of the TTS cells: text = speech tower trained, both = frozen "
        "(the paper's frozen vs unfrozen speech backbone)",
        factory=lambda: ["text", "both"],
    )
    freeze_fracs: list[float] = F(
        None,
        "fractions at which TTS cells also run the freeze settings after the first (the paper "
        "compares frozen and trained speech towers at full data, its Table 2); empty = every "
        "fraction",
        factory=list,
    )
    asr_freeze: list[str] = F(
        None,
        "Zipper freeze settings of the ASR cells (paper: text frozen)",
        factory=lambda: ["text"],
    )
    tower_seeds: bool = F(
        True,
        "each seed zips towers pretrained with that seed (the given towers' configs, seed "
        "replaced; finished pretraining stages are reused); false: every seed zips the given "
        "towers and varies only the subset, data order and fusion init",
    )
    models: list[str] = F(
        None, "systems: zipper and/or single", factory=lambda: ["zipper", "single"]
    )
    tts: bool = F(True, "also train TTS cells and score them with the judge")
    lrs: list[float] = F(
        None,
        "peak learning-rate grid per system and task, selected on validation data at lr_frac "
        "(paper: 5e-5 1e-4 5e-4 1e-3); empty = train.lr / train.single_lr as given",
        factory=list,
    )
    lr_frac: float = F(
        0.1, "aligned fraction (first seed) the lr grid runs at; its choice serves every fraction",
        gt=0.0, le=1.0,
    )  # fmt: skip
    shard: str = F("", "run only cells i, i+n, ... as 'i/n' (parallel GPUs); empty = all")
    variants: dict[str, list[str]] = F(
        None,
        "named Zipper designs, each a list of key=value overrides of its cells (a design study, "
        "experiments/demo/design.yaml; the first is the reference of the paired tests); "
        "empty = the file's one design",
        factory=dict,
    )


@dataclass
class ModelConfig:
    """The decoder tower: a registered size, optionally with individual fields overridden."""

    size: str = F("tiny", "registered tower size (registry.TOWER_PRESETS)", choices=SCALES)
    n_layers: int = F(0, "transformer blocks; 0 = the size's preset", ge=0)
    n_heads: int = F(0, "attention heads; 0 = the size's preset", ge=0)
    d_model: int = F(0, "residual width; 0 = the size's preset", ge=0)
    d_ff: int = F(0, "SwiGLU hidden width; 0 = the size's preset", ge=0)
    max_seq_len: int = F(0, "longest sequence (RoPE table, KV cache); 0 = the size's preset", ge=0)
    dropout: float = F(0.0, "dropout on attention output and MLP", ge=0.0, lt=1.0)
    activation_checkpointing: bool = F(False, "recompute block activations in backward (for l)")


@dataclass
class TextTokenizerConfig:
    """SentencePiece model trained on the text training pool."""

    vocab_size: int = F(1024, "SentencePiece vocabulary size (incl. unk/bos/eos/pad)", ge=16)
    model_type: str = F("unigram", "SentencePiece algorithm", choices=("unigram", "bpe"))
    max_sentences: int = F(200_000, "sentences sampled to train SentencePiece", ge=100)


@dataclass
class DataConfig:
    """Where utterances come from and how they are batched."""

    corpus: str = F(
        "embedded",
        "corpus: embedded (generated) | librispeech | libritts | librilight | jsonl | lhotse "
        "(<root>/<split>.jsonl.gz CutSets or <root>/<split>/ Shar folders) | hf (a saved Hugging "
        "Face dataset or parquet files) | textfile",
        choices=(
            "embedded",
            "librispeech",
            "libritts",
            "librilight",
            "jsonl",
            "lhotse",
            "hf",
            "textfile",
        ),
    )
    root: str = F("data", "corpus root directory (DATA_ROOT); generated corpora are written here")
    cache_dir: str = F(
        "data/cache", "token caches (sharded memmaps) live here, keyed by content hash"
    )
    text_file: str = F("", "plain-text corpus, one utterance per line (corpus=textfile or text LM)")
    train_splits: list[str] = F(
        None, "corpus splits for training (real corpora)", factory=lambda: ["train-clean-100"]
    )
    valid_splits: list[str] = F(None, "splits for validation", factory=lambda: ["dev-clean"])
    test_splits: list[str] = F(None, "splits for testing", factory=lambda: ["test-clean"])
    embedded: EmbeddedCorpusConfig = F(
        None, "size of the generated offline corpus", factory=EmbeddedCorpusConfig
    )
    hf: HFColumnsConfig = F(None, "column names of data.corpus=hf", factory=HFColumnsConfig)
    seq_len: int = F(256, "tokens per packed pretraining sequence", ge=8)
    batch_size: int = F(16, "sequences (or pairs) per device per micro-batch", ge=1)
    max_tokens: int = F(
        0,
        "fine-tuning micro-batches by a token budget instead: items x longest item (padded "
        "tokens) at most this, similar lengths together; 0 = data.batch_size items",
        ge=0,
    )
    num_workers: int = F(0, "DataLoader worker processes", ge=0)
    valid_batches: int = F(8, "batches per validation pass (fixed subset, same every time)", ge=1)
    max_bad_share: float = F(
        0.05, "stop when more than this share of audio files is bad", ge=0, le=1
    )
    aligned_frac: float = F(
        1.0, "share of aligned training pairs used for fine-tuning (nested subsets)", gt=0.0, le=1.0
    )
    task: str = F("asr", "fine-tuning task (config/components.py TASKS)", choices=(*TASKS, "mix"))
    asr_tts_ratio: float = F(0.8, "ASR:TTS sample ratio for task=mix (paper: 1:1.26)", gt=0.0)
    shrink_batch_to_subset: bool = F(
        False,
        "when the aligned_frac subset is smaller than one batch, train on batches of the whole "
        "subset instead of stopping with an error (the ablation's smallest fractions)",
    )


@dataclass
class TrainConfig:
    """Optimisation and the Lightning Trainer."""

    max_steps: int = F(100, "optimizer steps", ge=1)
    lr: float = F(1e-3, "peak learning rate (AdamW)", gt=0.0)
    min_lr_ratio: float = F(0.1, "cosine floor as a share of the peak", ge=0.0, le=1.0)
    warmup_steps: int = F(20, "linear warm-up steps", ge=0)
    weight_decay: float = F(0.1, "AdamW decoupled weight decay (not on norms/biases/gates)", ge=0.0)
    gate_lr_mult: float = F(
        1.0,
        "learning-rate multiplier of the zero-initialised tanh gates (Zipper alpha/beta/gamma). "
        "Adam moves a scalar about lr per step, so at lr 1e-3 a gate needs ~1000 steps to open; "
        "short runs (CPU demo) raise this",
        gt=0.0,
    )
    single_lr: float = F(
        0.0,
        "peak learning rate when arch=single; 0 = lr. The baseline fine-tunes every weight of a "
        "pretrained tower, where an lr tuned for Zipper's new layers overshoots",
        ge=0.0,
    )
    beta1: float = F(0.9, "AdamW beta1", ge=0.0, lt=1.0)
    beta2: float = F(0.99, "AdamW beta2 (paper: 0.99)", ge=0.0, lt=1.0)
    grad_clip: float = F(1.0, "gradient norm clip; 0 = off", ge=0.0)
    accumulate: int = F(1, "micro-batches per optimizer step", ge=1)
    val_every: int = F(50, "validate every N optimizer steps", ge=1)
    ckpt_every: int = F(50, "write last.ckpt every N optimizer steps (and at SIGTERM)", ge=1)
    log_every: int = F(10, "log training scalars every N optimizer steps", ge=1)
    accelerator: str = F(
        "auto", "Lightning accelerator", choices=("auto", "cpu", "gpu", "cuda", "mps")
    )
    devices: str = F("1", "devices per node: a count, 'auto' or a list like '0,1'")
    num_nodes: int = F(1, "nodes (SLURM/torchrun set the rest)", ge=1)
    strategy: str = F("auto", "Lightning strategy", choices=("auto", "ddp", "ddp_spawn", "fsdp"))
    precision: str = F(
        "auto",
        "numeric precision; auto = bf16-mixed on GPU, 32-true on CPU",
        choices=("auto", "32-true", "bf16-mixed", "16-mixed", "bf16-true"),
    )
    compile: bool = F(
        False,
        "torch.compile each tower block and cross-attention layer for training steps (same "
        "checkpoint keys; not the same bits: a new stage); the first step pays the "
        "compilation (~1 min on 2 CPU cores), later models in the process reuse it; "
        "validation and generation stay eager",
    )
    select_best: bool = F(
        True,
        "fine-tuning exports the weights of the best validation score (train.select_on); "
        "paper: model selection",
    )
    select_on: str = F(
        "loss",
        "what select_best minimises: loss (validation loss) | wer (validation ASR WER, the "
        "paper's model selection); data.task=tts has no WER and falls back to the loss, saying so",
        choices=("loss", "wer"),
    )
    patience: int = F(
        0,
        "fine-tuning stops after this many validations without a better select_on score (the "
        "exported weights are the best ones either way); 0 = always train max_steps",
        ge=0,
    )
    threads: int = F(0, "CPU threads for torch; 0 = torch's default", ge=0)
    progress_bar: bool = F(
        True,
        "Lightning's progress bar on the console (`make demo` turns it off while stages run side "
        "by side, where two bars would overwrite each other)",
    )


@dataclass
class StageInputs:
    """Earlier stage folders a stage reads (the Makefile fills these in)."""

    text: str = F("", "stage folder of the pretrained text tower")
    speech: str = F("", "stage folder of the pretrained speech tower")
    phonemes: str = F("", "stage folder of the pretrained phoneme tower (zip.towers lists it)")
    init: str = F("", "zipped stage folder to continue from (finetune)")
    judge: str = F("", "stage folder of the judge ASR (evaluation)")
    vocoder: str = F("", "stage folder of the unit vocoder (speech tokens -> audio)")


@dataclass
class EvalConfig:
    """Evaluation of trained stages."""

    stages: list[str] = F(None, "stage folders to evaluate; empty = this config's", factory=list)
    max_utterances: int = F(0, "evaluate at most N test utterances; 0 = all", ge=0)
    tts_seeds: int = F(3, "sampling seeds per utterance for TTS best-of-N (paper: 3)", ge=1)
    temperature: float = F(0.8, "sampling temperature for TTS best-of-N", gt=0.0)
    top_k: int = F(0, "top-k for sampling; 0 = off", ge=0)
    batch_size: int = F(32, "utterances per generation batch", ge=1)
    max_new_text: int = F(96, "token budget for generated text", ge=1)
    max_new_speech_per_word: float = F(40.0, "speech-token budget per input word", gt=0.0)
    test_words: list[int] = F(
        None,
        "[min, max]: test on a generated pool of sentences of that many words instead of the "
        "corpus' test split (embedded corpus; data.embedded.n_test of them, none in any "
        "training pool), for TTS WER by length (the paper's Fig. 2) beyond the training "
        "lengths; empty = the test split",
        factory=list,
    )
    engine: str = F(
        "static",
        "generation engine (models/generation.py; the same greedy tokens): static, compiled "
        "(its step through torch.compile: ~1.8x on a CPU after ~1 min of compiling per task, "
        "for long evaluations), dynamic, uncached (the reference)",
        choices=("static", "compiled", "dynamic", "uncached"),
    )
    tts_asr: str = F(
        "judge",
        "who transcribes TTS audio (vocoded): judge (the judge on the audio re-tokenized), "
        "pocketsphinx, hf:<hub id or folder> (Whisper / wav2vec2), none (token judge only)",
    )


@dataclass
class Config:
    """Root of every run's configuration."""

    seed: int = F(0, "global seed: data order, init, subsets", ge=0, le=2**32 - 1)
    scale: str = F(
        "tiny", "scale preset this config belongs to (names stage folders)", choices=SCALES
    )
    runs: str = F("runs", "root folder for stage folders (RUNS)")
    out: str = F("", "this stage's folder; empty = derived from the config (see stage_dir)")
    modality: str = F("text", "what a pretraining stage models", choices=MODALITY_NAMES)
    arch: str = F("zipper", "fine-tuned model", choices=("zipper", "single"))
    model: ModelConfig = F(None, "decoder tower", factory=ModelConfig)
    text_tokenizer: TextTokenizerConfig = F(None, "text tokenizer", factory=TextTokenizerConfig)
    audio: AudioTokenizerConfig = F(None, "audio tokenizer", factory=AudioTokenizerConfig)
    phonemes: PhonemeConfig = F(None, "phoneme modality", factory=PhonemeConfig)
    data: DataConfig = F(None, "corpus and batching", factory=DataConfig)
    train: TrainConfig = F(None, "optimisation and Trainer", factory=TrainConfig)
    zip: ZipperConfig = F(None, "Zipper fusion", factory=ZipperConfig)
    inputs: StageInputs = F(None, "earlier stage folders", factory=StageInputs)
    eval: EvalConfig = F(None, "evaluation", factory=EvalConfig)
    judge: JudgeConfig = F(None, "judge ASR (scores TTS output)", factory=JudgeConfig)
    ablation: AblationConfig = F(None, "aligned-fraction sweep", factory=AblationConfig)
    vocoder: VocoderConfig = F(None, "unit vocoder (speech tokens -> audio)", factory=VocoderConfig)
