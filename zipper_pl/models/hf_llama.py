"""Hugging Face Llama-family causal LMs as towers: import their weights into our ``Tower``, and
export a (fine-tuned) tower back to the Hugging Face layout it came from.

Why a weight mapping onto our ``Tower`` and not a wrapper around the HF model: the Zipper runs
the blocks of several towers in lockstep and inserts fusion layers between them
(``Tower.run_blocks(x, start, stop)``), with per-layer KV caches and stable state_dict keys; HF
decoders expose neither a partial block loop nor such a cache. The family is one architecture
(RMSNorm, half-split RoPE, SwiGLU, grouped-query attention) that our ``Tower`` covers with a few
options (``n_kv_heads``, ``head_dim``, ``qkv_bias``, an untied ``lm_head``, RoPE scaling); the
import is checked against transformers' logits, full and KV-cached (tests/test_hf_towers.py).

Only safetensors are read: a pickle (``pytorch_model.bin``) can run code when loaded.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import Tensor

from zipper_pl.errors import UserError
from zipper_pl.hub import CONFIG_JSON, SAFETENSORS, copy_side_files, weight_files
from zipper_pl.models.tower import Tower, TowerConfig

# model_type -> whether its q/k/v projections carry biases. SmolLM / SmolLM2 and Llama 2 / 3.x
# are "llama"; Mistral is Llama with a sliding window; Qwen2 adds q/k/v biases.
HF_FAMILIES: dict[str, bool] = {"llama": False, "mistral": False, "qwen2": True}
ROPE_TYPES = ("default", "linear", "llama3")


def read_hf_config(folder: Path) -> dict[str, Any]:
    """The folder's ``config.json`` with transformers' class defaults filled in."""
    # transformers is imported here, not at module level: it adds seconds to every CLI start
    # and only stages that read a Hugging Face model need it
    from transformers import AutoConfig

    if not (folder / CONFIG_JSON).is_file():
        raise UserError(f"{str(folder)!r} has no {CONFIG_JSON}: not a Hugging Face model folder")
    try:
        cfg = AutoConfig.from_pretrained(str(folder), local_files_only=True)
    except (ValueError, KeyError, OSError) as e:
        raise UserError(f"cannot read {folder / CONFIG_JSON}: {str(e).splitlines()[0]}") from None
    return cfg.to_dict() | {"model_type": cfg.model_type}


def _rope(hf: dict[str, Any]) -> dict[str, Any]:
    """RoPE settings of a transformers 4.x (rope_theta + rope_scaling) or 5.x (rope_parameters)
    config, as TowerConfig fields."""
    params = dict(hf.get("rope_parameters") or hf.get("rope_scaling") or {})
    rope_type = params.get("rope_type", params.get("type", "default"))
    if rope_type not in ROPE_TYPES:
        raise UserError(
            f"RoPE variant {rope_type!r} is not supported; supported: {', '.join(ROPE_TYPES)}"
        )
    if float(hf.get("partial_rotary_factor") or 1.0) != 1.0:
        raise UserError("partial rotary embeddings are not supported (partial_rotary_factor != 1)")
    out: dict[str, Any] = {
        "rope_base": float(params.get("rope_theta") or hf.get("rope_theta") or 10000.0),
        "rope_scaling": "none" if rope_type == "default" else rope_type,
    }
    if rope_type != "default":
        out["rope_factor"] = float(params["factor"])
    if rope_type == "llama3":
        out |= {
            "rope_low_freq_factor": float(params["low_freq_factor"]),
            "rope_high_freq_factor": float(params["high_freq_factor"]),
            "rope_original_max_len": int(params["original_max_position_embeddings"]),
        }
    return out


def tower_config_from_hf(hf: dict[str, Any]) -> TowerConfig:
    """The TowerConfig that reproduces an HF config, or a UserError naming what is supported."""
    family = hf.get("model_type")
    if family not in HF_FAMILIES:
        raise UserError(
            f"Hugging Face model_type {family!r} is not supported as a tower; supported: "
            f"{', '.join(HF_FAMILIES)} (Llama 2/3.x, SmolLM/SmolLM2, Mistral, Qwen2)"
        )
    if hf.get("hidden_act", "silu") != "silu":
        raise UserError(f"{family}: hidden_act {hf['hidden_act']!r} is not supported (silu only)")
    if hf.get("mlp_bias") or (family != "qwen2" and hf.get("attention_bias")):
        raise UserError(f"{family}: attention output / MLP biases are not supported")
    d_model, n_heads = int(hf["hidden_size"]), int(hf["num_attention_heads"])
    head_dim = int(hf.get("head_dim") or d_model // n_heads)
    max_len = int(hf.get("max_position_embeddings") or 2048)
    window = hf.get("sliding_window")
    sliding = window and (family == "mistral" or hf.get("use_sliding_window"))
    if sliding and int(window) < max_len:
        # sliding-window attention equals full attention up to the window: stay inside it
        print(f"[hf] {family}: max_seq_len {max_len} -> {int(window)}, its sliding window")
        max_len = int(window)
    return TowerConfig(
        vocab_size=int(hf["vocab_size"]),
        n_layers=int(hf["num_hidden_layers"]),
        n_heads=n_heads,
        d_model=d_model,
        d_ff=int(hf["intermediate_size"]),
        max_seq_len=max_len,
        norm_eps=float(hf.get("rms_norm_eps") or 1e-6),
        n_kv_heads=int(hf.get("num_key_value_heads") or n_heads),
        head_dim=0 if head_dim * n_heads == d_model else head_dim,
        qkv_bias=HF_FAMILIES[family],
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        **_rope(hf),
    )


def _read_tensors(folder: Path) -> dict[str, Tensor]:
    tensors: dict[str, Tensor] = {}
    for path in weight_files(folder):
        try:
            with safe_open(str(path), framework="pt") as f:
                for k in f.keys():  # noqa: SIM118 (safe_open is not a dict)
                    tensors[k] = f.get_tensor(k)
        except (OSError, RuntimeError, ValueError) as e:
            raise UserError(
                f"{path} is not readable safetensors ({e}): download it again"
            ) from None
    return tensors


# HF per-layer names -> ours; q/k/v and gate/up are concatenated into our fused projections
_FUSED = {"attn.qkv": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "mlp.gate_up": ("mlp.gate_proj", "mlp.up_proj")}  # fmt: skip
_RENAMED = {"norm_attn.weight": "input_layernorm.weight",
            "norm_mlp.weight": "post_attention_layernorm.weight",
            "attn.proj.weight": "self_attn.o_proj.weight",
            "mlp.proj.weight": "mlp.down_proj.weight"}  # fmt: skip


def state_dict_from_hf(hf_sd: dict[str, Tensor], cfg: TowerConfig) -> dict[str, Tensor]:
    """An HF Llama-family state dict as our Tower's state dict (float32)."""
    sd = {
        "tok_emb.weight": hf_sd["model.embed_tokens.weight"],
        "norm_f.weight": hf_sd["model.norm.weight"],
    }
    if not cfg.tie_embeddings:
        sd["lm_head.weight"] = hf_sd["lm_head.weight"]
    for i in range(cfg.n_layers):
        hf_pre, pre = f"model.layers.{i}.", f"blocks.{i}."
        for ours, theirs in _RENAMED.items():
            sd[pre + ours] = hf_sd[hf_pre + theirs]
        for ours, parts in _FUSED.items():
            sd[f"{pre}{ours}.weight"] = torch.cat([hf_sd[f"{hf_pre}{p}.weight"] for p in parts])
        if cfg.qkv_bias:
            sd[pre + "attn.qkv.bias"] = torch.cat(
                [hf_sd[f"{hf_pre}{p}.bias"] for p in _FUSED["attn.qkv"]]
            )
    return {k: v.float() for k, v in sd.items()}


