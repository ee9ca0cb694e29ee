"""Decoder-only transformer "tower": RMSNorm, RoPE, SwiGLU, SDPA attention, tied softmax, KV cache.

The public API is shaped so a fusion model can run the blocks of several towers in lockstep and
insert its own layers between blocks without copying the block loop (``run_blocks(x, start,
stop)``) while the tower's ``state_dict`` keys stay exactly those of a standalone tower.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F_
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from zipper_pl.config.schema import F
from zipper_pl.errors import UserError
from zipper_pl.models.attention_kernel import attend
from zipper_pl.models.kv_cache import KVCache


@dataclass
class TowerConfig:
    vocab_size: int = F(
        0, "token vocabulary size; 0 = taken from the tokenizer at build time", ge=0
    )
    n_layers: int = F(4, "number of transformer blocks", ge=1)
    n_heads: int = F(4, "attention heads per block (d_model must be divisible by it)", ge=1)
    d_model: int = F(128, "residual stream width", ge=2)
    d_ff: int = F(384, "SwiGLU hidden width of the feed-forward layer", ge=1)
    max_seq_len: int = F(
        256, "longest token sequence (prompt + generation) the tower accepts", ge=1
    )
    rope_base: float = F(10000.0, "RoPE frequency base", gt=1.0)
    norm_eps: float = F(1e-5, "RMSNorm epsilon", gt=0.0)
    dropout: float = F(0.0, "dropout on attention weights and residual branches", ge=0.0, lt=1.0)
    # The options below exist so Hugging Face Llama-family LMs import exactly (models/hf_llama.py);
    # their defaults are our own towers' layout, so older towers.json files load unchanged.
    n_kv_heads: int = F(0, "key/value heads (grouped-query attention); 0 = n_heads", ge=0)
    head_dim: int = F(0, "width of one attention head; 0 = d_model / n_heads", ge=0)
    qkv_bias: bool = F(False, "biases on the query/key/value projections (Qwen2)")
    tie_embeddings: bool = F(True, "the output softmax reuses the input embedding")
    rope_scaling: str = F(
        "none",
        "RoPE frequency scaling: none | linear | llama3",
        choices=("none", "linear", "llama3"),
    )
    rope_factor: float = F(1.0, "RoPE scaling factor (linear, llama3)", gt=0.0)
    rope_low_freq_factor: float = F(1.0, "llama3 RoPE scaling: low-frequency factor", gt=0.0)
    rope_high_freq_factor: float = F(4.0, "llama3 RoPE scaling: high-frequency factor", gt=0.0)
    rope_original_max_len: int = F(8192, "llama3 RoPE scaling: original context length", ge=1)

    @property
    def kv_heads(self) -> int:
        return self.n_kv_heads or self.n_heads

    @property
    def dim_head(self) -> int:
        return self.head_dim or self.d_model // self.n_heads


# size name -> TowerConfig kwargs (all but vocab_size). Parameter counts below are for a 32k vocab.
TOWER_PRESETS: dict[str, dict] = {
    # builds in milliseconds: unit tests
    "tiny": dict(n_layers=2, n_heads=2, d_model=32, d_ff=64, max_seq_len=128),
    # ~0.85M non-embedding params: learns the embedded corpus on 2 CPU cores in minutes
    "demo": dict(n_layers=4, n_heads=4, d_model=128, d_ff=384, max_seq_len=256),
    # ~127M params (the paper's 128M speech tower size)
    "s": dict(n_layers=12, n_heads=12, d_model=768, d_ff=2688, max_seq_len=2048),
    # ~0.99B params (the paper's 1B speech tower size)
    "l": dict(n_layers=18, n_heads=16, d_model=2048, d_ff=5632, max_seq_len=2048),
}


def tower_config(size: str, vocab_size: int, **overrides) -> TowerConfig:
    """TowerConfig of a named preset, with optional field overrides."""
    if size not in TOWER_PRESETS:
        raise UserError(f"unknown tower size {size!r}: choose one of {sorted(TOWER_PRESETS)}")
    return TowerConfig(vocab_size=vocab_size, **{**TOWER_PRESETS[size], **overrides})


def tower_param_count(size: str, vocab_size: int) -> int:
    """Parameter count of a preset (built on the meta device: instant, no memory)."""
    with torch.device("meta"):
        return Tower(tower_config(size, vocab_size)).num_params()


def rope_inv_freq(cfg: TowerConfig, device: torch.device) -> Tensor:
    """RoPE inverse frequencies [hd/2], with the scaling variants Llama-family models use."""
    hd = cfg.dim_head
    inv_freq = cfg.rope_base ** (-torch.arange(0, hd, 2, device=device) / hd)
    if cfg.rope_scaling == "linear":
        return inv_freq / cfg.rope_factor
    if cfg.rope_scaling == "llama3":  # transformers' _compute_llama3_parameters, term by term
        low, high = cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
        old_len = cfg.rope_original_max_len
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > old_len / low, inv_freq / cfg.rope_factor, inv_freq)
        smooth = (old_len / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / cfg.rope_factor + smooth * scaled
        medium = ~(wavelen < old_len / high) & ~(wavelen > old_len / low)
        return torch.where(medium, smoothed, scaled)
    return inv_freq


def rope_tables(positions: Tensor, inv_freq: Tensor) -> tuple[Tensor, Tensor]:
    """cos, sin [B,1,T,hd/2] for integer positions [B,T] (computed on the fly: any position)."""
    angles = positions.float()[:, None, :, None] * inv_freq  # [B,1,T,hd/2]
    return angles.cos(), angles.sin()


def apply_rope(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x [B,H,T,hd] by position (half-split convention), in float32 for stability."""
    half = x.size(-1) // 2
    x1, x2 = x.float()[..., :half], x.float()[..., half:]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1).type_as(x)


