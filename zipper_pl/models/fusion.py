"""Building blocks that join towers: MLP projections and Flamingo-style gated cross-attention."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F_
from torch import Tensor

from zipper_pl.errors import UserError
from zipper_pl.models.attention_kernel import attend

# Names of the zero-initialised tanh-gate scalars below (cross-attention alpha, feed-forward beta,
# input-projection gamma): the optimizer gives them their own learning rate (train.gate_lr_mult).
GATE_PARAM_NAMES = ("alpha", "beta", "gamma")


class MLP(nn.Module):
    """n_layers Linear layers with ReLU between them (no activation after the last)."""

    def __init__(self, d_in: int, d_hidden: int, d_out: int, n_layers: int = 3) -> None:
        super().__init__()
        if n_layers < 1:
            raise UserError(f"MLP needs at least 1 layer, got {n_layers} (zipper proj_layers)")
        dims = [d_in] + [d_hidden] * (n_layers - 1) + [d_out]
        layers: list[nn.Module] = []
        for i in range(n_layers):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(dims[i], dims[i + 1]))
        self.net = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)


class GatedCrossAttention(nn.Module):
    """Flamingo's gated cross-attention + gated feed-forward, with tanh gates.

    x = x + tanh(alpha) * xattn(norm(x), kv);  x = x + tanh(beta) * ffw(norm(x)).
    With alpha = beta = 0 the layer is the identity exactly. ``ffw`` may be None (no
    feed-forward) or a module shared with other layers (``zip.xattn_ffw``). Keys/values are
    projected by ``project_kv`` separately so generation can project each new source token once
    and cache it.
    """

    compile_region = True  # train.compile compiles each layer (runs/trainer.compile_forward)

    def __init__(
        self,
        d_query: int,
        d_kv: int,
        n_heads: int,
        d_ff: int = 0,
        gate_init: float = 0.0,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        align_prior: bool = False,
    ) -> None:
        super().__init__()
        if d_query % n_heads:
            raise UserError(
                f"cross-attention width {d_query} is not divisible by {n_heads} heads: "
                "set zipper xattn_heads to a divisor of the query tower's d_model"
            )
        self.n_heads, self.head_dim = n_heads, d_query // n_heads
        self.norm_attn = nn.RMSNorm(d_query, eps=norm_eps)
        self.q = nn.Linear(d_query, d_query, bias=False)
        self.kv = nn.Linear(d_kv, 2 * d_query, bias=False)
        self.proj = nn.Linear(d_query, d_query, bias=False)
        self.norm_ffw: nn.Module | None = nn.RMSNorm(d_query, eps=norm_eps)
        d_ff = d_ff or 4 * d_query
        # zip.xattn_ffw: ZipperModel may replace it by another direction's (shared) or by None
        self.ffw: nn.Module | None = nn.Sequential(
            nn.Linear(d_query, d_ff), nn.GELU(), nn.Linear(d_ff, d_query)
        )
        self.alpha = nn.Parameter(torch.tensor(float(gate_init)))
        self.beta = nn.Parameter(torch.tensor(float(gate_init)))
        self.drop = nn.Dropout(dropout)
        if align_prior:
            # ALiBi-like geometric slopes per head: head 0 looks about one word around the
            # expected position, the last head almost anywhere; learned, so heads can drop it
            self.prior_slopes = nn.Parameter(2.0 ** -torch.arange(n_heads, dtype=torch.float))

    def project_kv(self, h: Tensor) -> tuple[Tensor, Tensor]:
        """Source states [B,Tk,d_kv] -> keys, values [B,H,Tk,hd]."""
        B, Tk, _ = h.shape
        k, v = self.kv(h).view(B, Tk, 2, self.n_heads, self.head_dim).unbind(2)
        return k.transpose(1, 2), v.transpose(1, 2)

    def forward(
        self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, distance: Tensor | None = None
    ) -> Tensor:
        """x [B,Tq,D] attends to k, v [B,H,Tk,hd] where mask [B,1,Tq,Tk] is True.

        distance [B,1,Tq,Tk] (words between query and key, only with ``align_prior``) adds
        -slope_h * distance to head h's attention logits. A query row with no visible key gets
        an attention output of exactly zero (not NaN): the row is unmasked for SDPA and its
        output multiplied by zero.
        """
        device = x.device.type
        if torch.is_autocast_enabled(device):
            # in bf16 these layers slowed the Zipper's learning (validation loss 1.96 against
            # 1.88 in fp32 at step 200; 1.84 with only them in fp32: docs/results.md), so
            # they run in fp32, as autocast runs norms and softmax; the towers stay in bf16
            with torch.autocast(device, enabled=False):
                y = self._attend_and_gate(x.float(), k.float(), v.float(), mask, distance)
            return y.to(x.dtype)
        return self._attend_and_gate(x, k, v, mask, distance)

    def _attend_and_gate(
        self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, distance: Tensor | None
    ) -> Tensor:
        B, Tq, D = x.shape
        if k.size(2) == 0:
            attn = x.new_zeros(B, Tq, D)
        else:
            q = self.q(self.norm_attn(x)).view(B, Tq, self.n_heads, self.head_dim).transpose(1, 2)
            has_key = mask.any(dim=-1, keepdim=True)  # [B,1,Tq,1]
            allowed = mask | ~has_key
            if distance is not None and hasattr(self, "prior_slopes"):
                bias = -self.prior_slopes.view(1, -1, 1, 1).to(q.dtype) * distance.to(q.dtype)
                allowed = bias.masked_fill(~allowed, float("-inf"))  # [B,H,Tq,Tk]
            y = attend(q, k, v, attn_mask=allowed)
            y = y * has_key  # [B,H,Tq,hd]
            attn = self.proj(y.transpose(1, 2).reshape(B, Tq, D))
        x = x + torch.tanh(self.alpha) * self.drop(attn)
        if self.ffw is None:
            return x
        return x + torch.tanh(self.beta) * self.drop(self.ffw(self.norm_ffw(x)))


class FusionLayer(nn.Module):
    """One direction of one zipped layer: dst tower reads ReLU(g(src hidden states))."""

    def __init__(
        self,
        d_dst: int,
        d_src: int,
        proj_layers: int,
        proj_hidden: int,
        n_heads: int,
        d_ff: int,
        gate_init: float,
        norm_eps: float = 1e-5,
        dropout: float = 0.0,
        align_prior: bool = False,
    ) -> None:
        super().__init__()
        self.proj = MLP(d_src, proj_hidden or max(d_src, d_dst), d_dst, proj_layers)
        self.xattn = GatedCrossAttention(
            d_dst, d_dst, n_heads, d_ff, gate_init, norm_eps, dropout, align_prior
        )

    def project_kv(self, h_src: Tensor) -> tuple[Tensor, Tensor]:
        """Source tower states [B,Tk,d_src] -> cacheable keys, values [B,H,Tk,hd]."""
        return self.xattn.project_kv(F_.relu(self.proj(h_src)))

    def forward(
        self, x: Tensor, k: Tensor, v: Tensor, mask: Tensor, distance: Tensor | None = None
    ) -> Tensor:
        return self.xattn(x, k, v, mask, distance)


class InputProjection(nn.Module):
    """Per-tower projection after the embedding (paper: h0 = ReLU(MLP(emb))).

    mode "paper": ReLU(MLP(emb)); "gated": emb + tanh(gamma) * ReLU(MLP(emb)) with gamma = 0 at
    start, so a freshly zipped model is exactly its towers (the paper's form replaces the
    embedding the frozen tower was trained on by a random projection); "none": emb.
    """

    def __init__(self, d_model: int, mode: str, n_layers: int, d_hidden: int = 0) -> None:
        super().__init__()
        if mode not in ("gated", "paper", "none"):
            raise UserError(f"input_proj must be 'gated', 'paper' or 'none', got {mode!r}")
        self.mode = mode
        if mode != "none":
            self.mlp = MLP(d_model, d_hidden or d_model, d_model, n_layers)
        if mode == "gated":
            self.gamma = nn.Parameter(torch.zeros(()))

    def forward(self, emb: Tensor) -> Tensor:
        if self.mode == "none":
            return emb
        h = F_.relu(self.mlp(emb))
        return h if self.mode == "paper" else emb + torch.tanh(self.gamma) * h
