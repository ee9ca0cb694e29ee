"""The benchmark suite runs end to end at tiny scale, and its analytic FLOP counts agree with
PyTorch's own matmul FLOP counter (no timing is asserted: timings are the suite's business)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import bench_train
from benchmarks import flops as fl
from benchmarks import synthetic as syn
from benchmarks.common import detect
from benchmarks.report import targets
from benchmarks.run import run
from zipper_pl.models.sequences import collate_segments, token_loss


@pytest.fixture
def one_thread():
    # the suite's tiny ops on a shared 2-core machine: one thread avoids OpenMP spin contention
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def test_quick_suite_writes_complete_report(tmp_path, one_thread):
    res = run(quick=True, out=tmp_path)
    on_disk = json.loads((tmp_path / "bench.json").read_text())
    assert on_disk["targets"] == res["targets"] and on_disk["device"] in ("cpu", "cuda")
    md = (tmp_path / "bench.md").read_text()
    assert res["machine"] in md and "### Targets" in md

    cases = {r["case"] for r in res["train"]}
    assert {"text tower LM", "speech tower LM", "zipper ASR, text frozen"} <= cases
    assert {"zipper ASR, unfrozen", "single decoder ASR"} <= cases
    for r in res["train"]:
        for k in ("step_s", "tokens_per_s", "model_flops", "utilisation", "peak_mb"):
            assert math.isfinite(r[k]) and r[k] > 0, (r["case"], k)
    assert all(r["vs_towers"] > 0 for r in res["train"] if r["case"].startswith("zipper"))

    assert len(res["generate"]) == 3 * 2 * 2  # cases x batches x lengths
    for g in res["generate"]:
        assert g["generated"] == g["batch"] * g["new_tokens"]  # the length really was forced
        assert g["identical"] is True  # static == uncached, token for token
        assert g["identical_dynamic"] is True and g["vs_dynamic"] > 0  # and == the dynamic one
    assert {"units", "encodec"} <= set(res["tokenize"])
    assert len(res["data"]) == 4 and all(d["samples_per_s"] > 0 for d in res["data"].values())
    names = " ".join(t["target"] for t in res["targets"])
    assert "cached / uncached" in names and "data loading" in names
    # the HF peer ran our tower's weights (same logits) and is a target row with a ratio
    (peer,) = res["hf_peer"]
    assert peer["max_logit_diff"] < 1e-3 and peer["peer_over_ours"] > 0
    assert "LlamaForCausalLM step / our tower's" in names and "LlamaForCausalLM" in md


def _matmul_flops(loss_fn) -> int:
    with FlopCounterMode(display=False) as fc:
        loss_fn().backward()
    return fc.get_total_flops()  # mm/addmm only: CPU SDPA is not counted by PyTorch


def test_analytic_flops_match_pytorch_counter(one_thread):
    tower = syn.towers("tiny")["text"]
    x, y = syn.lm_batch(syn.TEXT_VOCAB, 2, 16, seed=0)
    c = tower.cfg
    attn = 3 * c.n_layers * 4 * c.d_model * 2 * 16 * 16
    assert _matmul_flops(lambda: bench_train._lm_loss(tower, x, y)) == (
        fl.tower_flops(c, [16, 16]) - attn
    )

    # unpadded pairs, run as training runs them: only the tower with a loss computes logits
    prs = [(np.arange(10) % syn.SPEECH_K, np.arange(5) + 4) for _ in range(2)]
    batch = collate_segments(syn.task_samples(prs, "asr"), syn.specs())
    lengths = {t: batch[t]["valid"].sum(1).tolist() for t in batch}
    for freeze in ("text", "none"):
        m = syn.zipper("tiny", freeze)
        attn = sum(
            3 * m.towers[t].cfg.n_layers * 4 * m.towers[t].cfg.d_model * sum(n * n for n in ln)
            for t, ln in lengths.items()
        )
        for dst, src in m.dirs:
            layers = list(m.fusion[f"{dst}_from_{src}"])
            # the last update into the speech tower is skipped: nothing reads it in ASR
            for layer in layers[:-1] if dst == "speech" else layers:
                pairs = sum(a * b for a, b in zip(lengths[dst], lengths[src], strict=True))
                attn += 3 * 4 * layer.xattn.n_heads * layer.xattn.head_dim * pairs
        analytic = fl.zipper_flops(m, lengths, {"text": True, "speech": False})
        counted = _matmul_flops(lambda m=m: token_loss(m(batch, outputs=["text"]), batch)[0])
        assert counted == analytic - attn, freeze


@pytest.mark.slow  # torch.compile: tens of seconds of tracing
def test_compile_flag_times_every_case_compiled_too(one_thread, traced_compile):
    """``make bench BENCH_ARGS=--compile``: each training case gets a second, compiled row
    (timed after compilation) with its own Zipper / towers ratio and targets."""
    env = detect(quick=True, force_cpu=True, compile=True)
    rows = bench_train.run(env, ["tiny"], reps=1, matmul_flops=1e9)
    eager = [r["case"] for r in rows if not r["compiled"]]
    compiled = [r for r in rows if r["compiled"]]
    assert [r["case"] for r in compiled] == eager and len(eager) == 7
    # every block and cross-attention layer of each case's model (train.compile's regions)
    assert len(traced_compile) == sum(r["compiled_regions"] for r in compiled)
    for r in compiled:
        assert r["compiled_regions"] >= 2, r["case"]
        assert r["compile_s"] > 0 and r["vs_eager"] > 0 and math.isfinite(r["utilisation"])
    assert all("vs_towers" in r for r in rows if r["case"].startswith("zipper"))
    res = {"train": rows, "device": "cpu", "sizes": ["tiny"], "generate": [], "tokenize": {}}
    names = [t["target"] for t in targets({**res, "data": {}})]
    assert sum("torch.compile" in n for n in names) == 3  # text tower util + 2 Zipper ratios


@pytest.mark.parametrize("size", sorted(syn.WORKLOADS))
def test_synthetic_models_build_with_each_scales_zip_config(size):
    """Each scale's benchmark Zipper is built from that scale's zip_asr.yaml; the demo one has
    ``align_prior``, which needs the tokens-per-word figures the zip stage measures (make bench
    at demo scale failed on that while the tiny smoke suite passed)."""
    cfg = syn.zip_config(size, "text")
    if size == "demo":
        assert cfg.align_prior
    with torch.device("meta"):  # shapes only: SCALE=s weights need not be allocated
        model = syn.zipper(size, "text")
    assert set(model.towers) == {"text", "speech"}


def test_cpu_bf16_times_every_training_case_in_both_precisions(one_thread):
    from benchmarks import bench_cpu_bf16

    res = bench_cpu_bf16.run(["tiny"], reps=1, with_s=False)
    cases = [r["case"] for r in res["rows"]]
    assert len(cases) == 7 and "zipper ASR, text frozen" in cases
    assert all(r["fp32_step_s"] > 0 and r["bf16_step_s"] > 0 for r in res["rows"])
    assert set(res["matmul"]) == {512, 2048}
    md = bench_cpu_bf16.markdown(res)
    assert md.count("| tiny |") == 7 and "bf16 kernels" in md


def test_demo_lanes_runs_make_j2_on_the_demos_dependencies(tmp_path):
    """The lane measure runs GNU make on a stand-in Makefile: two lanes take about half the
    time of one, and no order beats the critical path (text + speech towers, then a stage)."""
    from benchmarks import demo_lanes

    walls = dict.fromkeys(demo_lanes.NEEDS, 100.0) | {"vocoder": 300.0}
    order = demo_lanes.MAKEFILE_ORDER
    one = demo_lanes.makespan(order, walls, lanes=1, scale=1000)  # 1,000 s of sleeping: ~1 s
    two = demo_lanes.makespan(order, walls, lanes=2, scale=1000)
    assert 1000 <= one < 1300 and 500 <= two < 0.7 * one
    folders = {}
    for stage in demo_lanes.NEEDS:
        folders[stage] = tmp_path / f"{stage}-units-s0-abc"
        folders[stage].mkdir()
        (folders[stage] / "metrics.json").write_text(json.dumps({"fit_wall_s": walls[stage]}))
    evaluation = tmp_path / "eval-units-s0-abc"
    evaluation.mkdir()
    inputs = {m: str(folders[f"pretrain-{m}"]) for m in ("text", "speech")}
    inputs |= {k: str(folders[k]) for k in ("judge", "vocoder")}
    (evaluation / "config.yaml").write_text(json.dumps({"inputs": inputs}))  # JSON is YAML
    systems = [
        {"name": a, "folders": {t: str(folders[f"{a}-{t}"]) for t in ("asr", "tts")}}
        for a in ("zipper", "single")
    ]
    (evaluation / "results.json").write_text(json.dumps({"systems": systems}))
    got = demo_lanes.stage_walls(evaluation, startup=5.0)
    assert got == {stage: wall + 5.0 for stage, wall in walls.items()}


def test_demo_lanes_asks_what_a_faster_stage_would_buy():
    """``--set STAGE=SECONDS`` replaces one stage's fit (plus start-up) and names a typo."""
    from benchmarks import demo_lanes

    walls = dict.fromkeys(demo_lanes.NEEDS, 100.0)
    got = demo_lanes.with_fits(walls, ["pretrain-text=40", "judge=7.5"], startup=5.0)
    assert got == walls | {"pretrain-text": 45.0, "judge": 12.5}
    assert walls["pretrain-text"] == 100.0  # the measured walls stay as they were
    for bad in ("pretrain-txt=40", "judge", "judge=fast"):
        with pytest.raises(SystemExit, match="STAGE=SECONDS"):
            demo_lanes.with_fits(walls, [bad], startup=5.0)
