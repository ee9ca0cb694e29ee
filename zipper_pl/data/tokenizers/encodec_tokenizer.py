"""The ``encodec`` codec: the 24 kHz EnCodec model; the first K residual codebooks flattened
time-major with per-codebook id offsets (frame t -> tokens ``c_0(t), 1024 + c_1(t), ...``);
decodes to audio."""

from __future__ import annotations

import hashlib
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from zipper_pl.config.components import ENCODEC_CHECKPOINT as ENCODEC_CHECKPOINT
from zipper_pl.config.components import AudioTokenizerConfig
from zipper_pl.data.tokenizers.audio_tokenizer_base import AudioTokenizer, tokenizer_device
from zipper_pl.data.tokenizers.encodec_weights import pretrained_encodec
from zipper_pl.errors import UserError

ENCODEC_BINS = 1024
ENCODEC_HOP = 320  # samples per frame at 24 kHz: 75 frames/s
ENCODEC_MIN_FRAMES = 8  # > the 6-frame reflect padding of the encoder's last conv


@torch.no_grad()
def random_encodec_model(seed: int = 0) -> torch.nn.Module:
    """An untrained 24 kHz EnCodec whose codebooks are drawn from its own encoder outputs.

    For tests and throughput benchmarks only: an untrained model with its default all-zero
    codebooks would emit a single code, this one emits varied (but meaningless) codes.
    """
    from encodec import EncodecModel

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        model = EncodecModel.encodec_model_24khz(pretrained=False)
    g = torch.Generator().manual_seed(seed)
    res = model.encoder(0.1 * torch.randn(1, 1, 4 * 24000, generator=g))[0].T  # [T, D]
    for layer in model.quantizer.vq.layers:
        cb = layer._codebook
        pick = torch.randint(0, res.shape[0], (cb.embed.shape[0],), generator=g)
        noise = 0.01 * res.std() * torch.randn(cb.embed.shape, generator=g)
        cb.embed.copy_(res[pick] + noise)
        cb.inited.fill_(1)
        res = res - cb.embed[torch.cdist(res, cb.embed).argmin(1)]  # next layer sees residuals
    return model.eval()


class EncodecTokenizer(AudioTokenizer):
    name = "encodec"
    sample_rate = 24000
    decodes = True
    # batch_seconds too: long files are cut into chunks of that length, and the encoder's LSTM
    # starts afresh in each, so the chunk length changes the codes (55 of 450 on a 3 s file)
    identity_fields = ("encodec_bandwidth", "encodec_codebooks", "batch_seconds")
    reads = ("encodec_bandwidth", "encodec_codebooks", "encodec_weights_dir")

    def __init__(self, cfg: AudioTokenizerConfig, model: torch.nn.Module | None = None) -> None:
        super().__init__(cfg)
        n_q = int(cfg.encodec_bandwidth * 1000 // (75 * math.log2(ENCODEC_BINS)))
        if cfg.encodec_codebooks > n_q:
            raise UserError(
                f"audio.encodec_codebooks={cfg.encodec_codebooks} exceeds the {n_q} codebooks of "
                f"audio.encodec_bandwidth={cfg.encodec_bandwidth}: lower one or raise the other"
            )
        self.codebooks = cfg.encodec_codebooks or n_q
        self.vocab_size = self.codebooks * ENCODEC_BINS
        self.frame_rate = 75.0 * self.codebooks  # tokens per second: K per 75 Hz frame
        model = model if model is not None else pretrained_encodec(cfg.encodec_weights_dir)
        model.set_target_bandwidth(cfg.encodec_bandwidth)
        h = hashlib.sha256()
        for k, v in sorted(model.state_dict().items()):
            h.update(k.encode())
            h.update(v.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
        self._weights_hash = h.digest()
        self.device = tokenizer_device(cfg.device)
        self.model = model.eval().to(self.device)

    def _state_bytes(self) -> bytes:
        return self._weights_hash

    @torch.no_grad()
    def _codes(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L] waves -> [B, K, ceil(L / 320)] codes of the first K codebooks."""
        emb = self.model.encoder(x[:, None, :].to(self.device))
        codes = self.model.quantizer.encode(emb, self.model.frame_rate, self.model.bandwidth)
        return codes[: self.codebooks].transpose(0, 1).cpu()  # [n_q, B, T] -> [B, K, T]

    def encode(self, waves: list[np.ndarray]) -> list[np.ndarray]:
        chunk = max(1, int(self.cfg.batch_seconds * self.sample_rate) // ENCODEC_HOP) * ENCODEC_HOP
        # long files are cut into chunks of whole frames, so chunk codes concatenate exactly
        pieces: list[tuple[int, np.ndarray]] = []
        for i, w in enumerate(waves):
            pieces += [(i, w[s : s + chunk]) for s in range(0, max(len(w), 1), chunk)]
        order = sorted(range(len(pieces)), key=lambda j: -len(pieces[j][1]))
        codes: list[torch.Tensor | None] = [None] * len(pieces)
        budget = self.cfg.batch_seconds * self.sample_rate
        start = 0
        while start < len(order):
            longest = max(len(pieces[order[start]][1]), 1)
            n = max(1, int(budget // longest))
            batch = order[start : start + n]
            # pieces are zero-padded to whole frames (a multiple of the total stride 320) and to at
            # least ENCODEC_MIN_FRAMES: the encoder's convs then add no right-edge padding and
            # their left reflect padding never reaches past the end, so the encoder is causal and
            # the batch padding behind a piece cannot change its codes
            longest = max(-(-longest // ENCODEC_HOP), ENCODEC_MIN_FRAMES) * ENCODEC_HOP
            x = torch.zeros(len(batch), longest)
            for b, j in enumerate(batch):
                x[b, : len(pieces[j][1])] = torch.from_numpy(np.asarray(pieces[j][1], np.float32))
            c = self._codes(x)  # [B, K, T]
            for b, j in enumerate(batch):
                codes[j] = c[b, :, : math.ceil(len(pieces[j][1]) / ENCODEC_HOP)]
            start += n
        offsets = torch.arange(self.codebooks)[:, None] * ENCODEC_BINS  # [K, 1]
        out: list[list[np.ndarray]] = [[] for _ in waves]
        for (i, _), c in zip(pieces, codes, strict=True):
            out[i].append((c + offsets).T.reshape(-1).numpy().astype(np.uint16))  # time-major
        return [np.concatenate(parts) for parts in out]

    @torch.no_grad()
    def decode(self, tokens: np.ndarray) -> np.ndarray:
        """Flat time-major tokens -> 24 kHz mono float32 waveform."""
        t = torch.as_tensor(np.asarray(tokens, dtype=np.int64))
        if t.ndim != 1 or t.numel() % self.codebooks:
            raise ValueError(
                f"need a 1-D multiple of {self.codebooks} tokens, got {tuple(t.shape)}"
            )
        codes = t.view(-1, self.codebooks) - torch.arange(self.codebooks) * ENCODEC_BINS  # [T, K]
        if codes.numel() and (codes.min() < 0 or codes.max() >= ENCODEC_BINS):
            raise ValueError("token ids do not match their codebook slot (time-major order?)")
        wav = self.model.decode([(codes.T[None].to(self.device), None)])  # [1, 1, T * 320]
        return wav[0, 0].float().cpu().numpy()

    @classmethod
    def _load(cls, cfg: AudioTokenizerConfig, dir: Path) -> EncodecTokenizer:
        return cls(cfg)
