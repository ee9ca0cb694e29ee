import pytest
import torch

from zipper_pl.errors import UserError
from zipper_pl.models.tower import TOWER_PRESETS, Tower, tower_config, tower_param_count

V = 50


def make_tower(**overrides) -> Tower:
    torch.manual_seed(0)
    return Tower(tower_config("tiny", V, **overrides)).eval()


def test_vocab_size_zero_is_a_user_error():
    with pytest.raises(UserError, match="vocab_size"):
        Tower(tower_config("tiny", 0))


def test_causality_by_gradient():
    tower = make_tower()
    idx = torch.randint(0, V, (2, 10))
    x = tower.embed(idx).detach().requires_grad_(True)
    logits = tower.head(tower.run_blocks(x, 0, tower.n_layers))
    t = 4
    logits[:, t].sum().backward()
    assert torch.all(x.grad[:, t + 1 :] == 0)
    assert torch.all(x.grad[:, : t + 1].abs().sum(-1) > 0)


def test_split_run_blocks_equals_forward():
    tower = make_tower(n_layers=3)
    idx = torch.randint(0, V, (2, 12))
    full = tower(idx)
    h = tower.run_blocks(tower.embed(idx), 0, 1)
    split = tower.head(tower.run_blocks(h, 1, 3))
    assert torch.equal(full, split)


def test_kv_cache_prefill_then_stepwise_matches_full():
    tower = make_tower()
    idx = torch.randint(0, V, (3, 16))
    full = tower(idx)
    cache = tower.new_cache(3, 32)
    outs = [tower(idx[:, :7], cache=cache)]
    for t in range(7, 16):
        outs.append(tower(idx[:, t : t + 1], cache=cache))
    assert cache.length == 16
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


def test_kv_cache_split_blocks_advance_each_layer_once():
    tower = make_tower(n_layers=4)
    idx = torch.randint(0, V, (1, 9))
    full = tower(idx)
    cache = tower.new_cache(1, 16)
    outs = []
    for t0, t1 in [(0, 5), (5, 6), (6, 9)]:
        h = tower.run_blocks(tower.embed(idx[:, t0:t1]), 0, 2, cache=cache)
        assert cache.lengths == [t1, t1, t0, t0]
        outs.append(tower.head(tower.run_blocks(h, 2, 4, cache=cache)))
    assert cache.lengths == [9] * 4
    torch.testing.assert_close(torch.cat(outs, 1), full, atol=1e-5, rtol=0)


def test_ragged_batch_with_key_valid_matches_each_sample_alone():
    """Right-padded prompts of different lengths, then lockstep decoding with holes in the cache."""
    tower = make_tower()
    lens, steps = [3, 6], 5
    seqs = [torch.randint(0, V, (n + steps,)) for n in lens]
    P = max(lens)
    prompt = torch.zeros(2, P, dtype=torch.long)
    valid = torch.zeros(2, P + steps, dtype=torch.bool)
    for b, n in enumerate(lens):
        prompt[b, :n] = seqs[b][:n]
        valid[b, :n] = True
    valid[:, P:] = True
    pos = torch.arange(P).expand(2, P)
    cache = tower.new_cache(2, P + steps)
    logits = tower(prompt, positions=pos, key_valid=valid[:, :P], cache=cache)
    got = [[logits[b, n - 1]] for b, n in enumerate(lens)]
    for s in range(steps):
        tok = torch.stack([seqs[b][n + s] for b, n in enumerate(lens)])[:, None]
        step_pos = torch.tensor(lens)[:, None] + s
        out = tower(tok, positions=step_pos, key_valid=valid[:, : P + s + 1], cache=cache)
        for b in range(2):
            got[b].append(out[b, 0])
    for b, n in enumerate(lens):
        alone = tower(seqs[b][None])[0, n - 1 :]
        torch.testing.assert_close(torch.stack(got[b]), alone, atol=1e-5, rtol=0)
        assert not torch.isnan(logits).any()


def test_key_valid_without_cache_matches_unpadded():
    tower = make_tower()
    idx = torch.randint(0, V, (1, 6))
    padded = torch.cat([idx, torch.zeros(1, 3, dtype=torch.long)], 1)
    valid = torch.tensor([[True] * 6 + [False] * 3])
    out = tower(padded, key_valid=valid)
    torch.testing.assert_close(out[:, :6], tower(idx), atol=1e-5, rtol=0)
    assert not torch.isnan(out).any()


def test_too_long_sequence_is_a_user_error():
    tower = make_tower(max_seq_len=8)
    with pytest.raises(UserError, match="max_seq_len"):
        tower(torch.zeros(1, 9, dtype=torch.long))


def test_activation_checkpointing_same_gradients():
    tower = make_tower()
    tower.train()
    idx = torch.randint(0, V, (2, 8))
    tower(idx).square().mean().backward()
    ref = [p.grad.clone() for p in tower.parameters()]
    tower.zero_grad()
    tower.activation_checkpointing = True
    tower(idx).square().mean().backward()
    for g, p in zip(ref, tower.parameters(), strict=True):
        torch.testing.assert_close(p.grad, g)


def test_weights_tied_and_state_dict_has_one_copy():
    tower = make_tower()
    assert tower.lm_head_weight is tower.tok_emb.weight
    keys = list(tower.state_dict())
    assert "tok_emb.weight" in keys and not any("lm_head" in k for k in keys)
    assert tower.num_params() - tower.num_params(exclude_embedding=True) == V * 32


@pytest.mark.parametrize(
    "size, lo, hi",
    [("tiny", 1.0e6, 1.1e6), ("demo", 0.5e6, 6e6), ("s", 120e6, 136e6), ("l", 0.9e9, 1.1e9)],
)
def test_preset_param_counts(size, lo, hi):
    n = tower_param_count(size, 32000)
    assert lo <= n <= hi, f"{size}: {n / 1e6:.1f}M"


def test_preset_exact_count_formula():
    cfg = TOWER_PRESETS["s"]
    d, f, n = cfg["d_model"], cfg["d_ff"], cfg["n_layers"]
    expected = 32000 * d + n * (4 * d * d + 3 * d * f + 2 * d) + d
    assert tower_param_count("s", 32000) == expected
