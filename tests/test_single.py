from types import SimpleNamespace

import pytest
import torch
from torch import nn

from zipper_pl.data.modalities import units_spec
from zipper_pl.errors import UserError
from zipper_pl.models.sequences import IGNORE, ModalitySpec, Segment, token_loss, wrap
from zipper_pl.models.single import STREAM, SingleDecoder, extend_vocabulary
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
    assert list(batch) == [STREAM]  # one stream, as the Zipper has one per tower
    batch = batch[STREAM]
    boa, eoa = 20 + 16, 20 + 17
    assert batch["ids"][0].tolist() == [boa, 25, 26, eoa, 1, 7, 2]
    # Loss only on the text segment: bos -> 7, 7 -> eos; nothing predicts the text bos.
    assert batch["targets"][0].tolist() == [IGNORE] * 4 + [7, 2, IGNORE]
    assert batch["valid"].tolist() == [[True] * 7, [True] * 7]
    tts = model.collate([[Segment("text", [7]), Segment("speech", [5])]])[STREAM]
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
        total, per = token_loss(model(batch), batch)
        opt.zero_grad()
        total.backward()
        opt.step()
        losses.append(float(total.detach()))
    targets = batch[STREAM]["targets"]
    assert list(per) == [STREAM] and (targets != IGNORE).any()
    assert ((targets == IGNORE) | (targets < TEXT.vocab_size)).all()  # ASR: only text targets
    assert losses[-1] < 0.1 * losses[0], losses
    # The fitted mapping comes back out of greedy generation (which switches to eval mode).
    out = model.generate([samples[0][:1]], ["text"], max_new_tokens=8)
    assert out[0][0].tokens.tolist() == samples[0][1].tokens.tolist()
    assert model.training


def _greedy_alone(model: SingleDecoder, sample: list[Segment], outs: list[str], budgets: dict):
    """Reference: one sample, the whole prefix recomputed each step, argmax over the current
    modality's own ids minus its bos and pad; eos (sampled or forced by the budget) ends it."""
    seq = [
        int(t) for s in sample for t in wrap(s, model.specs[s.modality]) + model.offsets[s.modality]
    ]
    result = []
    for m in outs:
        spec, off = model.specs[m], model.offsets[m]
        seq.append(off + spec.bos_id)
        toks: list[int] = []
        while True:
            logits = model.tower(torch.tensor([seq]))[0, -1, off : off + spec.vocab_size].clone()
            logits[[spec.bos_id, spec.pad_id]] = float("-inf")
            tok = spec.eos_id if len(toks) == budgets[m] else int(logits.argmax())
            seq.append(off + tok)
            if tok == spec.eos_id:
                break
            toks.append(tok)
        result.append((m, toks))
    return result


def test_greedy_generation_equals_a_per_sample_reference():
    """The shared engine (lockstep segments, padding columns, left-padded prompts) produces
    what one sample alone, decoded by the plain loop above, produces."""
    model = _model(seed=2)
    inputs = [[Segment("speech", list(range(n)))] for n in (1, 4, 9, 2, 6)]
    budgets = {"text": 3, "speech": 5}
    fast = _as_lists(model.generate(inputs, ["text", "speech"], budgets))
    with torch.no_grad():
        slow = [_greedy_alone(model, x, ["text", "speech"], budgets) for x in inputs]
    assert fast == slow
    assert len({len(row[0][1]) for row in fast} | {len(row[1][1]) for row in fast}) > 1


class _EoaTower(nn.Module):
    """Stands in for the extended tower: every position's logits favour end-of-audio."""

    def __init__(self, total: int, eoa: int) -> None:
        super().__init__()
        self.cfg = SimpleNamespace(vocab_size=total, max_seq_len=64)
        self.tok_emb = nn.Embedding(1, 1)  # a parameter: the device generation runs on
        self.eoa = eoa

    def forward(self, ids, positions=None, key_valid=None, cache=None):
        logits = torch.zeros(*ids.shape, self.cfg.vocab_size)
        logits[..., self.eoa] = 10.0
        return logits


def test_speech_generation_can_end_with_its_eos_although_pad_is_eos():
    """Regression: speech's pad id is its end-of-audio, and the single decoder banned pad from
    sampling, so it could never end a speech segment and always ran to the budget (the Zipper
    bans pad only where it differs from eos). Its TTS scores were worse for that alone."""
    speech = units_spec("speech", SimpleNamespace(vocab_size=16))  # as stages build it
    assert speech.pad_id == speech.eos_id == 17
    model = SingleDecoder(_EoaTower(38, 20 + speech.eos_id), [TEXT, speech])
    for kw in ({}, {"temperature": 1.0, "seed": 0}):
        out = model.generate_uncached([[Segment("text", [5, 6])]], ["speech"], 8, **kw)
        assert out[0][0].tokens.tolist() == []  # eos first: an empty segment, not 8 tokens
