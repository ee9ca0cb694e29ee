"""Analytic model FLOPs of one training step (forward + backward), attention included.

Conventions (the usual MFU bookkeeping, e.g. PaLM appendix B / nanoGPT):
- A dense matmul with an [m, n] weight costs 2*m*n FLOPs per token forward. Backward costs
  2*m*n for the activation gradient (dX) when anything below needs a gradient, plus 2*m*n for
  the weight gradient (dW) when the weight is trainable. So per token: trainable = 6*m*n,
  frozen but back-propagated through = 4*m*n, forward only = 2*m*n. This is how frozen towers
  are counted honestly: no weight gradients, but the activation gradients still flow through
  them to the trainable input projections and fusion layers below.
- Attention scores: Q K^T and P V cost 2 * 2 * Tq * Tk * d_model per layer forward (the full
  Tq x Tk matrix, causal halving NOT applied, as in PaLM's formula); backward is twice that
  (dQ, dK, dP, dV) whenever activation gradients flow, whether or not weights are trainable.
- Counted on REAL tokens: padding is work the hardware does but the model does not need, so it
  lowers utilisation (the padding share is reported separately).
- The output head (tied embedding, [V, D]) is counted only for streams that have loss targets:
  logits nobody trains on are waste (a Zipper ASR step has no loss on the speech stream).
- Element-wise work (norms, RoPE, SwiGLU gate, softmax, embedding lookup, optimizer) is not
  counted: it is small and bandwidth-bound.
"""

from __future__ import annotations

from collections.abc import Sequence

from zipper_pl.models.tower import TowerConfig
from zipper_pl.models.zipper import ZipperModel


def _mult(trainable: bool, act_grad: bool) -> int:
    """FLOPs per weight per token for one step: fwd 2, dX 2 if back-propagated, dW 2."""
    return 2 + (2 if act_grad else 0) + (2 if trainable else 0)


def block_matmul_params(cfg: TowerConfig) -> int:
    """Matmul weights of one block: qkv 3D^2 + out D^2 + SwiGLU (2*D*F in, F*D out)."""
    d, f = cfg.d_model, cfg.d_ff
    return 4 * d * d + 3 * d * f


def tower_flops(
    cfg: TowerConfig,
    lengths: Sequence[int],
    *,
    trainable: bool = True,
    act_grad: bool = True,
    head: bool = True,
) -> float:
    """One tower over sequences of real lengths ``lengths`` (one entry per sample)."""
    n_tok = sum(lengths)
    m = _mult(trainable, act_grad)
    attn_mult = 3 if act_grad else 1
    flops = m * cfg.n_layers * block_matmul_params(cfg) * n_tok
    flops += attn_mult * cfg.n_layers * 4 * cfg.d_model * sum(t * t for t in lengths)
    if head:
        flops += m * cfg.vocab_size * cfg.d_model * n_tok
    return float(flops)


def _linear_weights(module) -> int:
    """Matmul weights (not biases, norms or gates) of a module."""
    return sum(
        p.numel() for n, p in module.named_parameters() if n.endswith("weight") and p.dim() == 2
    )


def zipper_flops(
    model: ZipperModel, lengths: dict[str, Sequence[int]], has_targets: dict[str, bool]
) -> float:
    """One Zipper training step. lengths[t][b] = real tokens of sample b in tower t's stream.

    Activation gradients flow through every tower (the gated input projections and the fusion
    layers are trainable and sit at the bottom / between blocks), so frozen towers cost 4x
    their weights per token, trainable ones 6x. Only the first layer of a frozen tower's input
    projection skips dX (its input, the frozen embedding, needs no gradient).
    """
    total = 0.0
    for t in model.names:
        tower = model.towers[t]
        trainable = t not in model.frozen
        total += tower_flops(
            tower.cfg, lengths[t], trainable=trainable, act_grad=True, head=has_targets[t]
        )
        proj = model.input_proj[t]
        if proj.mode != "none":
            w = 6 * _linear_weights(proj.mlp)
            if not trainable:  # a frozen embedding needs no gradient: no dX in the first layer
                w -= 2 * proj.mlp.net[0].weight.numel()
            total += w * sum(lengths[t])
    for dst, src in model.dirs:
        layers = list(model.fusion[f"{dst}_from_{src}"])
        if not has_targets[dst]:  # the last update of a tower without loss is skipped
            layers = layers[:-1]
        for layer in layers:
            x = layer.xattn
            kv_side = _linear_weights(layer.proj) + x.kv.weight.numel()
            q_side = x.q.weight.numel() + x.proj.weight.numel() + _linear_weights(x.ffw)
            total += 6 * kv_side * sum(lengths[src]) + 6 * q_side * sum(lengths[dst])
            pairs = sum(a * b for a, b in zip(lengths[dst], lengths[src], strict=True))
            total += 3 * 4 * x.n_heads * x.head_dim * pairs
    return total
