"""Our Tower against its peer, transformers' ``LlamaForCausalLM``, at the same dims and weights.

The peer holds our tower's weights (``state_dict_to_hf``, the export path) and its logits are
checked against ours before anything is timed, so both sides compute the same function on the
same batch; the loss is the same cross-entropy on the logits. Training steps (forward + backward
+ clip + AdamW, ``bench_train.make_step``) alternate between the two in rounds, so machine drift
hits both alike; the row is the median over rounds of ``peer step / our step`` (above 1: ours is
faster). With ``--compile`` a second row compiles each block of both (ours as ``train.compile``
does, the peer's decoder layers the same way: regional compilation on both sides).

``python -m benchmarks.bench_hf_peer [--size demo] [--rounds 5] [--compile]``
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics

import torch

from benchmarks import bench_train
from benchmarks import synthetic as syn
from benchmarks.common import Env, detect, sync, time_fn
from zipper_pl.models.hf_llama import state_dict_to_hf, tower_config_from_hf
from zipper_pl.models.tower import Tower, TowerConfig
from zipper_pl.runs.trainer import compile_forward


def llama_config(cfg: TowerConfig):
    """The ``LlamaConfig`` of ``cfg``'s shape (checked by the inverse, the import's mapping)."""
    from transformers import LlamaConfig  # seconds to import: only this benchmark needs it

    if cfg.qkv_bias or cfg.rope_scaling != "none":
        raise ValueError("the peer benchmark covers plain Llama towers (no qkv bias, no scaling)")
    hf = LlamaConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.d_model,
        intermediate_size=cfg.d_ff,
        num_hidden_layers=cfg.n_layers,
        num_attention_heads=cfg.n_heads,
        num_key_value_heads=cfg.kv_heads,
        head_dim=cfg.dim_head,
        max_position_embeddings=cfg.max_seq_len,
        rms_norm_eps=cfg.norm_eps,
        tie_word_embeddings=cfg.tie_embeddings,
        rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_base},
        attn_implementation="sdpa",  # ours runs scaled_dot_product_attention too
    )
    back = tower_config_from_hf(hf.to_dict() | {"model_type": "llama"})
    same = {"dropout": 0.0, "n_kv_heads": cfg.kv_heads, "head_dim": back.head_dim}  # 0 = default
    if back != dataclasses.replace(cfg, **same) or back.dim_head != cfg.dim_head:
        raise AssertionError(f"peer config differs from ours: {back} != {cfg}")
    return hf


def peer_of(tower: Tower) -> torch.nn.Module:
    """A ``LlamaForCausalLM`` holding ``tower``'s weights, float32, training mode."""
    from transformers import LlamaForCausalLM

    peer = LlamaForCausalLM(llama_config(tower.cfg)).float()
    missing, unexpected = peer.load_state_dict(state_dict_to_hf(tower), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:  # tied head: not stored
        raise AssertionError(f"weights do not map: missing {missing}, unexpected {unexpected}")
    return peer.train()


def _same_function(tower: Tower, peer: torch.nn.Module, x: torch.Tensor, env: Env) -> float:
    """Largest |logit difference| between ours and the peer on ``x`` (eval mode, no grad), in
    float32 on every device: the check is of weights and layout, not of the timed precision."""
    for model in (tower, peer):
        model.eval()
    with torch.no_grad():
        diff = (tower(x).float() - peer(input_ids=x).logits.float()).abs().max().item()
    for model in (tower, peer):
        model.train()
    tol = 1e-2 if env.cuda else 1e-3  # CUDA may run float32 matmuls in TF32
    if diff > tol:
        raise AssertionError(f"the peer's logits differ from ours by {diff:.2e} (> {tol})")
    return diff


def _compile_peer(peer: torch.nn.Module) -> None:
    """Each decoder layer compiled as ``compile_forward`` compiles our blocks."""
    for layer in peer.model.layers:
        layer.forward = torch.compile(layer.forward, dynamic=True)


def _ratio_rows(ours_step, peer_step, env: Env, rounds: int, reps: int) -> dict:
    ours, peers = [], []
    for _ in range(rounds):  # alternate: drift on a shared machine hits both sides alike
        ours.append(time_fn(ours_step, env, warmup=1, reps=reps)["median_s"])
        peers.append(time_fn(peer_step, env, warmup=1, reps=reps)["median_s"])
    ratios = [p / o for o, p in zip(ours, peers, strict=True)]
    return {
        "ours_step_s": statistics.median(ours),
        "peer_step_s": statistics.median(peers),
        "peer_over_ours": statistics.median(ratios),
        "ratio_min": min(ratios),
        "ratio_max": max(ratios),
        "rounds": rounds,
    }


def run(env: Env, size: str, rounds: int = 5, reps: int = 3) -> list[dict]:
    """One row (eager) or two (``env.compile``: also both compiled) for the text tower."""
    w = syn.WORKLOADS[size]
    tower = syn.towers(size)["text"].to(env.device).train()
    peer = peer_of(tower).to(env.device)
    x, y = (t.to(env.device) for t in syn.lm_batch(tower.cfg.vocab_size, w.lm_batch, w.text_seq, 1))
    diff = _same_function(tower, peer, x, env)
    loss = bench_train.logits_loss  # the same loss on both sides
    ours_step = bench_train.make_step(tower, lambda: loss(tower(x), y), env)
    peer_step = bench_train.make_step(peer, lambda: loss(peer(input_ids=x).logits, y), env)
    base = {"size": size, "batch": f"{w.lm_batch}x{w.text_seq}", "max_logit_diff": diff}
    rows = [base | {"compiled": False} | _ratio_rows(ours_step, peer_step, env, rounds, reps)]
    if env.compile:
        compile_forward(tower)
        _compile_peer(peer)
        ours_step(), peer_step()  # compile both before any timing
        sync(env)
        compiled = _ratio_rows(ours_step, peer_step, env, rounds, reps)
        rows.append(base | {"compiled": True} | compiled)
    return rows


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_hf_peer", description=__doc__)
    ap.add_argument("--size", default="demo", choices=sorted(syn.WORKLOADS))
    ap.add_argument("--rounds", type=int, default=5, help="alternations of ours and the peer")
    ap.add_argument("--compile", action="store_true", help="also both compiled, per block")
    args = ap.parse_args(argv)
    env = detect(compile=args.compile)
    for r in run(env, args.size, max(1, args.rounds)):
        how = "compiled" if r["compiled"] else "eager"
        print(
            f"{env.name}: {args.size} text tower {r['batch']}, {how}: ours {r['ours_step_s']:.4f}"
            f" s, LlamaForCausalLM {r['peer_step_s']:.4f} s per step; peer / ours "
            f"{r['peer_over_ours']:.2f} (rounds {r['ratio_min']:.2f}-{r['ratio_max']:.2f})"
        )


if __name__ == "__main__":
    main()