class Attention(nn.Module):
    def __init__(self, cfg: TowerConfig, layer: int) -> None:
        super().__init__()
        self.layer, self.n_heads, self.n_kv_heads = layer, cfg.n_heads, cfg.kv_heads
        self.head_dim = cfg.dim_head
        # one fused projection, columns [q | k | v]; k and v have n_kv_heads heads each
        self.split = [cfg.n_heads * self.head_dim] + [cfg.kv_heads * self.head_dim] * 2
        self.qkv = nn.Linear(cfg.d_model, sum(self.split), bias=cfg.qkv_bias)
        self.proj = nn.Linear(cfg.n_heads * self.head_dim, cfg.d_model, bias=False)
        self.dropout = cfg.dropout

    def forward(
        self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None, cache: KVCache | None
    ) -> Tensor:
        B, T, _ = x.shape
        q, k, v = self.qkv(x).split(self.split, dim=-1)
        q = q.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # [B,H,T,hd]
        k, v = (t.view(B, T, self.n_kv_heads, self.head_dim).transpose(1, 2) for t in (k, v))
        q, k = apply_rope(q, *rope), apply_rope(k, *rope)
        if cache is not None:
            k, v = cache.append(self.layer, k, v)  # [B,H,L+T,hd]
        y = attend(
            q,
            k,
            v,
            attn_mask=mask,
            is_causal=mask is None,  # None only for a fresh square causal block
            dropout_p=self.dropout if self.training else 0.0,
            enable_gqa=self.n_kv_heads != self.n_heads,  # k/v heads shared by query groups
        )
        return self.proj(y.transpose(1, 2).reshape(B, T, -1))


