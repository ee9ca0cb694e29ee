"""The sub-configs that models and data take as they are: ``ZipperConfig`` (``models/zipper.py``),
``JudgeConfig`` (``models/judge.py``), ``AudioTokenizerConfig``
(``data/tokenizers/audio_tokenizers.py``) and ``EmbeddedCorpusConfig``
(``data/corpora/embedded.py``), with the constants their fields need.

They belong to the config layer, so that reading and validating a config imports no model or data
code (and no torch); the modules they configure import them from here and re-export the names.
Field names, defaults, docs and order are what stage identities hash: change them as a schema
change, never as a refactoring.
"""

from __future__ import annotations

from dataclasses import dataclass

from zipper_pl.config.schema import F

SAMPLE_RATES = {"units": 16000, "encodec": 24000, "hubert": 16000}  # audio.codec -> Hz
ENCODEC_CHECKPOINT = "encodec_24khz-d7cc33bc.th"  # the file name encodec's loader asks for

# Embedded corpus, voice + variant per speaker slot: US, British (RP and generic), Scottish,
# Caribbean and New York English, female and male variants. Rate and pitch are varied per slot on
# top of these.
VOICES = (
    "en-us+f3", "en+m2", "en+m3", "en-us+f1", "en-gb-x-rp+f2", "en-029+m1", "en-gb-scotland+m4",
    "en-us-nyc+m7", "en-us+f4", "en+m1", "en-gb-x-rp+f5", "en-us+m5",
)  # fmt: skip


@dataclass(frozen=True)
class Task:
    """Ordered input modalities -> output modality sequence (each output segment gets loss)."""

    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    @property
    def modalities(self) -> tuple[str, ...]:
        return self.inputs + self.outputs

    @property
    def writes_text(self) -> bool:
        """Its last output is a transcript: scored by WER (ASR, and ASR through phonemes)."""
        return self.outputs[-1] == "text" and "text" not in self.inputs

    @property
    def speaks(self) -> bool:
        """It says a text (TTS): its last output is speech, which a vocoder makes audible."""
        return self.outputs[-1] == "speech" and "text" in self.inputs

    def budgets(self, last: int) -> dict[str, int]:
        """Token budgets of the outputs: ``last`` for the final one; an earlier one (phonemes
        before text) gets 4x: a phoneme string is ~3-5x as long as its subword transcript."""
        return {
            m: last if k == len(self.outputs) - 1 else 4 * last for k, m in enumerate(self.outputs)
        }


# The fine-tuning tasks, as data: a new task is an entry (``data.task`` accepts its name).
TASKS: dict[str, Task] = {
    "asr": Task(inputs=("speech",), outputs=("text",)),
    "tts": Task(inputs=("text",), outputs=("speech",)),
    # ASR through phonemes: the phoneme tower writes what it hears, the text tower reads both
    "asr_phonemes": Task(inputs=("speech",), outputs=("phonemes", "text")),
}
MIX = ("asr", "tts")  # data.task=mix: ASR and TTS items at data.asr_tts_ratio (the paper's)


@dataclass
class ZipperConfig:
    towers: list[str] = F(
        None, "ordered tower (modality) names", factory=lambda: ["text", "speech"]
    )
    intervals: dict[str, int] = F(
        None,
        "tower -> i: a zipped layer after every i-th block (n-th of each tower paired)",
        factory=lambda: {"text": 1, "speech": 1},
    )
    layers: dict[str, list[int]] = F(
        None,
        "tower -> 1-based block indices followed by a zipped layer (same count per tower); "
        "overrides intervals when set",
        factory=dict,
    )
    directions: list[str] = F(
        None,
        "cross-attention directions 'dst<-src' (dst reads src)",
        factory=lambda: ["text<-speech", "speech<-text"],
    )
    proj_layers: int = F(3, "layers of every MLP projection (paper: 3)", ge=1)
    proj_hidden: int = F(0, "hidden width of the MLP projections; 0 = the larger tower width", ge=0)
    gate_init: float = F(0.0, "initial tanh-gate value of cross-attention and its feed-forward")
    xattn_heads: int = F(0, "cross-attention heads; 0 = the query tower's n_heads", ge=0)
    xattn_d_ff: int = F(0, "cross-attention feed-forward width; 0 = 4 x query width", ge=0)
    xattn_ffw: str = F(
        "per_modality",
        "the feed-forward after each cross-attention: 'per_modality' (the paper's: each reading "
        "tower its own), 'shared' (one MLP per zipped layer for all directions, each keeping its "
        "norm and gate; towers of one width) or 'none' (cross-attention only)",
        choices=("per_modality", "shared", "none"),
    )
    input_proj: dict[str, str] = F(
        None,
        "tower -> 'gated' (emb + tanh(gamma)*ReLU(MLP(emb)), gamma=0: starts exactly as the "
        "towers) | 'paper' (ReLU(MLP(emb))) | 'none'",
        factory=lambda: {"text": "gated", "speech": "gated"},
    )
    freeze: str = F(
        "text", "frozen towers: a tower name, comma-separated names, 'none', or 'both'/'all'"
    )
    dropout: float = F(0.0, "dropout inside the fusion layers", ge=0.0, lt=1.0)
    align_prior: bool = F(
        False,
        "add -slope_h * |word distance| between a query's and a key's progress through their "
        "segments to cross-attention logits (learned per-head slopes). Not in the paper: a "
        "monotonic-alignment prior that lets small models learn ASR/TTS alignment in minutes",
    )
    choose_output: bool = F(
        False,
        "each tower learns to name, at the end of each of its segments, the next segment's "
        "modality or 'done'; generate(..., 'auto') follows it (not in the paper: its future "
        "work; models/choices.py)",
    )
    tokens_per_word: dict[str, float] = F(
        None,
        "tower -> mean tokens per transcript word, converts segment positions to words for "
        "align_prior; empty = measured on the aligned training pairs when the stage starts",
        factory=dict,
    )


