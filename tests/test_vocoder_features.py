"""The vocoder's loss on its codec's unit features (``vocoder.feature_weight``), and the
codec-free fidelity measures of ``benchmarks.vocoder_quality``."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from benchmarks import vocoder_quality
from tests.conftest import tiny_config
from tests.test_vocoder import TINY
from zipper_pl.config.components import AudioTokenizerConfig
from zipper_pl.data.tokenizers.audio_tokenizers import UnitsTokenizer
from zipper_pl.errors import UserError
from zipper_pl.lit.vocoder import VocoderModule, clip_of
from zipper_pl.stages.chain import vocoder_stage


def _feature_module(**over) -> VocoderModule:
    tok = UnitsTokenizer(AudioTokenizerConfig(codec="units"))
    cfg = dataclasses.replace(TINY, **{"feature_weight": 45.0, **over})
    return VocoderModule(cfg, vocab_size=8, hop=320, sample_rate=16000, durations=False,
                         unit_features=tok.feature_module())  # fmt: skip


def test_the_feature_loss_compares_the_codecs_own_features_and_needs_a_codec_that_has_them():
    """``vocoder.feature_weight``: the L1 between the units codec's MFCC + deltas of the output
    and of the gold audio, both normalised by the gold's statistics; off, nothing is held; on
    for a codec without such a transform, a one-line error."""
    tok = UnitsTokenizer(AudioTokenizerConfig(codec="units"))
    module = _feature_module()
    torch.manual_seed(0)
    y = 0.1 * torch.randn(2, 16 * 320)
    real = module.unit_features(y[1])  # [D, T]: exactly the frames the tokenizer normalises
    mean, std = real.mean(-1, keepdim=True), real.std(-1, keepdim=True, unbiased=False) + 1e-5
    assert torch.allclose(((real - mean) / std).T, tok.features(y[1].numpy()), atol=1e-5)
    assert float(module.feature_loss(y, y)) == 0
    late = torch.roll(y, 80, dims=-1)  # 5 ms later: where the features change moves
    y_hat = late.clone().requires_grad_()
    loss = module.feature_loss(y_hat, y)
    loss.backward()
    assert float(loss.detach()) > 0.1 and float(y_hat.grad.abs().sum()) > 0
    # the gold's statistics normalise both: a copy twice as loud (the same units) still costs
    assert float(module.feature_loss(2 * y, y)) > 0.01
    off = VocoderModule(TINY, vocab_size=8, hop=320, sample_rate=16000, durations=False,
                        unit_features=tok.feature_module())  # fmt: skip
    assert off.unit_features is None and not any("unit_features" in k for k in off.state_dict())
    with pytest.raises(UserError, match=r"vocoder.feature_weight=45.0 needs .*=0$"):
        VocoderModule(dataclasses.replace(TINY, feature_weight=45.0), vocab_size=8, hop=320,
                      sample_rate=16000, durations=False)  # fmt: skip


def test_the_feature_loss_is_per_crop_in_fp32_and_skips_digital_silence():
    """Each crop is floored (MFCC's 80 dB) as the tokenizer floors its utterance, not by the
    loudest crop of the batch; bf16 autocast does not round it; a silent gold crop adds 0."""
    module = _feature_module()
    torch.manual_seed(0)
    loud, quiet = torch.randn(1, 16 * 320), 1e-5 * torch.randn(1, 16 * 320)
    y, y_hat = torch.cat([loud, quiet]), torch.cat([loud, quiet]) * 1.5 + 1e-3 * torch.randn(2, 1)
    alone = [float(module.feature_loss(y_hat[i : i + 1], y[i : i + 1])) for i in range(2)]
    assert float(module.feature_loss(y_hat, y)) == pytest.approx(sum(alone) / 2, rel=1e-5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert float(module.feature_loss(y_hat, y)) == pytest.approx(sum(alone) / 2, rel=1e-5)
    silent = torch.zeros(1, 16 * 320)
    both = module.feature_loss(torch.cat([y_hat[:1], silent + 0.1]), torch.cat([y[:1], silent]))
    assert float(both) == pytest.approx(alone[0], rel=1e-5)


def test_a_vocoder_stage_with_the_feature_loss_trains_on_it(data_root, tmp_path):
    """The stage hands the codec's transform to the module and logs the term it adds."""
    over = ("vocoder.feature_weight=30", "vocoder.max_steps=2", "vocoder.val_every=2")
    out = vocoder_stage(
        tiny_config(data_root, tmp_path, "vocoder.yaml", *over, f"out={tmp_path / 'v'}")
    )
    scalars = EventAccumulator(str(out / "tb")).Reload().Tags()["scalars"]
    assert "train/feature" in scalars, scalars


def test_the_fidelity_measures_are_zero_for_the_gold_audio_and_grow_with_noise():
    """benchmarks.vocoder_quality's codec-free measures: 0 for the gold itself, more for more
    noise, and a voicing a few samples shorter than the gold is compared on their overlap."""
    rng = np.random.default_rng(0)
    gold = (0.1 * rng.standard_normal(8000)).astype(np.float32)
    clips = [clip_of("u", np.zeros(25, dtype=np.int64), gold, 320)]
    noise = rng.standard_normal(8000).astype(np.float32)
    same, near, far = (
        vocoder_quality.fidelity([gold[: 8000 - cut] + scale * noise[: 8000 - cut]], clips, 16000)
        for cut, scale in ((0, 0.0), (5, 0.01), (0, 0.1))
    )
    assert same == {"log_mel_l1": 0.0, "log_magnitude_l1": 0.0}
    for key in same:
        assert 0 < near[key] < far[key], key


def test_unit_measures_read_predicted_durations_against_what_was_voiced():
    """A voicing of predicted durations is read against their expansion, not the gold frames
    (the benchmark printed 0.480 units recovered for the demo vocoder, whose audio gives back
    0.936 of the frames it was voiced from); the deduplicated unit error rate compares both."""
    gold = np.array([3, 3, 5, 7, 7, 7, 2])  # runs 3 5 7 2 of 2 1 3 1 frames
    predicted = np.array([3, 5, 5, 7, 7, 2, 2])  # the same units, other durations
    perfect = vocoder_quality.unit_measures([predicted], [predicted], [gold])
    assert perfect == {
        "units_recovered": 1.0, "unit_error_rate": 0.0, "unit_insertions": 0.0,
        "unit_deletions": 0.0,
    }  # fmt: skip
    misread = vocoder_quality.unit_measures([predicted], [gold], [gold])
    assert misread["units_recovered"] == pytest.approx(5 / 7)  # how the benchmark compared
    dropped = vocoder_quality.unit_measures([np.array([3, 3, 7, 7, 2])], [gold[:5]], [gold])
    assert dropped["unit_error_rate"] == dropped["unit_deletions"] == pytest.approx(1 / 4)
    inserted = vocoder_quality.unit_measures([np.array([3, 3, 5, 1, 7, 7, 2])], [gold], [gold])
    assert inserted["unit_insertions"] == pytest.approx(1 / 4)
    assert vocoder_quality.unit_measures([np.zeros(0, int)], [gold], [gold])["unit_deletions"] == 1
