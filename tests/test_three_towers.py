"""The Zipper with three towers: text, speech and phonemes (a tower over phoneme tokens).

Every tower reads every other tower (all six ordered directions), the towers have different
depths, widths and vocabularies, and samples interleave all three modalities in any order.
"""

import copy

import pytest
import torch

from tests.test_zipper import SPECS, open_input_gates, sharpen, towers, vary_stops
from zipper_pl.models.sequences import (
    ModalitySpec,
    Segment,
    collate_segments,
    cross_mask,
    token_loss,
)
from zipper_pl.models.tower import Tower, tower_config
from zipper_pl.models.zipper import ZipperConfig, ZipperModel
from zipper_pl.models.zipper_runners import CachedRunner, UncachedRunner

NAMES = ["text", "speech", "phonemes"]
SPECS3 = {**SPECS, "phonemes": ModalitySpec("phonemes", 30, bos_id=1, eos_id=2, pad_id=0)}
# every tower reads every other tower: the documented choice for the three-tower zip
DIRECTIONS = [f"{a}<-{b}" for a in NAMES for b in NAMES if a != b]
# text 4 blocks, speech 2, phonemes 2: a zipped layer after text blocks 2, 4 and blocks 1, 2
INTERVALS = {"text": 2, "speech": 1, "phonemes": 1}
PRIOR3 = {"align_prior": True, "tokens_per_word": {"text": 1.5, "speech": 4.0, "phonemes": 3.0}}
TOKENS = {"text": (3, 38), "speech": (0, 26), "phonemes": (3, 30)}  # [lo, hi): no specials


def towers3(seed=0):
    tw = towers(text_layers=4, speech_layers=2, seed=seed)
    tw["phonemes"] = Tower(tower_config("tiny", 30, n_layers=2, d_model=40, d_ff=80))
    return tw


def model3(gate_init=0.0, seed=0, input_proj="gated", **cfg):
    cfg = {
        "towers": NAMES,
        "intervals": INTERVALS,
        "directions": DIRECTIONS,
        "input_proj": dict.fromkeys(NAMES, input_proj),
        "gate_init": gate_init,
        **cfg,
    }
    m = ZipperModel.from_towers(towers3(seed), ZipperConfig(**cfg), SPECS3).eval()
    return open_input_gates(m, gate_init)


def seg(modality, n, gen):
    lo, hi = TOKENS[modality]
    return Segment(modality, torch.randint(lo, hi, (n,), generator=gen))


def mixed(patterns, seed=0):
    """One sample per [(modality, length), ...]: each sample its own order of modalities."""
    gen = torch.Generator().manual_seed(seed)
    return [[seg(t, n, gen) for t, n in p] for p in patterns]


def test_model_layout():
    m = model3()
    assert m.names == NAMES and len(m.dirs) == 6
    assert m.stops == {"text": [2, 4], "speech": [1, 2], "phonemes": [1, 2]}
    assert set(m.fusion) == {f"{a}_from_{b}" for a, b in m.dirs}
    assert all(len(layers) == 2 for layers in m.fusion.values())
    assert set(m.input_proj) == set(NAMES)
    assert all(p.mode == "gated" for p in m.input_proj.values())


# every direction "a<-b" has some token of a after a token of b (else, with no key ever
# visible, its fusion layers get no gradient: see the frozen-towers test)
MIXED = [
    [("speech", 5), ("phonemes", 3), ("text", 4)],
    [("text", 2), ("phonemes", 6), ("speech", 3)],
    [("phonemes", 4), ("text", 6)],  # no speech: an all-padding speech row
    [("speech", 2), ("text", 3), ("speech", 4), ("phonemes", 2)],
]


@pytest.mark.parametrize("mode", ["gated", "none"])
def test_zero_gates_give_exactly_the_towers(mode):
    m = model3(input_proj=mode)
    batch = collate_segments(mixed(MIXED), SPECS3)
    assert all(batch[t]["valid"].any() for t in NAMES)
    out = m(batch)
    assert list(out) == NAMES
    for t in NAMES:
        assert torch.equal(out[t], m.towers[t](batch[t]["ids"])), t


def test_zero_gates_with_align_prior_give_exactly_the_towers():
    m = model3(**PRIOR3)
    batch = collate_segments(mixed(MIXED), SPECS3)
    out = m(batch)
    for t in NAMES:
        assert torch.equal(out[t], m.towers[t](batch[t]["ids"])), t


def test_open_gates_change_every_tower():
    """The zero-gate test can fail: with gates open, every tower's logits move."""
    m = model3(gate_init=0.5)
    batch = collate_segments(mixed(MIXED), SPECS3)
    out = m(batch)
    for t in NAMES:
        assert not torch.equal(out[t], m.towers[t](batch[t]["ids"])), t