@dataclass
class PhonemeConfig:
    voice: str = F(
        "en-us",
        "espeak-ng language whose rules turn transcripts into phonemes (the phoneme modality)",
    )


@dataclass
class JudgeConfig:
    vocab: int = F(1024, "speech token vocabulary size (token ids 0..vocab-1)", ge=2)
    d_model: int = F(256, "encoder width", ge=8)
    n_layers: int = F(4, "encoder blocks", ge=1)
    n_heads: int = F(4, "attention heads (must divide d_model)", ge=1)
    ff_mult: int = F(4, "feed-forward width as a multiple of d_model", ge=1)
    max_len: int = F(2048, "longest speech token sequence, in frames before upsampling", ge=1)
    dropout: float = F(0.1, "dropout inside the encoder", ge=0.0, lt=1.0)
    conv_kernel: int = F(
        5, "odd kernel of the convolutional front-end over token embeddings; 0 = none", ge=0
    )
    upsample: int = F(
        1, "repeat every frame this many times so CTC has enough frames per character", ge=1, le=8
    )
    downsample: int = F(
        1,
        "average every N frames into one after the convolutional front-end: about N x cheaper "
        "encoder; word labels need only one frame per word (not with upsample > 1)",
        ge=1,
        le=8,
    )
    targets: str = F(
        "chars",
        "CTC labels: chars (open vocabulary) or words (one label per training-transcript word; "
        "others decode as <unk>, always an error)",
        choices=("chars", "words"),
    )


@dataclass
class VocoderConfig:
    """Speech tokens -> waveform for codecs without a decoder (``units``, ``hubert``): a Vocos
    generator (ConvNeXt backbone + ISTFT head) on token embeddings, and a duration predictor for
    de-duplicated units. Defaults are Vocos' published sizes and losses (``s`` / ``l``)."""

    dim: int = F(512, "ConvNeXt backbone width (Vocos: 512)", ge=8)
    intermediate_dim: int = F(1536, "ConvNeXt block inner width (Vocos: 1536)", ge=8)
    n_layers: int = F(8, "ConvNeXt blocks (Vocos: 8)", ge=1)
    n_fft_hops: int = F(4, "ISTFT window in codec hops (Vocos: 1024 = 4 x its hop 256)", ge=1)
    dur_hidden: int = F(128, "duration predictor width (fairseq unit HiFi-GAN: 128)", ge=8)
    dur_layers: int = F(2, "duration predictor conv layers (fairseq: 2)", ge=1)
    dur_kernel: int = F(3, "duration predictor conv kernel, odd (fairseq: 3)", ge=1)
    dur_dropout: float = F(0.5, "duration predictor dropout (fairseq: 0.5)", ge=0.0, lt=1.0)
    dur_classes: int = F(
        0,
        "0: regress log(1 + frames) by MSE and round (fairseq); K > 0: classify 1..K frames by "
        "cross-entropy and take the most likely (longer runs count as K)",
        ge=0,
    )
    dur_context: int = F(
        0,
        "previous runs whose durations the duration predictor reads (needs dur_classes): "
        "teacher-forced in training, decoded run by run (0: none, as fairseq)",
        ge=0,
    )
    dur_clips: int = F(
        1,
        "utterances whose unit runs train the duration predictor per crop of a batch (the "
        "crop's own, then others): it is cheap beside the crops' audio, so a smaller "
        "vocoder.batch_size need not starve it",
        ge=1,
    )
    segment_frames: int = F(64, "training crop in token frames (50/s units: 64 = 1.28 s)", ge=4)
    max_steps: int = F(20000, "generator optimizer steps", ge=1)
    lr: float = F(5e-4, "AdamW lr of generator and discriminators (Vocos: 5e-4)", gt=0.0)
    batch_size: int = F(16, "crops per batch (Vocos: 16)", ge=1)
    gan_from: int = F(
        0,
        "step at which the discriminators (multi-period + multi-resolution) join; at or past "
        "max_steps: the spectral losses only, much cheaper (Vocos: 0)",
        ge=0,
    )
    mel_weight: float = F(45.0, "weight of the mel-spectrogram L1 loss (Vocos, HiFi-GAN: 45)", ge=0)
    mel_scales: list[int] = F(
        None,
        "FFT sizes of the mel L1 loss (at 16 kHz), averaged (Vocos: [1024]; EnCodec and DAC use "
        "several, which see the phase errors of short windows that one long window averages out)",
        factory=lambda: [1024],
    )
    delta_weight: float = F(
        0.0,
        "weight (beside mel_weight) of the L1 between the frame-to-frame changes of the log-mels "
        "at every mel scale: transitions the mel L1 alone smooths over (0 = off, as Vocos)",
        ge=0,
    )
    feature_weight: float = F(
        0.0,
        "weight (beside mel_weight) of the L1 between the codec's own unit features (units: MFCC "
        "with deltas) of the output and of the gold audio: the vocoder learns to give its units "
        "back (0 = off; codecs whose features torch computes here: units)",
        ge=0,
    )
    mrd_weight: float = F(0.1, "weight of the multi-resolution discriminator (Vocos: 0.1)", ge=0)
    val_every: int = F(500, "steps between validations (loss, audio samples in TensorBoard)", ge=1)
    max_utterances: int = F(0, "speech-pool utterances trained on; 0 = all", ge=0)


