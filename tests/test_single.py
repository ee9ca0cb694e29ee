import pytest
import torch

from zipper_pl.errors import UserError
from zipper_pl.models.sequences import IGNORE, ModalitySpec, Segment
from zipper_pl.models.single import SingleDecoder, extend_vocabulary
from zipper_pl.models.tower import Tower, tower_config

TEXT = ModalitySpec("text", vocab_size=20, bos_id=1, eos_id=2, pad_id=3)
SPEECH = ModalitySpec("speech", vocab_size=18, bos_id=16, eos_id=17, pad_id=16)  # 16 codes + 2


def _tower(vocab: int = 20, seed: int = 0, std: float = 0.02) -> Tower:
    torch.manual_seed(seed)
    t = Tower(tower_config("tiny", vocab))
    if std != 0.02:  # peaky logits: greedy choices far from ties, so float noise cannot flip them
        for p in t.parameters():
            if p.dim() > 1:
                torch.nn.init.normal_(p, std=std)
    return t.eval()


def _model(seed: int = 0, std: float = 0.3) -> SingleDecoder:
    return SingleDecoder.from_text_tower(_tower(seed=seed, std=std), [TEXT, SPEECH], seed=seed)


def test_extend_vocabulary_keeps_original_logits_exactly():
    tower = _tower()
    ext = extend_vocabulary(tower, 18, seed=0).eval()
    assert ext.cfg.vocab_size == 38 and tower.cfg.vocab_size == 20
    x = torch.randint(0, 20, (3, 12))
    assert torch.equal(ext(x)[..., :20], tower(x))
    w, old = ext.tok_emb.weight, tower.tok_emb.weight
    assert torch.equal(w[:20], old)
    assert ext.lm_head_weight.data_ptr() == w.data_ptr()  # head stays tied
    new = w[20:]
    assert not torch.equal(new[0], new[1])
    torch.testing.assert_close(new.mean(0), old.mean(0), atol=0.01, rtol=0)
    # Deterministic given the seed.
    assert torch.equal(extend_vocabulary(tower, 18, seed=0).tok_emb.weight, w)


def test_collate_layout_asr():
    model = _model()
    asr = [Segment("speech", torch.tensor([5, 6])), Segment("text", torch.tensor([7]))]
    batch = model.collate([asr, [Segment("speech", torch.tensor([0])), Segment("text", [9, 9])]])
    boa, eoa = 20 + 16, 20 + 17
    assert batch["ids"][0].tolist() == [boa, 25, 26, eoa, 1, 7, 2]
    # Loss only on the text segment: bos -> 7, 7 -> eos; nothing predicts the text bos.
    assert batch["targets"][0].tolist() == [IGNORE] * 4 + [7, 2, IGNORE]
    assert batch["valid"].tolist() == [[True] * 7, [True] * 7]
    tts = model.collate([[Segment("text", [7]), Segment("speech", [5])]])
    assert tts["ids"][0].tolist() == [1, 7, 2, boa, 25, eoa]
    assert tts["targets"][0].tolist() == [IGNORE] * 3 + [25, eoa, IGNORE]
    with pytest.raises(UserError, match="modality"):
        model.collate([[Segment("video", [1])]])


CASES = [
    ([[Segment("speech", [3, 4, 5, 6])], [Segment("speech", [7, 1])]], ["text"]),
    ([[Segment("text", [5, 6, 7])], [Segment("text", [9, 10, 11, 12, 13])]], ["speech"]),
    ([[Segment("speech", [3, 4])], [Segment("speech", [9, 9, 9, 2, 1])]], ["text", "speech"]),
]


def _as_lists(out):
    return [[(s.modality, s.tokens.tolist()) for s in row] for row in out]


@pytest.mark.parametrize(("inputs", "outs"), CASES)
def test_cached_generation_equals_uncached(inputs, outs):
    model = _model()
    for kw in ({}, {"temperature": 1.0, "top_k": 5, "seed": 3}):
        cached = _as_lists(model.generate(inputs, outs, max_new_tokens=6, **kw))
        ref = _as_lists(model.generate_uncached(inputs, outs, max_new_tokens=6, **kw))
        assert cached == ref
        for row in cached:
            assert [m for m, _ in row] == outs
            for m, toks in row:
                spec = TEXT if m == "text" else SPEECH
                assert len(toks) <= 6
                assert all(
                    0 <= t < spec.vocab_size and t not in (spec.bos_id, spec.pad_id) for t in toks
                )
                assert spec.eos_id not in toks


