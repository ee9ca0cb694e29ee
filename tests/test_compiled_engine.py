"""The ``compiled`` generation engine (the static engine's step through ``torch.compile``) gives
the tokens of the reference: the Zipper with 2 towers (with and without the alignment prior, the
two-output task) and 3 towers, and the single decoder, greedy and sampled. Marked slow: each
distinct step compiles once (~10-30 s on 2 cores), and inductor is what is under test."""

from __future__ import annotations

import pytest
import torch
import torch._dynamo

from tests.test_generation_engines import GREEDY, SAMPLED, same
from tests.test_single import CASES as SINGLE_CASES
from tests.test_single import _as_lists
from tests.test_single import _model as single_model
from tests.test_three_towers import PRIOR3, TASKS, mixed, model3
from tests.test_zipper import CASES, PRIOR, model, samples, sharpen, vary_stops
from zipper_pl.models import static_decoding

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def no_silent_eager_fallback():
    """Past dynamo's recompile limit a step would run eagerly and still give the right tokens:
    make that an error here, so these tests check compiled steps."""
    with torch._dynamo.config.patch(fail_on_recompile_limit_hit=True):
        yield


@pytest.mark.parametrize("prior", [False, True], ids=["content", "align_prior"])
@pytest.mark.parametrize("kw", [GREEDY, SAMPLED], ids=["greedy", "sampled"])
def test_compiled_zipper_equals_the_reference(prior, kw, capsys):
    m = sharpen(model(gate_init=0.7, seed=3, **(PRIOR if prior else {})))
    inputs, outputs = CASES["two_outputs"]
    for lengths in ([(5,), (2,), (7,)], [(3,), (6,)]):  # a second shape: recompiled or dynamic
        xs = samples(inputs, lengths, seed=1)
        vary_stops(m, xs, outputs, **kw)
        got = m.generate(xs, outputs, **kw, engine="compiled")
        assert same(got, m.generate_uncached(xs, outputs, **kw))


def test_compiled_three_towers_equal_the_reference():
    m = sharpen(model3(gate_init=0.7, seed=4, **PRIOR3))
    inputs, outputs = TASKS["text_to_phonemes_speech"]
    xs = mixed([[(inputs[0], n)] for n in (5, 2, 7)], seed=1)
    vary_stops(m, xs, outputs, **GREEDY)
    got = m.generate(xs, outputs, **GREEDY, engine="compiled")
    assert same(got, m.generate_uncached(xs, outputs, **GREEDY))


@pytest.mark.parametrize("kw", [{}, {"temperature": 1.0, "top_k": 5, "seed": 3}])
def test_compiled_single_decoder_equals_the_reference(kw):
    inputs, outs = SINGLE_CASES[2]
    m = single_model()
    got = _as_lists(m.generate(inputs, outs, 6, **kw, engine="compiled"))
    assert got == _as_lists(m.generate_uncached(inputs, outs, 6, **kw))


def test_compiling_is_said_once_per_step_function(monkeypatch, capsys):
    monkeypatch.setattr(static_decoding, "_compiled", {})
    m = single_model()
    inputs, outs = SINGLE_CASES[1]
    for _ in range(2):
        m.generate(inputs, outs, 3, engine="compiled")
    err = capsys.readouterr().err
    assert err.count("[generate] compiling the decoding step StaticSingleRunner.step") == 1
