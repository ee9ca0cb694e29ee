"""Hugging Face causal LMs as towers: exact import (full and KV-cached), export back, refusal of
what is not supported, and the whole zip stage with `TEXT_TOWER=hf:<folder>`. Nothing is
downloaded: random-initialised models are saved locally and loaded through the hub-id code path."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import huggingface_hub.constants
import numpy as np
import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (
    AutoModelForCausalLM,
    GPT2Config,
    LlamaConfig,
    LlamaForCausalLM,
    PreTrainedTokenizerFast,
    Qwen2Config,
    Qwen2ForCausalLM,
)

from tests.conftest import ROOT, run_make, tiny_config
from zipper_pl.data.corpora.embedded import split_pools
from zipper_pl.data.tokenizers.hf_tokenizer import HFTextTokenizer, load_text_tokenizer
from zipper_pl.errors import UserError
from zipper_pl.hub import folder_fingerprint, hub_folder
from zipper_pl.models.hf_llama import export_hf_tower, load_hf_tower, tower_config_from_hf
from zipper_pl.models.sequences import ModalitySpec
from zipper_pl.models.single import SingleDecoder
from zipper_pl.runs.finetuned import load_finetuned
from zipper_pl.runs.identity import read_identity

SMALL = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,  # grouped-query attention
    intermediate_size=96,
    max_position_embeddings=256,
)
LLAMA3_ROPE = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}  # fmt: skip


def bpe_tokenizer(vocab_size: int = 160) -> PreTrainedTokenizerFast:
    """A byte-level BPE trained on the embedded corpus's text pool (as a user's LM would have)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>", "<s>", "</s>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    cfg = tiny_config(Path("unused"), Path("unused"), "pretrain_text.yaml")
    tok.train_from_iterator(split_pools(cfg.data.embedded)["text"], trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<|endoftext|>"
    )


def save_model(folder: Path, family: str = "llama", seed: int = 0, **overrides) -> Path:
    """A random-initialised HF causal LM + tokenizer saved as a hub snapshot would be."""
    torch.manual_seed(seed)
    tok = bpe_tokenizer()
    vocab = len(tok) + 5  # embeddings padded beyond the tokenizer, as real models do
    qwen = family == "qwen2"
    cfg_cls, model_cls = (
        (Qwen2Config, Qwen2ForCausalLM) if qwen else (LlamaConfig, LlamaForCausalLM)
    )
    model = model_cls(cfg_cls(vocab_size=vocab, **{**SMALL, **overrides}))
    with torch.no_grad():  # larger than HF's 0.02 init, so the logits are far from uniform
        for name, p in model.named_parameters():
            if "norm" not in name:
                p.normal_(0.0, 0.3 if p.dim() == 1 else 0.15)
    model.save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return folder


def logits_match(folder: Path, device: str | torch.device = "cpu") -> None:
    """The imported tower's full and KV-cached logits equal transformers' (on ``device``)."""
    hf = AutoModelForCausalLM.from_pretrained(folder).eval().to(device)
    tower = load_hf_tower(folder).eval().to(device)
    ids = torch.randint(
        0, hf.config.vocab_size, (2, 40), generator=torch.Generator().manual_seed(1)
    ).to(device)
    with torch.no_grad():
        ref = hf(ids).logits
        assert ref.std() > 0.5  # a test that can fail: logits are not all alike
        assert (tower(ids) - ref).abs().max() < 1e-4
        cache = tower.new_cache(2, 64)
        steps = [tower(ids[:, :25], cache=cache)]
        steps += [tower(ids[:, t : t + 1], cache=cache) for t in range(25, 40)]
        assert (torch.cat(steps, 1) - ref).abs().max() < 1e-4


def test_llama_gqa_llama3_rope_logits_equal_transformers(tmp_path):
    logits_match(save_model(tmp_path, rope_scaling=LLAMA3_ROPE))
    assert tower_config_from_hf(json.loads((tmp_path / "config.json").read_text())).n_kv_heads == 2


def test_qwen2_qkv_bias_logits_equal_transformers(tmp_path):
    folder = save_model(tmp_path, family="qwen2")
    logits_match(folder)
    assert load_hf_tower(folder).cfg.qkv_bias


def test_tied_smollm_shape_and_export_round_trip(tmp_path):
    folder = save_model(tmp_path / "src", tie_word_embeddings=True)
    tower = load_hf_tower(folder)
    assert tower.cfg.tie_embeddings and "lm_head.weight" not in tower.state_dict()
    with torch.no_grad():
        tower.blocks[0].attn.proj.weight.add_(0.1)  # "fine-tuned"
    out = export_hf_tower(tower, folder, tmp_path / "out")
    back = AutoModelForCausalLM.from_pretrained(out).eval()
    ids = torch.randint(0, tower.cfg.vocab_size, (1, 12))
    with torch.no_grad():
        assert (back(ids).logits - tower.eval()(ids)).abs().max() < 1e-4
    assert (
        HFTextTokenizer(out).encode(["hello"])[0].tolist()
        == HFTextTokenizer(folder).encode(["hello"])[0].tolist()
    )