class SwiGLU(nn.Module):
    def __init__(self, d_model: int, d_ff: int) -> None:
        super().__init__()
        self.gate_up = nn.Linear(d_model, 2 * d_ff, bias=False)
        self.proj = nn.Linear(d_ff, d_model, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        gate, up = self.gate_up(x).chunk(2, dim=-1)
        return self.proj(F_.silu(gate) * up)


class Block(nn.Module):
    compile_region = True  # train.compile compiles each block (runs/trainer.compile_forward)

    def __init__(self, cfg: TowerConfig, layer: int) -> None:
        super().__init__()
        self.norm_attn = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.attn = Attention(cfg, layer)
        self.norm_mlp = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        self.mlp = SwiGLU(cfg.d_model, cfg.d_ff)
        self.drop = nn.Dropout(cfg.dropout)

    def forward(
        self,
        x: Tensor,
        rope: tuple[Tensor, Tensor],
        mask: Tensor | None = None,
        cache: KVCache | None = None,
    ) -> Tensor:
        x = x + self.drop(self.attn(self.norm_attn(x), rope, mask, cache))
        return x + self.drop(self.mlp(self.norm_mlp(x)))


class Tower(nn.Module):
    """Decoder-only LM over one modality's tokens. The output softmax is tied to ``tok_emb``
    unless ``tie_embeddings`` is off (imported LMs with their own ``lm_head``)."""

    def __init__(self, cfg: TowerConfig) -> None:
        super().__init__()
        if cfg.vocab_size <= 0:
            raise UserError("tower vocab_size is 0: set it from the tokenizer (model vocab_size)")
        if (not cfg.head_dim and cfg.d_model % cfg.n_heads) or cfg.dim_head % 2:
            raise UserError(
                f"d_model={cfg.d_model} must be divisible by n_heads={cfg.n_heads} into an even "
                "head size (RoPE rotates pairs): change the tower's d_model or n_heads"
            )
        if cfg.n_heads % cfg.kv_heads:
            raise UserError(
                f"n_heads={cfg.n_heads} is not a multiple of n_kv_heads={cfg.n_kv_heads}"
            )
        self.cfg = cfg
        self.activation_checkpointing = False  # trade compute for memory in run_blocks
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.drop = nn.Dropout(cfg.dropout)
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layers))
        self.norm_f = nn.RMSNorm(cfg.d_model, eps=cfg.norm_eps)
        if not cfg.tie_embeddings:
            self.lm_head = nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.apply(self._init_weights)
        # residual projections scaled so the residual stream variance does not grow with depth
        for name, p in self.named_parameters():
            if name.endswith("attn.proj.weight") or name.endswith("mlp.proj.weight"):
                nn.init.normal_(p, mean=0.0, std=0.02 / math.sqrt(2 * cfg.n_layers))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, mean=0.0, std=0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    @property
    def n_layers(self) -> int:
        return self.cfg.n_layers

    @property
    def d_model(self) -> int:
        return self.cfg.d_model

    @property
    def lm_head_weight(self) -> Tensor:
        """The output projection [V,D]: the input embedding itself (tied, one tensor on disk)
        unless the tower has its own ``lm_head``."""
        return self.tok_emb.weight if self.cfg.tie_embeddings else self.lm_head.weight

    def embed(self, idx: Tensor) -> Tensor:
        """Token ids [B,T] -> embeddings [B,T,D]."""
        return self.drop(self.tok_emb(idx))

    def attention_mask(
        self, batch: int, t_new: int, past: int, key_valid: Tensor | None, device: torch.device
    ) -> Tensor | None:
        """Boolean SDPA mask [B,1,T,past+T] (True = attend), or None for the is_causal fast path."""
        if key_valid is None and past == 0:
            return None
        q_pos = torch.arange(past, past + t_new, device=device)[:, None]  # [T,1]
        k_pos = torch.arange(past + t_new, device=device)[None, :]  # [1,L+T]
        allowed = (k_pos <= q_pos)[None].expand(batch, -1, -1)  # [B,T,L+T]
        if key_valid is not None:
            if key_valid.shape != (batch, past + t_new):
                raise ValueError(
                    f"key_valid must be [B, cache+new] = {(batch, past + t_new)}, got "
                    f"{tuple(key_valid.shape)}"
                )
            # a pad query may see no valid key: let it see itself so SDPA never yields NaN
            allowed = (allowed & key_valid[:, None, :]) | (k_pos == q_pos)[None]
        return allowed[:, None]

    def run_blocks(
        self,
        x: Tensor,
        start: int,
        stop: int,
        *,
        positions: Tensor | None = None,
        key_valid: Tensor | None = None,
        cache: KVCache | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        """Run ``blocks[start:stop]`` on hidden states x [B,T,D].

        positions: RoPE positions [B,T] (default: arange after the cached tokens).
        key_valid: real (non-pad) keys [B, cache+T] over the whole key axis (ragged batches).
        cache: appended to by each block it runs (see KVCache: per-layer fill levels).
        attn_mask: the self-attention mask [B,1,T,keys] itself, instead of one built from
        key_valid (a static-cache step: the whole capacity on CUDA, static_decoding.py).
        """
        if start >= stop:
            return x
        B, T, _ = x.shape
        past = cache.lengths[start] if cache is not None else 0
        # explicit positions (ragged batches, holes in the cache) are the caller's to bound
        if positions is None and past + T > self.cfg.max_seq_len:
            raise UserError(
                f"sequence of {past + T} tokens exceeds the tower's max_seq_len="
                f"{self.cfg.max_seq_len}: raise max_seq_len or shorten the data (max_len keys)"
            )
        if positions is None:
            positions = torch.arange(past, past + T, device=x.device).expand(B, T)
        rope = rope_tables(positions, rope_inv_freq(self.cfg, x.device))
        mask = attn_mask
        if mask is None:
            mask = self.attention_mask(B, T, past, key_valid, x.device)
        ckpt = self.activation_checkpointing and self.training and cache is None
        for block in self.blocks[start:stop]:
            if ckpt:
                x = checkpoint(block, x, rope, mask, use_reentrant=False)
            else:
                x = block(x, rope, mask, cache)
        return x

    def head(self, x: Tensor) -> Tensor:
        """Hidden states [B,T,D] -> logits [B,T,V] (final norm + output projection)."""
        return F_.linear(self.norm_f(x), self.lm_head_weight)

    def forward(
        self,
        idx: Tensor,
        positions: Tensor | None = None,
        key_valid: Tensor | None = None,
        cache: KVCache | None = None,
        attn_mask: Tensor | None = None,
    ) -> Tensor:
        x = self.embed(idx)
        kw = dict(positions=positions, key_valid=key_valid, cache=cache, attn_mask=attn_mask)
        return self.head(self.run_blocks(x, 0, self.n_layers, **kw))

    def new_cache(
        self,
        batch_size: int,
        max_len: int,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        cache_cls: type[KVCache] = KVCache,
    ) -> KVCache:
        """An empty KV cache for up to max_len tokens (defaults: this tower's device / dtype;
        ``cache_cls``: the static engine's StaticKVCache)."""
        w = self.tok_emb.weight
        return cache_cls(
            self.n_layers,
            batch_size,
            self.cfg.kv_heads,
            self.cfg.dim_head,
            max_len,
            device if device is not None else w.device,
            dtype if dtype is not None else w.dtype,
        )

    def num_params(self, exclude_embedding: bool = False) -> int:
        """Parameter count (a tied softmax counts once, as part of the embedding)."""
        n = sum(p.numel() for p in self.parameters())
        return n - self.tok_emb.weight.numel() if exclude_embedding else n

    def config_dict(self) -> dict:
        return asdict(self.cfg)
