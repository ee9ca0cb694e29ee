"""``hubert``: k-means units of one hidden layer of a self-supervised speech encoder.

The field's "semantic" speech tokens (GSLM, Lakhotia et al. 2021): the frames (50/s) of a
HuBERT / mHuBERT / wav2vec2 / w2v-BERT 2.0 layer, each replaced by its nearest centroid. The
centroids are fitted on the speech pool (``fit_kmeans``, shared with ``units``) or read from a
``.npy`` [K, D] (``scripts/kmeans_to_npy.py`` converts the published k-means pickles, run by the
user, knowingly). Weights are read from safetensors only: nothing here ever unpickles.

``transformers`` (~2 s to import) and ``huggingface_hub`` are imported inside the functions that
use them: this module is imported with every audio tokenizer, ``units`` included.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import torch

from zipper_pl.config.components import AudioTokenizerConfig
from zipper_pl.data.tokenizers.audio_tokenizer_base import (
    AudioTokenizer,
    fit_kmeans,
    nearest_units,
    tokenizer_device,
)
from zipper_pl.errors import UserError
from zipper_pl.hub import CONFIG_JSON, first_line, folder_fingerprint, folder_hint, hub_folder
from zipper_pl.io import atomic_write_bytes, file_digest

SAMPLE_RATE = 16000
KEY = "audio.ssl_model"
SAVED = "ssl_kmeans.npz"


class _LayerOutput(Exception):  # not an error: carries the features out of the forward
    def __init__(self, hidden: torch.Tensor) -> None:
        self.hidden = hidden


def _stop_at_input(_module, args, kwargs) -> None:  # forward pre-hook (with kwargs)
    raise _LayerOutput(args[0] if args else kwargs["hidden_states"])


def _stop_at_output(_module, _args, output) -> None:  # forward hook
    raise _LayerOutput(output[0] if isinstance(output, tuple) else output)


def load_encoder(cfg: AudioTokenizerConfig) -> tuple[torch.nn.Module, object, str]:
    """(the model, ending at ``audio.ssl_layer``; its feature extractor; the weights digest)."""
    from transformers import AutoFeatureExtractor, AutoModel, Wav2Vec2FeatureExtractor

    folder = hub_folder(cfg.ssl_model, KEY)
    if not (folder / CONFIG_JSON).is_file():
        raise UserError(
            f"{folder} has no config.json ({KEY}={cfg.ssl_model}): set {folder_hint(KEY)}"
        )
    digest = folder_fingerprint(folder)  # weights_files() refuses a pickle-only folder
    configs = [folder / n for n in ("config.json", "preprocessor_config.json")]
    try:  # local_files_only: a resolved folder never goes online
        model = AutoModel.from_pretrained(folder, use_safetensors=True, local_files_only=True)
        fe = None
        if configs[1].is_file():
            fe = AutoFeatureExtractor.from_pretrained(folder, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise UserError(f"{folder} does not load ({first_line(e)}): fix audio.ssl_model") from None
    layers = getattr(getattr(model, "encoder", None), "layers", None)
    if not isinstance(layers, torch.nn.ModuleList):
        kind = model.config.model_type
        raise UserError(f"audio.ssl_model={cfg.ssl_model} ({kind}) is no speech encoder")
    if cfg.ssl_layer > len(layers):
        n = len(layers)
        raise UserError(f"audio.ssl_layer={cfg.ssl_layer}, but the model has {n}: set 0 to {n}")
    if fe is None:
        if model.main_input_name != "input_values":
            raise UserError(f"{folder} needs its preprocessor_config.json (mel features)")
        # as fairseq trained them: layer-norm feature encoders (large models) on normalised
        # audio with padding masks, group-norm ones (base) on raw audio without
        norm = getattr(model.config, "feat_extract_norm", "group") == "layer"
        fe = Wav2Vec2FeatureExtractor(do_normalize=norm, return_attention_mask=norm)
    if getattr(fe, "sampling_rate", SAMPLE_RATE) != SAMPLE_RATE:
        raise UserError(f"{cfg.ssl_model} expects {fe.sampling_rate} Hz audio, not 16 kHz")
    # fairseq's output_layer (= transformers 5's hidden_states[n]): the n-th layer's output before
    # any final norm. Later layers are dropped, and a hook ends the forward at that layer.
    n = cfg.ssl_layer
    model.encoder.layers = layers[: max(n, 1)]
    if n == 0:
        model.encoder.layers[0].register_forward_pre_hook(_stop_at_input, with_kwargs=True)
    else:
        model.encoder.layers[n - 1].register_forward_hook(_stop_at_output)
    # fp32 on every device: the argmin over centroids must not move with the precision
    return model.float().eval().requires_grad_(False), fe, digest


class SSLUnitsTokenizer(AudioTokenizer):
    name = "hubert"
    sample_rate = SAMPLE_RATE
    # the model and the centroids enter as their bytes (``_state_bytes``), never as paths
    identity_fields = ("units_k", "units_dedup", "ssl_layer")
    reads = (*identity_fields, "units_fit_max_frames", "ssl_model", "ssl_centroids")
    piece_samples = 1_600_000  # 100 s = 5,000 frames: fairseq's dump_hubert_feature max_chunk

    def __init__(self, cfg: AudioTokenizerConfig, centroids: np.ndarray | None = None) -> None:
        super().__init__(cfg)
        model, self.fe, self.weights_digest = load_encoder(cfg)
        self.device = tokenizer_device(cfg.device)
        self.model = model.to(self.device)
        self.dim = int(model.config.hidden_size)
        self.input_name = model.main_input_name  # input_values (waves) | input_features (mels)
        # Batch-mates must not change a file's tokens. With an attention mask (layer-norm conv
        # encoders, w2v-BERT) padding is masked out. Without one (HuBERT-base, wav2vec2-base)
        # the first conv's GroupNorm normalises over the whole padded length and attention
        # sees the padding, so a batch only holds files of equal length (usually one file, as
        # fairseq's dump_hubert_feature.py runs them): a file's tokens never depend on others.
        self.masked = bool(getattr(self.fe, "return_attention_mask", False))
        if self.input_name == "input_features":  # 10 ms fbank frames stacked `stride` at a time
            stride = int(getattr(self.fe, "stride", 2))
            self.kernels, self.strides = [], []
            self.min_samples, self.frame_rate = 400 + 160 * (stride - 1), 100.0 / stride
        else:  # a conv feature encoder without padding: frames = its output length
            mc = model.config
            self.kernels, self.strides = list(mc.conv_kernel), list(mc.conv_stride)
            hops = np.cumprod([1, *self.strides[:-1]])
            self.min_samples = 1 + int(np.dot(np.array(self.kernels) - 1, hops))  # receptive field
            self.frame_rate = SAMPLE_RATE / float(np.prod(self.strides))
        self.vocab_size = cfg.units_k
        self.centroids: torch.Tensor | None = None  # [K, D] on self.device
        if centroids is None and cfg.ssl_centroids:
            centroids = self._read_npy(Path(cfg.ssl_centroids).expanduser())
        if centroids is not None:
            self._set_centroids(centroids, "audio.ssl_centroids")

    @classmethod
    def source_digests(cls, cfg: AudioTokenizerConfig) -> dict[str, str]:
        npy = Path(cfg.ssl_centroids).expanduser()
        return {
            KEY: folder_fingerprint(hub_folder(cfg.ssl_model, KEY)),
            "audio.ssl_centroids": file_digest(npy) if cfg.ssl_centroids else "",
        }

    @property
    def needs_fit(self) -> bool:  # type: ignore[override]
        return not self.cfg.ssl_centroids

    @staticmethod
    def _read_npy(path: Path) -> np.ndarray:
        try:
            return np.load(path, allow_pickle=False)
        except (OSError, ValueError) as e:
            raise UserError(
                f"audio.ssl_centroids={path} is no readable .npy ({first_line(e)}): "
                "scripts/kmeans_to_npy.py writes one"
            ) from None

    def _set_centroids(self, c: np.ndarray, source: str) -> None:
        if c.ndim != 2 or c.shape[1] != self.dim or c.dtype.kind != "f":
            raise UserError(
                f"{source}: need float centroids [K, {self.dim}], got {c.dtype}{c.shape}"
            )
        if c.shape[0] != self.cfg.units_k:
            raise UserError(
                f"{source} has {c.shape[0]} centroids but audio.units_k={self.cfg.units_k}: "
                f"set audio.units_k={c.shape[0]}"
            )
        self.centroids = torch.from_numpy(np.ascontiguousarray(c, np.float32)).to(self.device)

    def _inputs(self, wave: np.ndarray) -> np.ndarray:
        """One wave's model input, [L] samples or [T, F] mel frames, normalised per file."""
        if len(wave) < self.min_samples:  # shorter than one frame's receptive field
            wave = np.pad(wave, (0, self.min_samples - len(wave)))
        x = self.fe(wave, sampling_rate=SAMPLE_RATE, return_tensors="np")
        n = int(x["attention_mask"][0].sum()) if "attention_mask" in x else None
        return np.asarray(x[self.input_name][0, :n], np.float32)  # w2v-BERT's pads a half frame

    def _frames(self, n: int) -> int:
        for k, s in zip(self.kernels, self.strides, strict=True):
            n = (n - k) // s + 1
        return n

    @torch.no_grad()
    def features(self, waves: list[np.ndarray]) -> list[torch.Tensor]:
        """[T_i, D] layer features per wave, on the tokenizer's device."""
        # longer files are cut into fixed pieces (whole frames): the tokens depend on the file
        # alone, never on batch_seconds; attention over more than 100 s would not fit anyway
        chunk = self.piece_samples
        pieces = [
            (i, w[s : s + chunk]) for i, w in enumerate(waves) for s in range(0, len(w), chunk)
        ]
        pieces += [(i, w) for i, w in enumerate(waves) if not len(w)]  # padded to one frame
        inputs = [self._inputs(np.asarray(p, np.float32)) for _, p in pieces]
        order = sorted(range(len(pieces)), key=lambda j: -len(inputs[j]))
        out: list[torch.Tensor] = [torch.empty(0)] * len(pieces)
        budget, start = self.cfg.batch_seconds * SAMPLE_RATE, 0
        while start < len(order):
            longest = len(inputs[order[start]])
            n = max(1, int(budget // max(len(pieces[order[start]][1]), 1)))  # padding included
            batch = order[start : start + n]
            if not self.masked:  # no padding at all: only equal lengths share a forward
                batch = [j for j in batch if len(inputs[j]) == longest]
            x = torch.zeros(len(batch), longest, *inputs[batch[0]].shape[1:])
            mask = torch.zeros(len(batch), longest, dtype=torch.long)
            for b, j in enumerate(batch):
                x[b, : len(inputs[j])] = torch.from_numpy(inputs[j])
                mask[b, : len(inputs[j])] = 1
            kw = {self.input_name: x.to(self.device)}
            if self.masked:
                kw["attention_mask"] = mask.to(self.device)
            try:
                h = self.model(**kw).last_hidden_state  # not reached: a hook ends the forward
            except _LayerOutput as stop:
                h = stop.hidden
            for b, j in enumerate(batch):
                out[j] = h[b, : self._frames(len(inputs[j]))]
            start += len(batch)
        feats: list[list[torch.Tensor]] = [[] for _ in waves]
        for (i, _), f in zip(pieces, out, strict=True):
            feats[i].append(f)
        return [torch.cat(f) for f in feats]

    def fit(self, waves: list[np.ndarray]) -> None:
        if self.needs_fit:  # else the user's centroids are the model
            feats = torch.cat(self.features(waves)).cpu().numpy()
            self._set_centroids(fit_kmeans(feats, self.cfg), "k-means")

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        if self.centroids is None:
            raise UserError("the hubert tokenizer is not fitted: run its fit step (or load it)")
        f = self.features(waves)
        return nearest_units(f, self.centroids, self.vocab_size, self.cfg.units_dedup)

    def decode(self, tokens: np.ndarray) -> np.ndarray:
        raise UserError(
            "hubert units cannot be turned back into audio (that needs a unit vocoder): use "
            "audio.codec=encodec to listen"
        )

    def _state_bytes(self) -> bytes:
        c = b"" if self.centroids is None else self.centroids.cpu().numpy().tobytes()
        return self.weights_digest.encode() + c

    def save(self, dir: str | os.PathLike) -> None:
        if self.centroids is None:
            raise RuntimeError("fit the hubert tokenizer before saving it")
        d = Path(dir)
        d.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()  # supplied centroids are saved too: a stage folder is self-contained
        np.savez(buf, centroids=self.centroids.cpu().numpy(), weights=np.str_(self.weights_digest))
        atomic_write_bytes(d / SAVED, buf.getvalue())
        super().save(d)  # the config last: its presence marks a complete artefact

    @classmethod
    def _load(cls, cfg: AudioTokenizerConfig, dir: Path) -> SSLUnitsTokenizer:
        """The saved centroids, on the model they were made with (else a UserError)."""
        with np.load(dir / SAVED, allow_pickle=False) as z:
            centroids, digest = z["centroids"], str(z["weights"])
        tok = cls(cfg, centroids=centroids)
        fix = f"restore it, or delete {dir} and re-run the stage that made it"
        if tok.weights_digest != digest:
            raise UserError(
                f"audio.ssl_model={cfg.ssl_model} holds other weights than when the audio "
                f"tokenizer in {dir} was made: {fix}"
            )
        npy = Path(cfg.ssl_centroids).expanduser()
        now = cls._read_npy(npy) if cfg.ssl_centroids and npy.is_file() else centroids
        if not np.array_equal(now, centroids):
            raise UserError(f"audio.ssl_centroids={npy} changed since {dir} was made: {fix}")
        return tok
