import dataclasses

import pytest
import torch

from zipper_pl.errors import UserError
from zipper_pl.models.fusion import GatedCrossAttention
from zipper_pl.models.sequences import (
    IGNORE,
    PAD_POS,
    ModalitySpec,
    Segment,
    collate_segments,
    token_loss,
)
from zipper_pl.models.tower import Tower, tower_config
from zipper_pl.models.zipper import ZipperConfig, ZipperModel
from zipper_pl.models.zipper_runners import CachedRunner, StaticRunner, UncachedRunner
from zipper_pl.runs.trainer import compile_forward

SPECS = {
    "text": ModalitySpec("text", 40, bos_id=0, eos_id=1, pad_id=2),
    "speech": ModalitySpec("speech", 30, bos_id=28, eos_id=29, pad_id=29),  # pad == eos
}


def towers(text_layers=4, speech_layers=2, seed=0):
    torch.manual_seed(seed)
    return {
        "text": Tower(tower_config("tiny", 40, n_layers=text_layers)),
        "speech": Tower(tower_config("tiny", 30, n_layers=speech_layers, d_model=48, d_ff=96)),
    }


def open_input_gates(m, gate_init):
    """Input projections active too (gamma = gate_init), so every path is exercised."""
    for p in m.input_proj.values():
        if hasattr(p, "gamma"):
            p.gamma.data.fill_(gate_init)
    return m


def model(gate_init=0.0, seed=0, **cfg):
    tw = towers(seed=seed)
    m = ZipperModel.from_towers(tw, ZipperConfig(gate_init=gate_init, **cfg), SPECS).eval()
    return open_input_gates(m, gate_init)


def seg(modality, n, gen):
    hi = 26 if modality == "speech" else 38
    return Segment(modality, torch.randint(3 if modality == "text" else 0, hi, (n,), generator=gen))