@dataclass
class AudioTokenizerConfig:
    codec: str = F("units", "audio tokenizer", choices=("units", "encodec", "hubert"))
    units_k: int = F(256, "k-means entries (= speech vocabulary) of units / hubert", ge=2)
    units_features: str = F("mfcc", "units frame features", choices=("mfcc", "logmel"))
    units_deltas: bool = F(True, "stack first and second time deltas onto the unit features")
    units_dedup: bool = F(False, "collapse runs of identical units into one (loses durations)")
    units_fit_max_frames: int = F(200_000, "most feature frames k-means is fitted on", ge=1)
    seed: int = F(0, "seed of the k-means fit and of its frame subsample")
    encodec_bandwidth: float = F(
        1.5,
        "EnCodec kbps: picks the codebooks (1.5=2 ... 24=32)",
        choices=(1.5, 3.0, 6.0, 12.0, 24.0),
    )
    encodec_codebooks: int = F(0, "first K EnCodec codebooks kept; 0 = all for the bandwidth", ge=0)
    encodec_weights_dir: str = F(
        "", f"folder holding {ENCODEC_CHECKPOINT}; '' = torch hub cache or download"
    )
    batch_seconds: float = F(60.0, "audio seconds per encode batch (padding included)", gt=0)
    max_seconds: float = F(30.0, "longer files are skipped as too_long; 0 = no limit", ge=0)
    device: str = F("auto", "where encodec / hubert run: auto (cuda when present), cpu, cuda")
    ssl_model: str = F(
        "facebook/hubert-base-ls960",
        "hubert codec: HF hub id or local folder (config.json + model.safetensors) of a HuBERT, "
        "mHuBERT, wav2vec2 or w2v-BERT 2.0 encoder",
    )
    ssl_layer: int = F(
        6,
        "hubert codec: transformer layer whose output is quantised (0 = its input); "
        "6 is GSLM's choice for HuBERT-base",
        ge=0,
    )
    ssl_centroids: str = F(
        "", "hubert codec: .npy of k-means centroids [K, D]; '' = fit units_k means on the pool"
    )

    @property
    def sample_rate(self) -> int:
        return SAMPLE_RATES[self.codec]


@dataclass
class EmbeddedCorpusConfig:
    """Size and seed of the generated offline corpus (see EMBEDDED_PRESETS)."""

    seed: int = F(0, "seed of the sentence generator and speaker assignment")
    n_text: int = F(20_000, "sentences in the text-only pool (text pretraining)", ge=0)
    n_speech: int = F(3_000, "utterances in the speech-only pool (speech pretraining)", ge=0)
    n_aligned_train: int = F(3_000, "aligned (speech, transcript) training pairs", ge=0)
    n_valid: int = F(200, "aligned validation pairs", ge=0)
    n_test: int = F(200, "aligned test pairs", ge=0)
    n_speakers: int = F(8, "synthetic speakers (espeak voice/variant, rate, pitch)", ge=1)
    voices: list[str] = F(
        None,
        "espeak voice+variant of speaker slot k (cycled); accents and sexes differ a lot in units",
        factory=lambda: list(VOICES),
    )
    min_words: int = F(4, "shortest sentence, in words", ge=1)
    max_words: int = F(25, "longest sentence, in words", ge=6)
    lexicon_frac: float = F(
        1.0,
        "share of every open word class the grammar draws from (1.0: ~1,750 word forms); "
        "smaller worlds hear each word more often",
        gt=0.0,
        le=1.0,
    )
    workers: int = F(2, "threads driving espeak helper processes (output is identical)", ge=1)


@dataclass
class HFColumnsConfig:
    """Column names of a Hugging Face dataset read as a corpus (``data.corpus=hf``)."""

    audio: str = F("audio", "the Audio column (bytes and / or a local path per row)")
    text: str = F("text", "the transcript column; empty: the dataset has none (speech only)")
    speaker: str = F("speaker_id", "the speaker column; missing from the dataset: 'unknown'")
    id: str = F("id", "the utterance id column; missing: <split>-<row number>")