def state_dict_to_hf(tower: Tower) -> dict[str, Tensor]:
    """Our Tower's weights under the HF Llama-family names (the inverse of the import)."""
    cfg, sd = tower.cfg, tower.state_dict()
    out = {
        "model.embed_tokens.weight": sd["tok_emb.weight"],
        "model.norm.weight": sd["norm_f.weight"],
    }
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["lm_head.weight"]
    splits = {"attn.qkv": tower.blocks[0].attn.split, "mlp.gate_up": [cfg.d_ff, cfg.d_ff]}
    for i in range(cfg.n_layers):
        hf_pre, pre = f"model.layers.{i}.", f"blocks.{i}."
        for ours, theirs in _RENAMED.items():
            out[hf_pre + theirs] = sd[pre + ours]
        for ours, parts in _FUSED.items():
            suffixes = ("weight", "bias") if ours == "attn.qkv" and cfg.qkv_bias else ("weight",)
            for suffix in suffixes:
                chunks = sd[f"{pre}{ours}.{suffix}"].split(splits[ours])
                out |= {f"{hf_pre}{p}.{suffix}": c for p, c in zip(parts, chunks, strict=True)}
    return {k: v.detach().contiguous().cpu() for k, v in out.items()}


def load_hf_tower(folder: str | Path) -> Tower:
    """A Tower holding the weights of the HF causal LM in ``folder`` (config.json +
    safetensors), float32."""
    folder = Path(folder)
    cfg = tower_config_from_hf(read_hf_config(folder))
    sd = state_dict_from_hf(_read_tensors(folder), cfg)
    with torch.device("meta"):  # no random init of weights that are replaced right away
        tower = Tower(cfg)
    missing = set(tower.state_dict()) - set(sd)
    if missing:
        raise UserError(f"{str(folder)!r} lacks weights {sorted(missing)[:3]}: download it again")
    tower.load_state_dict(sd, assign=True)
    return tower


def export_hf_tower(tower: Tower, side_files: Path, out: str | Path) -> Path:
    """Write ``tower`` as an HF model folder (config, tokenizer, ``model.safetensors``) that
    ``AutoModelForCausalLM.from_pretrained(out)`` loads; ``side_files`` is the folder of the
    config and tokenizer the tower was imported with."""
    out = Path(out)
    expected = tower_config_from_hf(read_hf_config(side_files))
    if dataclasses.replace(tower.cfg, dropout=expected.dropout) != expected:
        raise UserError(
            f"this tower no longer has the shape of {side_files / CONFIG_JSON} (vocabulary "
            "extended?): only a tower imported from Hugging Face and kept in shape exports"
        )
    copy_side_files(side_files, out)
    tensors = state_dict_to_hf(tower)
    if tower.cfg.tie_embeddings:  # transformers re-ties lm_head to the embedding on load
        tensors.pop("lm_head.weight", None)
    save_file(tensors, str(out / SAFETENSORS), metadata={"format": "pt"})
    return out
