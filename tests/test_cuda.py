"""CUDA checks: the Zipper on a GPU computes what it computes on the CPU, caches agree on the
device, and bf16 autocast trains. Skipped without CUDA; `benchmarks/device_check.sh` runs them on
a lent GPU (CI has none)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.conftest import tiny_config
from tests.test_cpu_bf16 import bf16_zipper_losses
from tests.test_hf_towers import LLAMA3_ROPE, logits_match, save_model
from tests.test_single import CASES as SINGLE_CASES
from tests.test_single import _model as single_model
from tests.test_ssl_units import cfg as units_config
from tests.test_ssl_units import pool, save_tiny_hubert
from tests.test_zipper import PRIOR, SPECS, model, samples, sharpen
from zipper_pl.data.tokenizers.ssl_units import SSLUnitsTokenizer
from zipper_pl.models import static_decoding
from zipper_pl.models.sequences import collate_segments
from zipper_pl.runs.identity import read_identity
from zipper_pl.stages.chain import pretrain

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


def to_device(batch: dict, device: torch.device) -> dict:
    return {t: {k: v.to(device) for k, v in d.items()} for t, d in batch.items()}


@pytest.fixture(autouse=True)
def no_tf32():
    """TF32 matmuls differ from fp32 in the 4th digit; the parity checks want fp32."""
    old = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = old


@pytest.mark.parametrize("prior", [False, True], ids=["content", "align_prior"])
def test_cuda_logits_match_cpu(prior):
    m = model(gate_init=0.7, seed=3, **(PRIOR if prior else {}))
    batch = collate_segments(samples(["speech", "text"], [(5, 3), (2, 6)]), SPECS)
    with torch.no_grad():
        ref = m(batch)
        got = m.to(CUDA)(to_device(batch, CUDA))
    for t in ref:
        torch.testing.assert_close(got[t].cpu(), ref[t], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("outputs", [["text"], ["speech"]])
def test_cuda_cached_generation_equals_uncached(outputs):
    m = sharpen(model(gate_init=0.7, seed=3)).to(CUDA)
    inputs = ["speech"] if outputs == ["text"] else ["text"]
    xs = samples(inputs, [(5,), (2,), (7,)], seed=1)
    kw = dict(max_new_tokens=6, temperature=1.0, top_k=12, seed=0)
    cached, ref = m.generate(xs, outputs, **kw), m.generate_uncached(xs, outputs, **kw)
    for c, r in zip(cached, ref, strict=True):
        assert torch.equal(c[0].tokens.cpu(), r[0].tokens.cpu())


def counting_captures(monkeypatch) -> list:
    """One entry per CUDA graph the static decoding steps capture."""
    captures = []
    real = static_decoding._capture
    monkeypatch.setattr(static_decoding, "_capture", lambda *a: captures.append(1) or real(*a))
    return captures


def engine_case(arch: str) -> tuple:
    """(model on the GPU, inputs, outputs) of the engine tests: text then speech out."""
    if arch == "zipper":
        m = sharpen(model(gate_init=0.7, seed=3, **PRIOR)).to(CUDA)
        return m, samples(["speech"], [(5,), (2,), (7,)], seed=1), ["text", "speech"]
    return single_model().to(CUDA), SINGLE_CASES[2][0], ["text", "speech"]


@pytest.mark.parametrize("arch", ["zipper", "single"])
@pytest.mark.parametrize("autocast", [False, True], ids=["fp32", "bf16"])
def test_cuda_static_engine_replays_graphs_and_equals_the_others(
    monkeypatch, capsys, arch, autocast
):
    """The static engine captures each decoding step once and replays it (no fallback), and its
    greedy tokens equal the dynamic engine's and the reference's on the device."""
    captures = counting_captures(monkeypatch)
    m, xs, out = engine_case(arch)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        got = {e: m.generate(xs, out, 30, engine=e) for e in ("static", "dynamic", "uncached")}
    assert len(captures) == len(out) and "capture failed" not in capsys.readouterr().err
    for e in ("dynamic", "uncached"):
        for a, b in zip(got["static"], got[e], strict=True):
            assert [s.tokens.tolist() for s in a] == [s.tokens.tolist() for s in b], e


@pytest.mark.parametrize("arch", ["zipper", "single"])
def test_cuda_compiled_engine_captures_its_compiled_step_and_equals_the_dynamic_one(
    monkeypatch, capsys, arch
):
    """The compiled engine compiles the step, then captures it as the static engine does (no
    fallback), with the dynamic engine's greedy tokens (fp32: inductor's kernels may round
    differently from eager ones in bf16)."""
    captures = counting_captures(monkeypatch)
    m, xs, out = engine_case(arch)
    got = m.generate(xs, out, 30, engine="compiled")
    ref = m.generate(xs, out, 30, engine="dynamic")
    assert len(captures) == len(out) and "capture failed" not in capsys.readouterr().err
    for a, b in zip(got, ref, strict=True):
        assert [s.tokens.tolist() for s in a] == [s.tokens.tolist() for s in b]


def test_bf16_autocast_training_lowers_the_loss():
    losses = bf16_zipper_losses(CUDA)
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < 0.8 * losses[0]


def test_bf16_mixed_pretraining_with_gradient_clipping(data_root, tmp_path):
    """The GPU default (bf16-mixed) with grad_clip > 0 used to stop at the first step: Lightning
    refuses clipping with the fused AdamW this project picked on CUDA."""
    cfg = tiny_config(
        data_root, tmp_path, "pretrain_text.yaml", "train.accelerator=gpu",
        "train.precision=bf16-mixed", "train.grad_clip=1.0", "train.max_steps=3",
    )  # fmt: skip
    out = pretrain(cfg)
    assert (out / "model.safetensors").is_file() and read_identity(out)


def test_cuda_hf_imported_tower_matches_transformers_on_the_gpu(tmp_path):
    """The imported Llama (GQA, llama3 rope) on CUDA: full and KV-cached logits equal HF's."""
    logits_match(save_model(tmp_path, rope_scaling=LLAMA3_ROPE), CUDA)


def test_cuda_hubert_units_equal_cpu_units(tmp_path):
    """audio.device=cuda gives the CPU's features and (argmin over the same centroids) units."""
    folder = save_tiny_hubert(tmp_path / "hubert")
    cpu = SSLUnitsTokenizer(units_config(folder))
    cpu.fit(pool())
    gpu = SSLUnitsTokenizer(units_config(folder, device="cuda"))
    gpu.centroids = cpu.centroids.to(CUDA)
    waves = pool()
    for a, b in zip(gpu.features(waves), cpu.features(waves), strict=True):
        assert a.device.type == "cuda"
        torch.testing.assert_close(a.cpu(), b, atol=1e-4, rtol=1e-4)
    same = [np.mean(a == b) for a, b in zip(gpu.encode(waves), cpu.encode(waves), strict=True)]
    assert min(same) > 0.97, same  # near-ties may flip a frame; most must not
