"""Scaled dot-product attention, with one CPU exception measured on an AMX / AVX-512 BF16 CPU.

PyTorch's CPU flash-attention *backward* in bf16 is slower than in fp32 at small head widths: on
a 2-core Intel Xeon (family 6 model 167, AMX-BF16; torch 2.11; docs/performance.md, "The demo on
a CPU with AMX"), causal [32, 4, 128, 32] forward + backward took 25.1 ms in bf16
against 7.7 ms in fp32, while at head width 64 ([16, 12, 512, 64], the ``s`` size) bf16 won
(170 vs 256 ms). So under CPU autocast with gradients on, heads narrower than 64 attend in fp32
(the demo's 32-wide heads: its whole bf16 training step ran no faster than fp32 before this);
everything else, generation included, calls SDPA unchanged.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F_
from torch import Tensor

NARROW_HEAD = 64  # head widths below this attend in fp32 on a CPU in bf16 training


def attend(q: Tensor, k: Tensor, v: Tensor, **sdpa_kwargs) -> Tensor:
    """``F.scaled_dot_product_attention(q, k, v, **sdpa_kwargs)`` for q [B,H,Tq,hd]; bf16
    training on a CPU with hd < NARROW_HEAD runs it in fp32 and returns q's dtype."""
    if (
        q.device.type == "cpu"
        and q.dtype == torch.bfloat16
        and q.size(-1) < NARROW_HEAD
        and torch.is_grad_enabled()
    ):
        mask = sdpa_kwargs.get("attn_mask")
        if mask is not None and mask.dtype != torch.bool:
            sdpa_kwargs["attn_mask"] = mask.float()
        with torch.autocast("cpu", enabled=False):
            y = F_.scaled_dot_product_attention(q.float(), k.float(), v.float(), **sdpa_kwargs)
        return y.to(q.dtype)
    return F_.scaled_dot_product_attention(q, k, v, **sdpa_kwargs)
