"""One fine-tuned-model interface (models/generation.py) for every registered architecture:
the Lightning module, evaluation and judging call these methods and never ask which model it is.
"""

from __future__ import annotations

import ast
import pickle
import typing

import pytest
import torch

from tests.conftest import ROOT
from tests.test_zipper import SPECS, sharpen, towers
from zipper_pl.config import Config, load_config
from zipper_pl.config.sections import AblationConfig
from zipper_pl.errors import UserError
from zipper_pl.models.generation import FinetunedModel
from zipper_pl.models.sequences import IGNORE, Segment, token_loss
from zipper_pl.registry import ARCHS, build_model, frozen_towers, peak_lr

CONFIG = ROOT / "experiments" / "tiny" / "zip_asr.yaml"


def built(arch: str, *overrides: str) -> FinetunedModel:
    cfg = load_config(CONFIG, [f"arch={arch}", "zip.gate_init=0.7", *overrides])
    return sharpen(build_model(cfg, towers(), dict(SPECS))).eval()


def asr_batch() -> list[list[Segment]]:
    g = torch.Generator().manual_seed(0)
    return [
        [Segment("speech", torch.randint(0, 28, (n,), generator=g)),
         Segment("text", torch.randint(3, 40, (m,), generator=g))]
        for n, m in ((5, 3), (2, 6), (7, 1))
    ]  # fmt: skip


def test_the_registry_is_the_config_choice_list():
    field = {f.name: f for f in Config.__dataclass_fields__.values()}["arch"]
    assert tuple(sorted(field.metadata["choices"])) == tuple(sorted(ARCHS))
    assert set(AblationConfig().models) <= set(ARCHS)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_collate_forward_loss_backward(arch):
    m = built(arch, "zip.freeze=none").train()
    batch = m.collate(asr_batch())
    logits = m(batch)
    assert set(logits) == set(batch)
    total, per = token_loss(logits, batch)
    assert set(per) == set(batch)
    n = sum(int((batch[s]["targets"] != IGNORE).sum()) for s in logits)
    assert n == 3 + 6 + 1 + 3 * 1  # the text segments' tokens and their eos
    total.backward()
    assert torch.isfinite(total) and all(p.grad is not None for p in m.trainable_parameters())


@pytest.mark.parametrize("arch", list(ARCHS))
def test_collator_pickles_without_the_weights(arch):
    """Data-loader workers started by spawn or forkserver receive the collator, not the model."""
    m = built(arch)
    f = m.collator(loss_on="last")
    assert len(pickle.dumps(f)) < 10_000 < sum(p.numel() for p in m.parameters()) * 4
    batch, again = pickle.loads(pickle.dumps(f))(asr_batch()), m.collate(asr_batch())
    assert all(torch.equal(batch[s][k], again[s][k]) for s in batch for k in batch[s])


@pytest.mark.parametrize("arch", list(ARCHS))
@pytest.mark.parametrize("how", [{}, {"temperature": 1.0, "top_k": 9, "seed": 4}])
def test_generation_engine_and_budgets(arch, how):
    m = built(arch)
    inputs = [x[:1] for x in asr_batch()]
    out = m.generate(inputs, ["text", "speech"], {"text": 4, "speech": 3}, **how)
    ref = m.generate_uncached(inputs, ["text", "speech"], {"text": 4, "speech": 3}, **how)
    assert [[(s.modality, s.tokens.tolist()) for s in r] for r in out] == [
        [(s.modality, s.tokens.tolist()) for s in r] for r in ref
    ]
    assert all(len(r[0].tokens) <= 4 and len(r[1].tokens) <= 3 for r in out)
    cap = m.budget_cap("text", longest_input=7)
    m.generate(inputs, ["text"], cap)  # the largest budget the model allows fits ...
    with pytest.raises(UserError, match="max_seq_len"):  # ... and one more does not
        m.generate([[Segment("speech", torch.zeros(7, dtype=torch.long))]], ["text"], cap + 1)


@pytest.mark.parametrize("arch", list(ARCHS))
def test_tower_for_gates_and_frozen(arch):
    m = built(arch, "zip.freeze=text")
    assert m.tower_for("text").cfg.vocab_size >= SPECS["text"].vocab_size
    gates = m.gates()
    assert all(v.numel() == 1 for v in gates.values())
    assert bool(gates) == ARCHS[arch].zipped
    assert m.frozen == ({"text"} if ARCHS[arch].zipped else set())
    cfg = load_config(CONFIG, [f"arch={arch}", "zip.freeze=text", "train.single_lr=0.003"])
    assert frozen_towers(cfg) == ("text" if ARCHS[arch].zipped else "none")
    assert peak_lr(cfg) == (cfg.train.lr if ARCHS[arch].zipped else 0.003)


def arch_name_comparisons(path) -> list[str]:
    """`x == "zipper"`, `arch in ("single", ...)` and the like: a branch on an architecture."""
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            consts = [e for o in operands for e in getattr(o, "elts", [o])]
            if any(isinstance(c, ast.Constant) and c.value in ARCHS for c in consts):
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    return found


def test_nothing_outside_the_registry_branches_on_an_architecture():
    files = [p for p in (ROOT / "zipper_pl").rglob("*.py") if p.name != "registry.py"]
    assert [hit for p in files for hit in arch_name_comparisons(p)] == []


def test_the_check_finds_a_branch(tmp_path):
    bad = ROOT / "zipper_pl" / "_probe_tmp.py"  # a file of the package, removed at once
    try:
        bad.write_text('def f(cfg):\n    return cfg.arch == "zipper"\n')
        assert arch_name_comparisons(bad) == ["zipper_pl/_probe_tmp.py:2"]
    finally:
        bad.unlink()


def test_interface_methods_are_implemented_by_every_architecture():
    hooks = ["collator", "forward", "runner", "check_lengths", "budget_cap", "tower_for"]
    for arch in ARCHS:
        cls = type(built(arch))
        missing = [h for h in hooks if getattr(cls, h) is getattr(FinetunedModel, h)]
        assert missing == [], f"{arch}: {missing}"
    assert typing.get_type_hints(FinetunedModel.generate)["return"] == list[list[Segment]]