def gradient_probe(m, batch):
    """Embeddings as leaves and the zipped logits over them (as ``forward`` computes them)."""
    h = {t: m.embed(t, batch[t]["ids"]).detach().requires_grad_(True) for t in m.names}
    masks = {(a, b): cross_mask(batch[a], batch[b]) for a, b in m.dirs}
    logits = m.zip_pass(dict(h), {t: {} for t in m.names}, masks, lambda d, n, kv: kv)

    def grads(tower, b, i):
        """{tower s: |d logits[tower][b, i] / d h[s]| summed over features} [B,T_s]."""
        for x in h.values():
            x.grad = None
        logits[tower][b, i].sum().backward(retain_graph=True)
        return {s: h[s].grad.abs().sum(-1) for s in m.names}

    return grads


def test_masking_by_gradient():
    m = model3(gate_init=0.5)
    batch = collate_segments(
        mixed(
            [
                [("speech", 3), ("phonemes", 3), ("text", 3)],
                [("text", 2), ("speech", 4), ("phonemes", 1)],
            ]
        ),
        SPECS3,
    )
    # sample 0, orig order: speech 0..4, phonemes 5..9, text 10..14
    # sample 1, orig order: text 0..3, speech 4..9, phonemes 10..12
    assert batch["phonemes"]["orig_pos"][0, :5].tolist() == [5, 6, 7, 8, 9]
    assert batch["text"]["orig_pos"][1, :4].tolist() == [0, 1, 2, 3]
    grads = gradient_probe(m, batch)

    g = grads("text", 0, 2)  # text at orig 12: all speech, all phonemes, text up to itself
    assert (g["speech"][0, :5] > 0).all() and (g["speech"][0, 5:] == 0).all()  # a pad column
    assert (g["phonemes"][0] > 0).all()
    assert (g["text"][0, :3] > 0).all() and (g["text"][0, 3:] == 0).all()
    g = grads("phonemes", 0, 2)  # phonemes at orig 7: all speech before it, no text after it
    assert (g["speech"][0, :5] > 0).all() and (g["speech"][0, 5:] == 0).all()
    assert (g["text"] == 0).all()
    assert (g["phonemes"][0, :3] > 0).all() and (g["phonemes"][0, 3:] == 0).all()
    g = grads("speech", 0, 2)  # speech at orig 2, first in the sample: no other tower
    assert (g["text"] == 0).all() and (g["phonemes"] == 0).all()
    assert (g["speech"][0, :3] > 0).all() and (g["speech"][0, 3:] == 0).all()

    g = grads("phonemes", 1, 1)  # phonemes at orig 11: all text and all speech
    assert (g["text"][1, :4] > 0).all() and (g["text"][1, 4:] == 0).all()  # pads unseen
    assert (g["speech"][1] > 0).all()
    assert (g["phonemes"][1, :2] > 0).all() and (g["phonemes"][1, 2:] == 0).all()
    g = grads("speech", 1, 0)  # the speech bos, orig 4: all text, no phonemes
    assert (g["text"][1, :4] > 0).all() and (g["phonemes"] == 0).all()
    assert (g["speech"][1, :1] > 0).all() and (g["speech"][1, 1:] == 0).all()
    g = grads("text", 1, 3)  # the text eos, orig 3, first segment: nothing from other towers
    assert (g["speech"] == 0).all() and (g["phonemes"] == 0).all()
    for g in (grads("text", 1, 3), grads("speech", 1, 0)):  # samples never see each other
        assert all((g[s][0] == 0).all() for s in NAMES)


def test_masking_by_gradient_every_position():
    """Exhaustively: d logits[t][b, i] / d h[s][b', j] != 0 iff b' == b, token j of s is real
    and not later than token i of t in the original order (itself included)."""
    m = model3(gate_init=0.5, seed=1)
    batch = collate_segments(
        mixed(
            [
                [("speech", 3), ("text", 2), ("phonemes", 2)],
                [("phonemes", 2), ("speech", 1), ("text", 3)],
            ],
            seed=1,
        ),
        SPECS3,
    )
    grads = gradient_probe(m, batch)
    checked = 0
    for t in NAMES:
        for b in range(2):
            for i in torch.nonzero(batch[t]["valid"][b]).flatten().tolist():
                p = batch[t]["orig_pos"][b, i]
                g = grads(t, b, i)
                for s in NAMES:
                    seen = torch.zeros_like(batch[s]["valid"])
                    seen[b] = batch[s]["valid"][b] & (batch[s]["orig_pos"][b] <= p)
                    assert torch.equal(g[s] > 0, seen), (t, b, i, s)
                checked += 1
    assert checked == sum(int(batch[t]["valid"].sum()) for t in NAMES)


TASKS = {
    "speech_to_phonemes_text": (["speech"], ["phonemes", "text"]),
    "text_to_phonemes_speech": (["text"], ["phonemes", "speech"]),
}