def samples(pattern, lens, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return [[seg(m, n, gen) for m, n in zip(pattern, ls, strict=True)] for ls in lens]


def test_collate_orig_pos_and_targets():
    s = [Segment("speech", torch.tensor([5, 6])), Segment("text", torch.tensor([7, 8, 9]))]
    b = collate_segments([s, s[:1]], SPECS)
    assert b["speech"]["ids"][0].tolist() == [28, 5, 6, 29]
    assert b["speech"]["orig_pos"][0].tolist() == [0, 1, 2, 3]
    assert b["text"]["ids"][0].tolist() == [0, 7, 8, 9, 1]
    assert b["text"]["orig_pos"][0].tolist() == [4, 5, 6, 7, 8]
    assert b["text"]["targets"][0].tolist() == [7, 8, 9, 1, IGNORE]
    assert (b["speech"]["targets"][0] == IGNORE).all()  # input segment: no loss by default
    assert b["speech"]["targets"][1].tolist() == [5, 6, 29, IGNORE]  # the last segment gets loss
    assert not b["text"]["valid"][1].any() and (b["text"]["orig_pos"][1] == PAD_POS).all()
    assert (collate_segments([s], SPECS, loss_on="all")["speech"]["targets"] != IGNORE).sum() == 3
    with pytest.raises(UserError, match="token ids"):
        collate_segments([[Segment("text", torch.tensor([40]))]], SPECS)


def test_cross_attention_row_without_keys_is_exactly_zero():
    torch.manual_seed(0)
    layer = GatedCrossAttention(16, 16, 2, gate_init=0.0)
    layer.alpha.data.fill_(1.0)  # attention on, feed-forward gate off
    x = torch.randn(2, 3, 16)
    k, v = layer.project_kv(torch.randn(2, 4, 16))
    mask = torch.ones(2, 1, 3, 4, dtype=torch.bool)
    mask[0, :, 1] = False  # sample 0, query 1 sees nothing
    y = layer(x, k, v, mask)
    assert torch.equal(y[0, 1], x[0, 1]) and not torch.equal(y[1, 1], x[1, 1])
    assert torch.equal(layer(x, k[:, :, :0], v[:, :, :0], mask[..., :0]), x)  # no keys at all


def test_zero_gates_give_exactly_the_towers():
    for mode in ("gated", "none"):
        m = model(input_proj={"text": mode, "speech": mode})
        batch = collate_segments(samples(["speech", "text"], [(5, 4), (3, 6)]), SPECS)
        out = m(batch)
        for t in ("text", "speech"):
            assert torch.equal(out[t], m.towers[t](batch[t]["ids"]))


def test_align_prior_keeps_zero_gates_exact_and_biases_attention():
    m = model(**PRIOR)
    batch = collate_segments(samples(["speech", "text"], [(8, 4), (3, 6)]), SPECS)
    out = m(batch)
    for t in ("text", "speech"):
        assert torch.equal(out[t], m.towers[t](batch[t]["ids"]))
    d = m.distances(batch, batch)[("text", "speech")]  # [B,1,Tq,Tk] in words
    assert d.shape == (2, 1, batch["text"]["ids"].size(1), batch["speech"]["ids"].size(1))
    # text token 3 (3 / 1.5 = 2 words in) vs speech token 8 (8 / 4 = 2 words in): distance 0
    assert batch["text"]["seg_pos"][0, 3] == 3 and batch["speech"]["seg_pos"][0, 8] == 8
    assert d[0, 0, 3, 8] == 0 and d[0, 0, 3, 0] == pytest.approx(2.0)
    with pytest.raises(UserError, match="tokens_per_word"):
        ZipperModel.from_towers(towers(), ZipperConfig(align_prior=True), SPECS)


def test_tower_state_dict_loads_unchanged():
    m = model()
    fresh = towers(seed=1)["text"]
    m.towers["text"].load_state_dict(fresh.state_dict())
    sub = {k.removeprefix("towers.text.") for k in m.state_dict() if k.startswith("towers.text.")}
    assert sub == set(fresh.state_dict())
    assert torch.equal(m.towers["text"].tok_emb.weight, fresh.tok_emb.weight)


def test_masking_by_gradient():
    m = model(gate_init=0.5)
    batch = collate_segments(samples(["speech", "text", "speech"], [(3, 3, 3)]), SPECS)
    # orig order: speech 0..4, text 5..9, speech 10..14 (speech stream indices 5..9)
    h = {t: m.embed(t, batch[t]["ids"]).detach().requires_grad_(True) for t in m.names}
    from zipper_pl.models.sequences import cross_mask

    masks = {(a, b): cross_mask(batch[a], batch[b]) for a, b in m.dirs}
    logits = m.zip_pass(dict(h), {t: {} for t in m.names}, masks, lambda d, n, kv: kv)

    def grads(tower, i):
        h["text"].grad = h["speech"].grad = None
        logits[tower][0, i].sum().backward(retain_graph=True)
        return h["text"].grad[0].abs().sum(-1), h["speech"].grad[0].abs().sum(-1)

    g_text, g_speech = grads("text", 2)  # text at orig 7: sees speech 0..4 only
    assert (g_speech[5:] == 0).all() and (g_speech[:5] > 0).all()
    assert (g_text[3:] == 0).all() and (g_text[:3] > 0).all()
    g_text, g_speech = grads("speech", 2)  # speech at orig 2: sees no text at all
    assert (g_text == 0).all() and (g_speech[3:] == 0).all()
    g_text, g_speech = grads("speech", 6)  # speech at orig 11: sees all text
    assert (g_text > 0).all() and (g_speech[7:] == 0).all()


def test_query_without_keys_is_finite():
    m = model(gate_init=0.5, freeze="none").train()
    batch = collate_segments(samples(["speech", "text"], [(4, 3), (2, 5)]), SPECS)
    loss, per = token_loss(m(batch), batch)  # speech queries see no text key
    loss.backward()
    assert torch.isfinite(loss) and set(per) == {"text", "speech"}
    assert all(torch.isfinite(p.grad).all() for p in m.parameters() if p.grad is not None)


def test_frozen_tower_is_bit_identical_after_training():
    m = model(gate_init=0.1, freeze="text")
    m.train()
    assert not m.towers["text"].training and m.towers["speech"].training
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam(m.trainable_parameters(), lr=1e-2)
    batch = collate_segments(samples(["speech", "text"], [(4, 3), (2, 5)]), SPECS, loss_on="all")
    for _ in range(3):
        opt.zero_grad()
        token_loss(m(batch), batch)[0].backward()
        opt.step()
    after = m.state_dict()
    for k, v in before.items():
        if k.startswith("towers.text."):
            assert torch.equal(v, after[k]), k
    assert not torch.equal(
        before["fusion.text_from_speech.0.xattn.q.weight"],
        after["fusion.text_from_speech.0.xattn.q.weight"],
    )
    assert not torch.equal(
        before["towers.speech.blocks.0.mlp.proj.weight"],
        after["towers.speech.blocks.0.mlp.proj.weight"],
    )


RUNNERS = (CachedRunner, StaticRunner, UncachedRunner)  # the last is the reference
CASES = {
    "asr": (["speech"], ["text"]),
    "tts": (["text"], ["speech"]),
    "two_outputs": (["speech"], ["text", "speech"]),
}


def sharpen(m):
    """Random towers at the 0.02 init emit one token forever: larger weights vary the output."""
    g = torch.Generator().manual_seed(0)
    for name, p in m.named_parameters():
        if p.dim() >= 2:
            p.data.normal_(0, 0.1 if "tok_emb" in name else 0.5, generator=g)
    return m


def vary_stops(m, xs, outputs, **kw):
    """Re-declare each output modality's eos as a generated token whose first occurrence differs
    most across samples, so samples end their segment at different steps."""
    for i, o in enumerate(outputs):
        segs = [r[i].tokens.tolist() for r in m.generate(xs, outputs, **kw)]
        first = {t: {s.index(t) if t in s else -1 for s in segs} for s in segs for t in s}
        if first:
            eos = max(sorted(first), key=lambda t: len(first[t]))
            m.specs[o] = dataclasses.replace(m.specs[o], eos_id=eos)


PRIOR = {"align_prior": True, "tokens_per_word": {"text": 1.5, "speech": 4.0}}


@pytest.mark.parametrize("prior", [False, True], ids=["content", "align_prior"])
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_generation_equals_uncached(case, temperature, prior):
    m = sharpen(model(gate_init=0.7, seed=3, **(PRIOR if prior else {})))
    inputs, outputs = CASES[case]
    xs = samples(inputs, [(5,), (2,), (7,)], seed=1)
    kw = dict(max_new_tokens=6, temperature=temperature, top_k=12, seed=0)
    vary_stops(m, xs, outputs, **kw)
    cached = m.generate(xs, outputs, **kw)
    ref = m.generate_uncached(xs, outputs, **kw)
    assert [[s.modality for s in r] for r in cached] == [outputs] * 3
    assert len({len(r[0].tokens) for r in cached}) > 1  # samples stopped at different steps
    for c, r in zip(cached, ref, strict=True):
        for sc, sr in zip(c, r, strict=True):
            assert torch.equal(sc.tokens, sr.tokens)
            assert len(sc.tokens) <= 6


@pytest.mark.parametrize("prior", [False, True], ids=["content", "align_prior"])
@pytest.mark.parametrize("pattern", [("speech", "text"), ("text",)])
def test_cached_step_logits_match_uncached(pattern, prior):
    """Teacher-forced: the same ragged feeds (padding included) through every runner."""
    m = sharpen(model(gate_init=0.7, seed=3, **(PRIOR if prior else {})))
    xs = samples(pattern, [(5, 2), (2, 6), (7, 1)] if len(pattern) == 2 else [(4,), (1,), (6,)])
    outputs, budget = ["speech", "text"], 3
    runners = [R(m, xs, outputs, dict.fromkeys(outputs, budget), "cpu") for R in RUNNERS]
    g = torch.Generator().manual_seed(0)
    for o in outputs:
        live = torch.ones(3, dtype=torch.bool)
        tok = torch.full((3,), m.specs[o].bos_id)
        for step in range(budget + 2):
            out = [r.feed(o, tok, live, step == 0) for r in runners]
            for got in out[:-1]:
                torch.testing.assert_close(got[live], out[-1][live], atol=1e-5, rtol=0)
            live = live & (torch.rand(3, generator=g) < 0.7)  # samples drop out at random
            tok = torch.randint(3, 26, (3,), generator=g)


def test_ragged_batch_equals_each_sample_alone():
    m = sharpen(model(gate_init=0.7, seed=4))
    xs = samples(["speech", "text"], [(6, 2), (2, 5), (4, 1)], seed=2)
    batched = m.generate(xs, ["speech", "text"], max_new_tokens={"text": 5, "speech": 4})
    for x, out in zip(xs, batched, strict=True):
        alone = m.generate([x], ["speech", "text"], max_new_tokens={"text": 5, "speech": 4})[0]
        assert [s.tokens.tolist() for s in alone] == [s.tokens.tolist() for s in out]


def test_budget_and_sampling_seed():
    m = model(gate_init=0.7)
    xs = samples(["text"], [(4,)])
    a = m.generate(xs, ["speech"], max_new_tokens=3, temperature=1.0, seed=5)
    b = m.generate(xs, ["speech"], max_new_tokens=3, temperature=1.0, seed=5)
    assert torch.equal(a[0][0].tokens, b[0][0].tokens) and len(a[0][0].tokens) <= 3
    assert m.generate(xs, ["speech"], max_new_tokens=0)[0][0].tokens.numel() == 0
    with pytest.raises(UserError, match="max_seq_len"):
        m.generate(xs, ["speech"], max_new_tokens=500)
    with pytest.raises(UserError, match="output modality"):
        m.generate(xs, ["video"], max_new_tokens=2)
    with pytest.raises(UserError, match="input modality"):
        m.generate([[Segment("video", torch.tensor([1]))]], ["text"], max_new_tokens=2)


def test_placement_for_different_depths():
    assert model().stops == {"text": [1, 2], "speech": [1, 2]}
    assert model(intervals={"text": 2, "speech": 1}).stops == {"text": [2, 4], "speech": [1, 2]}
    m = model(layers={"text": [3, 4], "speech": [1, 2]})
    assert m.stops == {"text": [3, 4], "speech": [1, 2]} and len(m.fusion["text_from_speech"]) == 2
    with pytest.raises(UserError, match="intervals"):
        model(intervals={"text": 8, "speech": 1})
    with pytest.raises(UserError, match="layers"):
        model(layers={"text": [3, 4], "speech": [2]})
    with pytest.raises(UserError, match="direction"):
        model(directions=["text<-video"])
    # one direction only, generation still exact
    m = model(gate_init=0.5, intervals={"text": 2, "speech": 1}, directions=["text<-speech"])
    xs = samples(["speech"], [(4,), (6,)])
    assert [s.tokens.tolist() for r in m.generate(xs, ["text"], max_new_tokens=4) for s in r] == [
        s.tokens.tolist() for r in m.generate_uncached(xs, ["text"], max_new_tokens=4) for s in r
    ]


def test_three_towers():
    torch.manual_seed(0)
    tw = {**towers(), "image": Tower(tower_config("tiny", 20))}
    specs = {**SPECS, "image": ModalitySpec("image", 20, 0, 1, 1)}
    cfg = ZipperConfig(
        towers=["text", "speech", "image"],
        intervals={"text": 1, "speech": 1, "image": 1},
        directions=["text<-speech", "text<-image", "speech<-text", "image<-text"],
        input_proj={},
        gate_init=0.5,
    )
    m = ZipperModel(cfg, tw, specs).eval()
    xs = [[Segment("image", torch.tensor([3, 4, 5])), Segment("speech", torch.tensor([1, 2]))]]
    cached = m.generate(xs, ["text"], max_new_tokens=5)
    assert torch.equal(cached[0][0].tokens, m.generate_uncached(xs, ["text"], 5)[0][0].tokens)


@pytest.mark.parametrize("pattern", [("speech", "text"), ("text", "speech")])
def test_asking_for_one_towers_logits_changes_nothing(pattern):
    """outputs=[...] skips the other tower's last blocks, softmax and last fusion update."""
    m = sharpen(model(gate_init=0.7, seed=5))
    batch = collate_segments(samples(pattern, [(5, 4), (3, 6)]), SPECS)
    full = m(batch)
    for t in ("text", "speech"):
        only = m(batch, outputs=[t])
        assert list(only) == [t]
        torch.testing.assert_close(only[t], full[t], atol=1e-6, rtol=0)


def test_frozen_tower_prefix_runs_without_autograd_and_gradients_are_unchanged():
    """freeze=text + no text input projection: blocks before the first zipped layer keep no graph,
    and every trainable parameter gets the same gradient as with the graph kept."""
    kw = dict(gate_init=0.7, seed=6, freeze="text", input_proj={"text": "none", "speech": "gated"})
    m = sharpen(model(**kw)).train()
    batch = collate_segments(samples(["speech", "text"], [(5, 4), (3, 6)]), SPECS)
    grads = []
    for no_grad_prefix in (True, False):
        m.zero_grad()
        m.frozen = {"text"} if no_grad_prefix else set()  # bypass: the plain full-graph path
        token_loss(m(batch), batch)[0].backward()
        grads.append({k: p.grad.clone() for k, p in m.named_parameters() if p.grad is not None})
    m.frozen = {"text"}
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for k in grads[0]:
        torch.testing.assert_close(grads[0][k], grads[1][k], atol=1e-6, rtol=1e-5)
    seen = []
    run = m.towers["text"].run_blocks
    m.towers["text"].run_blocks = lambda x, a, b, **k: (
        seen.append((a, torch.is_grad_enabled())) or run(x, a, b, **k)
    )
    m(batch)
    assert seen[0] == (0, False) and all(grad for _, grad in seen[1:])


@pytest.mark.slow  # torch.compile: tens of seconds of tracing
def test_zipper_forward_compiles_and_matches_eager(traced_compile):
    """What ``train.compile`` relies on: Dynamo + AOTAutograd trace the Zipper's training
    forward and backward (frozen text prefix, gates, cross-attention masks) without changing
    the loss or any gradient."""
    kw = dict(gate_init=0.7, seed=7, freeze="text")
    batch = collate_segments(samples(["speech", "text"], [(5, 4), (3, 6)]), SPECS)
    results = []
    for compile_ in (False, True):
        m = sharpen(model(**kw)).train()
        if compile_:
            compile_forward(m)
        loss = token_loss(m(batch, outputs=["text"]), batch)[0]
        loss.backward()
        grads = {k: p.grad for k, p in m.named_parameters() if p.grad is not None}
        results.append((loss.detach(), grads))
    # each tower block and gated cross-attention layer, compiled for the passes with gradients
    regions = {type(f.__self__).__name__ for f in traced_compile}
    assert regions == {"Block", "GatedCrossAttention"}
    (loss_e, grads_e), (loss_c, grads_c) = results
    torch.testing.assert_close(loss_c, loss_e)
    assert grads_c.keys() == grads_e.keys() and grads_e
    for k in grads_e:
        torch.testing.assert_close(grads_c[k], grads_e[k], atol=1e-6, rtol=1e-5, msg=k)


def test_compile_forward_compiles_each_block_for_training_passes_only(monkeypatch):
    """``train.compile`` compiles regions, not the whole forward, and only passes that record
    gradients run them: validation and generation (no grad, growing KV caches) stay eager,
    and the state_dict keys stay the eager tower's."""
    calls = []

    def fake_compile(fn, **kw):
        assert kw == {"dynamic": True}

        def run(*args, **kwargs):
            calls.append(type(fn.__self__).__name__)
            return fn(*args, **kwargs)

        return run

    monkeypatch.setattr(torch, "compile", fake_compile)
    tower = Tower(tower_config("tiny", vocab_size=50))
    keys = list(tower.state_dict())
    assert compile_forward(tower) == tower.cfg.n_layers == 2
    x = torch.randint(0, 50, (2, 5))
    with torch.no_grad():
        eager = tower(x)
    assert calls == []
    assert torch.equal(tower(x), eager) and calls == ["Block", "Block"]
    assert list(tower.state_dict()) == keys


def test_compile_without_a_cpp_compiler_is_one_line_naming_the_fix(monkeypatch):
    monkeypatch.delenv("CXX", raising=False)
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.raises(UserError, match="C\\+\\+ compiler.*train.compile=false"):
        compile_forward(Tower(tower_config("tiny", vocab_size=50)))


def test_gates_get_their_own_learning_rate_and_no_decay():
    from zipper_pl.config import TrainConfig
    from zipper_pl.lit.common import adamw

    m = model(freeze="text")
    opt = adamw(m.named_parameters(), TrainConfig(lr=1e-3, gate_lr_mult=30.0, weight_decay=0.1))
    gates = {id(p) for n, p in m.named_parameters() if n.endswith((".alpha", ".beta", ".gamma"))}
    assert gates
    by_group = [({id(p) for p in g["params"]}, g) for g in opt.param_groups]
    gate_group = [g for ids, g in by_group if ids & gates]
    assert len(gate_group) == 1 and {id(p) for p in gate_group[0]["params"]} == gates
    assert gate_group[0]["lr"] == pytest.approx(30e-3) and gate_group[0]["weight_decay"] == 0.0
    assert all(g["lr"] == pytest.approx(1e-3) for ids, g in by_group if not ids & gates)
    # frozen towers stay out of the optimizer
    frozen = {id(p) for p in m.towers["text"].parameters()}
    assert not any(ids & frozen for ids, _ in by_group)


@pytest.mark.parametrize("mode", ["shared", "none"])
def test_cross_attention_feed_forward_modes(mode):
    """zip.xattn_ffw: one MLP per zipped layer for both directions (norms and gates their own),
    or none; either way the cached engine still equals the reference."""
    torch.manual_seed(0)
    same = {t: Tower(tower_config("tiny", SPECS[t].vocab_size, n_layers=2)) for t in SPECS}
    m = ZipperModel.from_towers(same, ZipperConfig(gate_init=0.7, xattn_ffw=mode), SPECS)
    ref = ZipperModel.from_towers(same, ZipperConfig(gate_init=0.7), SPECS)
    a, b = m.fusion["text_from_speech"][1].xattn, m.fusion["speech_from_text"][1].xattn
    if mode == "shared":
        assert a.ffw is b.ffw and a.norm_ffw is not b.norm_ffw and a.beta is not b.beta
        assert (
            sum(p.numel() for p in ref.parameters()) - sum(p.numel() for p in m.parameters())
            == sum(p.numel() for p in a.ffw.parameters()) * m.n_zipped
        )
        batch = collate_segments(samples(["speech", "text"], [(4, 3)]), SPECS, loss_on="all")
        token_loss(m(batch), batch)[0].backward()
        assert a.ffw[0].weight.grad.abs().sum() > 0
    else:
        assert a.ffw is None and b.ffw is None and a.norm_ffw is None and not a.beta.requires_grad
        assert not any(k.endswith("_ffw") for k in m.gates())
        assert not any(".ffw." in k or "norm_ffw" in k for k in m.state_dict())
    m = sharpen(m.eval())
    xs = samples(["text"], [(5,), (2,)], seed=1)
    cached = m.generate(xs, ["speech"], max_new_tokens=5)
    assert [s[0].tokens.tolist() for s in cached] == [
        s[0].tokens.tolist() for s in m.generate_uncached(xs, ["speech"], max_new_tokens=5)
    ]


def test_shared_feed_forward_needs_towers_of_one_width():
    with pytest.raises(UserError, match="xattn_ffw=per_modality"):
        ZipperModel.from_towers(towers(), ZipperConfig(xattn_ffw="shared"), SPECS)