def test_ragged_batch_equals_each_sample_alone():
    model = _model()
    inputs = CASES[2][0] + [[Segment("speech", list(range(12)))]]
    batch = _as_lists(model.generate(inputs, ["text", "speech"], {"text": 5, "speech": 7}))
    alone = [
        _as_lists(model.generate([x], ["text", "speech"], {"text": 5, "speech": 7}))[0]
        for x in inputs
    ]
    assert batch == alone


def test_budget_and_eos_switch():
    model = _model()
    out = model.generate(
        [[Segment("speech", [1, 2])]], ["text", "speech"], {"text": 2, "speech": 3}
    )
    assert len(out[0][0].tokens) <= 2 and len(out[0][1].tokens) <= 3
    with pytest.raises(UserError, match="max_new_tokens"):
        model.generate([[Segment("speech", [1])]], ["text", "speech"], {"text": 2})
    with pytest.raises(UserError, match="max_seq_len"):
        model.generate([[Segment("speech", [1])]], ["text"], 500)


def test_loss_decreases_on_toy_asr():
    torch.set_num_threads(1)
    model = _model(std=0.02).train()
    gen = torch.Generator().manual_seed(0)
    # Toy ASR: text token = speech code + 4 (a fixed "pronunciation").
    samples = []
    for _ in range(16):
        codes = torch.randint(0, 16, (5,), generator=gen)
        samples.append([Segment("speech", codes), Segment("text", codes + 4)])
    batch = model.collate(samples)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(60):
        total, per = model.loss(batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    assert per["speech"] == 0 and per["text"] > 0  # ASR: only text targets
    assert losses[-1] < 0.1 * losses[0], losses
    # The fitted mapping comes back out of greedy generation (which switches to eval mode).
    out = model.generate([samples[0][:1]], ["text"], max_new_tokens=8)
    assert out[0][0].tokens.tolist() == samples[0][1].tokens.tolist()
    assert model.training


def _per_sample_decode(
    model, logits, runner, lens, outs, budgets, max_steps, temperature, top_k, gen
):
    """Reference: the original per-sample Python state machine the tensor version replaced."""
    from zipper_pl.models.single import _pick

    B, device = len(lens), logits.device
    specs = [model.specs[m] for m in outs]
    offs = [model.offsets[m] for m in outs]
    rows = torch.tensor([model.modality_index[m] for m in outs], device=device)
    seg = [0] * B  # index into outs of the segment being generated
    count = [0] * B
    forced: list[list[int]] = [[] for _ in range(B)]
    done = [False] * B
    result: list[list[list[int]]] = [[[] for _ in outs] for _ in range(B)]
    next_pos = lens.clone()
    for _ in range(max_steps):
        cur = rows[torch.tensor([min(s, len(outs) - 1) for s in seg], device=device)]
        masked = logits.masked_fill(~model.allowed[cur], float("-inf"))  # (B, V)
        sampled = _pick(masked, temperature, top_k, gen).tolist()
        feed = [0] * B
        for b in range(B):
            if done[b]:
                continue
            if forced[b]:
                feed[b] = forced[b].pop(0)
                continue
            s, tok = seg[b], int(sampled[b])
            eos = specs[s].eos_id + offs[s]
            if tok != eos:
                result[b][s].append(tok - offs[s])
                count[b] += 1
            if tok == eos or count[b] == budgets[s]:
                seg[b], count[b] = s + 1, 0
                if s + 1 == len(outs):
                    done[b] = True
                    continue
                nxt = specs[s + 1].bos_id + offs[s + 1]
                forced[b] = [nxt] if tok == eos else [eos, nxt]
            feed[b] = tok
        if all(done):
            break
        live = torch.tensor([not d for d in done], device=device)[:, None]  # (B, 1)
        new = torch.tensor(feed, device=device)[:, None]  # (B, 1)
        logits = runner.step(new, live, next_pos[:, None])
        next_pos += live[:, 0].long()
    return result


@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0, "top_k": 7, "seed": 1}])
def test_tensor_decoder_equals_per_sample_reference(monkeypatch, sampling):
    import zipper_pl.models.single as single

    model = _model(seed=2)
    inputs = [[Segment("speech", list(range(n)))] for n in (1, 4, 9, 2, 6)]
    budgets = {"text": 3, "speech": 5}
    fast = _as_lists(model.generate(inputs, ["text", "speech"], budgets, **sampling))
    monkeypatch.setattr(single, "_decode", _per_sample_decode)
    slow = _as_lists(model.generate(inputs, ["text", "speech"], budgets, **sampling))
    assert fast == slow
    assert len({len(row[0][1]) for row in fast} | {len(row[1][1]) for row in fast}) > 1