@pytest.mark.parametrize("prior", [False, True], ids=["content", "align_prior"])
@pytest.mark.parametrize("task", list(TASKS))
@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_cached_generation_equals_uncached(task, temperature, prior):
    m = sharpen(model3(gate_init=0.7, seed=4, **(PRIOR3 if prior else {})))
    inputs, outputs = TASKS[task]
    xs = mixed([[(inputs[0], n)] for n in (5, 2, 7)], seed=1)
    kw = dict(max_new_tokens=6, temperature=temperature, top_k=12, seed=0)
    vary_stops(m, xs, outputs, **kw)
    cached = m.generate(xs, outputs, **kw)
    ref = m.generate_uncached(xs, outputs, **kw)
    assert [[s.modality for s in r] for r in cached] == [outputs] * 3
    for i in range(len(outputs)):  # samples stopped at different steps, in both segments
        assert len({len(r[i].tokens) for r in cached}) > 1
    for c, r in zip(cached, ref, strict=True):
        for sc, sr in zip(c, r, strict=True):
            assert torch.equal(sc.tokens, sr.tokens)
            assert len(sc.tokens) <= 6


def test_generation_reads_the_third_tower():
    """The cached == uncached test can fail: the phonemes segment steers the text after it."""
    m = sharpen(model3(gate_init=0.7, seed=3))
    x = mixed([[("speech", 5)]], seed=1)[0]
    outs = set()
    for k in range(6):
        prefix = [[*x, Segment("phonemes", torch.tensor([3 + 4 * k, 5 + k]))]]
        outs.add(tuple(m.generate(prefix, ["text"], max_new_tokens=6)[0][0].tokens.tolist()))
    assert len(outs) > 1


def soften(m, scale=0.03):
    """sharpen() saturates the cross-attention softmax (huge q.k), which hides the alignment
    prior's bias: scale the fusion queries down so attention weights, and the prior, matter."""
    for name, p in m.named_parameters():
        if name.endswith("xattn.q.weight"):
            p.data.mul_(scale)
    return m


@pytest.mark.parametrize("prior", [False, True], ids=["content", "align_prior"])
def test_cached_step_logits_match_uncached(prior):
    """Teacher-forced: the same ragged feeds (padding included) through both runners, inputs of
    all three modalities in different orders, then one output segment of each tower.

    In float64: in float32 the sharpened three-tower model's rounding noise reaches ~2e-4 (both
    runners agree to ~1e-14 in float64), so only a real difference can fail the tight check."""
    m = soften(sharpen(model3(gate_init=0.7, seed=3, **(PRIOR3 if prior else {})))).double()
    xs = mixed(
        [
            [("speech", 5), ("phonemes", 2), ("text", 3)],
            [("text", 2), ("speech", 6)],
            [("phonemes", 4), ("text", 1), ("speech", 2)],
        ]
    )
    outputs, budget = ["phonemes", "text", "speech"], 3
    budgets = dict.fromkeys(outputs, budget)
    runners = [R(m, xs, outputs, budgets, "cpu") for R in (CachedRunner, UncachedRunner)]
    if prior:  # the prior moves these logits far more than the tolerance below
        flat = copy.deepcopy(m)
        for name, p in flat.named_parameters():
            if name.endswith("prior_slopes"):
                p.data.zero_()
        runners.append(CachedRunner(flat, xs, outputs, budgets, "cpu"))
    g = torch.Generator().manual_seed(0)
    prior_effect = 0.0
    for o in outputs:
        live = torch.ones(3, dtype=torch.bool)
        tok = torch.full((3,), m.specs[o].bos_id)
        for step in range(budget + 2):
            out = [r.feed(o, tok, live, step == 0) for r in runners]
            torch.testing.assert_close(out[0][live], out[1][live], atol=1e-10, rtol=0)
            if prior and live.any():
                prior_effect = max(prior_effect, (out[2] - out[0])[live].abs().max().item())
            live = live & (torch.rand(3, generator=g) < 0.7)  # samples drop out at random
            tok = torch.randint(*TOKENS[o], (3,), generator=g)
    assert prior_effect > 1e-2 if prior else prior_effect == 0.0


def test_frozen_towers_are_bit_identical_after_training():
    m = model3(gate_init=0.1, freeze="text,speech")
    assert m.frozen == {"text", "speech"}
    m.train()
    assert not m.towers["text"].training and not m.towers["speech"].training
    assert m.towers["phonemes"].training and m.fusion.training
    trainable = {id(p) for p in m.trainable_parameters()}
    for t in ("text", "speech"):
        assert not any(id(p) in trainable for p in m.towers[t].parameters())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    opt = torch.optim.Adam(m.trainable_parameters(), lr=1e-2)
    batch = collate_segments(mixed(MIXED), SPECS3, loss_on="all")
    opt.zero_grad()
    loss, per = token_loss(m(batch), batch)
    assert set(per) == set(NAMES) and all(v > 0 for v in per.values())
    loss.backward()
    opt.step()
    after = m.state_dict()
    frozen = [k for k in before if k.startswith(("towers.text.", "towers.speech."))]
    assert frozen
    for k in frozen:
        assert torch.equal(before[k], after[k]), k
    moved = [
        k
        for k, p in m.named_parameters()
        if k.startswith(("towers.phonemes.", "fusion.", "input_proj."))
    ]
    assert {k.split(".")[1] for k in moved if k.startswith("fusion.")} == {
        f"{a}_from_{b}" for a, b in m.dirs
    }
    for k in moved:
        assert not torch.equal(before[k], after[k]), k