def test_unsupported_architecture_and_rope_are_refused(tmp_path):
    GPT2Config(n_layer=1, n_embd=32, n_head=2).save_pretrained(tmp_path / "gpt2")
    with pytest.raises(UserError, match="supported: llama, mistral, qwen2"):
        tower_config_from_hf({"model_type": "gpt2"})
    cfg = LlamaConfig(**SMALL).to_dict() | {"model_type": "llama"}
    cfg["rope_parameters"] = {"rope_type": "yarn", "factor": 4.0, "rope_theta": 1e4}
    with pytest.raises(UserError, match="RoPE variant 'yarn' is not supported; supported: default"):
        tower_config_from_hf(cfg)


def test_pickle_only_folder_is_refused(tmp_path):
    folder = save_model(tmp_path)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(UserError, match="pickle"):
        load_hf_tower(folder)


def test_offline_hub_id_is_one_line_naming_the_key(monkeypatch, tmp_path):
    # read by huggingface_hub at import: patched where it looks (an empty cache, no network)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError) as e:
        hub_folder("hf:HuggingFaceTB/SmolLM2-135M", "inputs.text")
    assert "\n" not in str(e.value) and "inputs.text=<folder with config.json" in str(e.value)


def test_hf_tokenizer_and_fingerprint(tmp_path):
    folder = save_model(tmp_path)
    tok = load_text_tokenizer(folder)
    assert isinstance(tok, HFTextTokenizer) and tok.vocab_size == len(tok.tok) + 5
    ids = tok.encode(["the cat sat on the mat"])[0]
    assert tok.decode([*ids.tolist(), tok.eos_id]) == "the cat sat on the mat"
    before = folder_fingerprint(folder)
    (folder / "tokenizer_config.json").write_text(
        (folder / "tokenizer_config.json").read_text().replace("</s>", "<s>", 1)
    )
    assert folder_fingerprint(folder) != before  # a changed tokenizer is another tower


def test_single_decoder_extends_an_untied_imported_tower(tmp_path):
    tower = load_hf_tower(save_model(tmp_path))
    v = tower.cfg.vocab_size
    specs = [ModalitySpec("text", v, 1, 2, 0), ModalitySpec("speech", 6, 4, 5, 5)]
    single = SingleDecoder.from_text_tower(tower, specs, seed=0)
    head = single.tower.lm_head.weight
    assert head.shape[0] == v + 6 and torch.equal(head[:v], tower.lm_head.weight)
    ids = torch.randint(0, v, (1, 10))
    with torch.no_grad():  # the original vocabulary's logits are unchanged
        assert torch.allclose(single.tower(ids)[..., :v], tower(ids), atol=1e-5)


def test_make_zip_asr_with_an_hf_text_tower_keeps_frozen_logits(tmp_path, data_root, tiny_towers):
    """The acceptance command: `make zip-asr SCALE=tiny MAX_STEPS=3 TEXT_TOWER=hf:<folder>` (with
    the session's tiny speech tower and data, so only the zip stage runs here)."""
    folder = save_model(tmp_path / "smol", rope_scaling=LLAMA3_ROPE)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    r = run_make("zip-asr", "SCALE=tiny", "MAX_STEPS=3", f"TEXT_TOWER=hf:{folder}",
                 f"RUNS={tmp_path / 'runs'}", f"DATA_ROOT={data_root}",
                 f"SPEECH_TOWER={tiny_towers['speech']}", f"PY={sys.executable}",
                 f"ARGS=data.cache_dir={data_root / 'cache'} train.accelerator=cpu",
                 env=env)  # fmt: skip
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    (stage,) = [p.parent for p in (tmp_path / "runs").glob("*/zipper-asr-*/model.safetensors")]
    assert not list((tmp_path / "runs").glob("*/pretrain-text*"))  # no text tower was trained
    assert read_identity(stage)["inputs"]["text"] == folder_fingerprint(folder)
    ft = load_finetuned(stage)
    assert isinstance(ft.text_tok, HFTextTokenizer)
    hf = AutoModelForCausalLM.from_pretrained(folder).eval()
    ids = torch.randint(0, hf.config.vocab_size, (2, 30))
    with torch.no_grad():
        assert (ft.model.towers["text"](ids) - hf(ids).logits).abs().max() < 1e-4
    (text,) = ft.transcribe([np.array([1, 2, 3])])
    assert isinstance(text, str)
    # the zipped stage's text tower goes back to HF format (frozen here: the original weights)
    out = subprocess.run(
        [sys.executable, "-m", "zipper_pl", "export-hf", str(stage), str(tmp_path / "exported")],
        cwd=ROOT, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    back = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    with torch.no_grad():
        assert (back(ids).logits - hf(ids).logits).abs().max() < 1e-5


def test_sliding_window_cap_and_missing_specials_are_shown(tmp_path, capsys):
    """Nothing silent: the max_seq_len cap and eos standing in for bos / pad print a line."""
    cfg = LlamaConfig(**SMALL).to_dict() | {"model_type": "mistral", "sliding_window": 64}
    assert tower_config_from_hf(cfg).max_seq_len == 64
    assert "max_seq_len 256 -> 64" in capsys.readouterr().out
    folder = save_model(tmp_path)
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("bos_token", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    tok = HFTextTokenizer(folder)
    assert tok.bos_id == tok.eos_id and "no bos token: eos stands in" in capsys.readouterr().out
