"""The unit vocoder: its model, its stage, and speech you can hear through the API and the CLI."""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

import zipper_pl
from benchmarks import demo_lanes
from tests.conftest import ROOT, run_make, tiny_config
from tests.test_ssl_units import save_tiny_hubert
from zipper_pl.__main__ import main
from zipper_pl.config import VocoderConfig
from zipper_pl.data.modalities import load_units_tokenizer
from zipper_pl.errors import UserError
from zipper_pl.fitting.vocoding import load_vocoder
from zipper_pl.lit.vocoder import CropDataset, VocoderModule, clip_of, collate_crops
from zipper_pl.models.vocoder import UnitVocoder, duration_loss, runs_of
from zipper_pl.stages.chain import pretrain, vocoder_stage, zip_stage

TINY = VocoderConfig(dim=32, intermediate_dim=64, n_layers=1, dur_hidden=16)
STEPS = ("train.max_steps=2", "train.val_every=2", "train.ckpt_every=2")


def test_shapes_and_runs():
    net = UnitVocoder(TINY, vocab_size=32, hop=320)
    assert net(torch.randint(0, 32, (2, 10))).shape == (2, 3200)  # [B, T * hop]
    units, frames = runs_of(np.array([3, 3, 3, 7, 1, 1]))
    assert units.tolist() == [3, 7, 1] and frames.tolist() == [3, 1, 2]
    assert net.durations(torch.tensor([3, 7, 1])).shape == (3,)
    assert net.synthesize(np.array([3, 7, 1]), expand=True).dtype == np.float32


def test_crops_carry_the_runs_of_dur_clips_utterances_spread_over_the_pool():
    clips = [clip_of(f"u{c}", np.repeat(np.arange(3 + c), 2), np.zeros(1), 320) for c in range(6)]
    one, three = CropDataset(clips, 4, 320), CropDataset(clips, 4, 320, dur_clips=3)
    assert len(one) == len(three) and one[0]["units"].tolist() == three[0]["units"].tolist()
    batch = collate_crops([three[i] for i in range(4)])
    assert batch["units"].shape == (4, 4) and batch["wave"].shape == (4, 4 * 320)
    assert batch["run_units"].shape[0] == 12  # 4 crops x 3 utterances' runs
    c = three.items[3][0]  # the clip of crop 3: its own runs, then those 2 and 4 clips on
    lengths = (batch["run_frames"][9:12] > 0).sum(1).tolist()
    assert lengths == [3 + c, 3 + (c + 2) % 6, 3 + (c + 4) % 6]
    assert (batch["run_frames"][9, : 3 + c] == 2).all()  # runs of 2 frames each
    assert collate_crops([one[0]])["run_units"].shape[0] == 1


def test_a_few_steps_lower_the_mel_loss():
    torch.manual_seed(0)
    module = VocoderModule(TINY, vocab_size=8, hop=320, sample_rate=16000, durations=False)
    units = torch.randint(0, 8, (4, 16))
    t = torch.arange(16 * 320) / 16000
    # every unit a tone of its own pitch: a mapping the vocoder can learn
    freq = (200 + 60 * units).repeat_interleave(320, dim=1).float()
    wave = 0.5 * torch.sin(2 * torch.pi * freq * t)
    opt = torch.optim.AdamW(module.net.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):
        loss = module.mel_loss(module.net(units), wave)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert losses[-1] < 0.7 * losses[0], losses[::10]


def test_the_delta_term_sees_changes_the_mel_l1_is_blind_to_and_costs_no_mel_pass():
    vocos = VocoderModule(TINY, vocab_size=8, hop=320, sample_rate=16000, durations=False)
    cfg = dataclasses.replace(TINY, delta_weight=45.0)
    ours = VocoderModule(cfg, vocab_size=8, hop=320, sample_rate=16000, durations=False)
    torch.manual_seed(0)
    noise = torch.randn(1, 16 * 320)
    # on for 8 frames, off for 8: the same frames as off for 8, on for 8, in the other order
    gate = torch.cat([torch.ones(8 * 320), torch.full((8 * 320,), 1e-3)])
    y, y_hat = noise * gate, noise * gate.flip(0)
    mel, delta = ours.spectral_losses(y_hat, y)
    same = sum(loss(y_hat, y) for loss in vocos.mel_losses) / len(vocos.mel_losses)
    assert torch.allclose(mel, same) and torch.allclose(vocos.mel_loss(y_hat, y), same)
    assert float(delta) > 0 and float(vocos.spectral_losses(y_hat, y)[1]) == 0  # off: not computed
    assert float(ours.spectral_losses(y, y)[1]) == 0
    # a smoothed copy (the mean of the two) is nearer in mel L1 per frame than its changes say
    smooth = noise * (gate + gate.flip(0)) / 2
    mel_s, delta_s = ours.spectral_losses(smooth, y)
    assert float(delta_s) > 0.05 * float(mel_s)


def test_the_mel_loss_averages_its_scales_and_refuses_bad_ones():
    """Four scales (the demo's) are the mean of four one-scale losses; a scale too short to
    hold a mel band, or none, is a one-line error."""
    torch.manual_seed(0)
    y, y_hat = torch.randn(2, 16 * 320), torch.randn(2, 16 * 320)
    scales = [256, 512, 1024, 2048]
    cfg = dataclasses.replace(TINY, mel_scales=scales)
    many = VocoderModule(cfg, vocab_size=8, hop=320, sample_rate=16000, durations=False)
    ones = [
        VocoderModule(
            dataclasses.replace(TINY, mel_scales=[n]),
            vocab_size=8, hop=320, sample_rate=16000, durations=False,
        ).mel_loss(y_hat, y)
        for n in scales
    ]  # fmt: skip
    assert float(many.mel_loss(y_hat, y)) == pytest.approx(float(sum(ones)) / 4, rel=1e-6)
    assert len({round(float(x), 4) for x in ones}) == 4  # the scales see different things
    for bad in ([], [32]):
        with pytest.raises(UserError, match="vocoder.mel_scales"):
            VocoderModule(dataclasses.replace(TINY, mel_scales=bad), vocab_size=8, hop=320,
                          sample_rate=16000, durations=False)  # fmt: skip


@pytest.mark.parametrize(
    "predictor",
    [{}, {"dur_classes": 4, "dur_layers": 3, "dur_kernel": 5, "dur_dropout": 0.1}],
    ids=["fairseq: log-duration regression", "classes of 1..K frames"],
)
def test_the_duration_predictor_learns_durations_of_deduplicated_units(predictor):
    torch.manual_seed(0)
    net = UnitVocoder(dataclasses.replace(TINY, **predictor), vocab_size=8, hop=320)
    units = torch.randint(0, 8, (16, 12))
    frames = 1 + units % 4  # each unit's own duration
    opt = torch.optim.AdamW(net.duration.parameters(), lr=1e-2)
    for _ in range(150):
        loss = duration_loss(net, units, frames)
        opt.zero_grad()
        loss.backward()
        opt.step()
    net.eval()
    got = torch.stack([net.durations(u) for u in units])
    assert (got == frames).float().mean() > 0.8


def test_classes_count_longer_runs_as_the_longest_and_fairseqs_layout_loads_old_weights():
    """A run longer than K frames trains class K (no index error); the default predictor keeps
    fairseq's parameter names and shapes, so vocoders trained before the setting existed load."""
    net = UnitVocoder(dataclasses.replace(TINY, dur_classes=3), vocab_size=8, hop=320)
    loss = duration_loss(net, torch.tensor([[1, 2, 3]]), torch.tensor([[1, 7, 0]]))
    assert torch.isfinite(loss)
    old = UnitVocoder(TINY, vocab_size=8, hop=320).duration.state_dict()
    convs = [f"{m}.{i}.{p}" for m in ("convs", "norms") for i in (0, 1) for p in ("weight", "bias")]
    assert sorted(old) == sorted([*convs, "embed.weight", "out.bias", "out.weight"])
    assert old["out.weight"].shape == (1, TINY.dur_hidden)


@pytest.fixture(scope="module")
def chain(data_root, tiny_towers, tmp_path_factory) -> dict[str, Path]:
    """A tiny vocoder beside a tiny zipped TTS stage (same tokens)."""
    root = tmp_path_factory.mktemp("voiced")
    cfg = tiny_config(data_root, root, "vocoder.yaml", f"out={root / 'vocoder-tiny'}")
    vocoder = vocoder_stage(cfg)
    towers = [f"inputs.text={tiny_towers['text']}", f"inputs.speech={tiny_towers['speech']}"]
    zcfg = tiny_config(data_root, root, "zip_tts.yaml", *towers, *STEPS, f"out={root / 'zip'}")
    return {"vocoder": vocoder, "stage": zip_stage(zcfg), "data_root": data_root, "root": root}


def test_the_stage_trains_writes_tensorboard_audio_and_is_reused(chain):
    out = chain["vocoder"]
    for name in ("model.safetensors", "vocoder.json", "metrics.json", "identity.json"):
        assert (out / name).is_file(), name
    acc = EventAccumulator(str(out / "tb"), size_guidance={"audio": 0}).Reload()
    tags = acc.Tags()["audio"]
    assert any(t.startswith("vocoder/") for t in tags) and any(t.startswith("gold/") for t in tags)
    cfg = tiny_config(chain["data_root"], chain["root"], "vocoder.yaml", f"out={out}")
    stamp = (out / "metrics.json").stat().st_mtime_ns
    assert vocoder_stage(cfg) == out and (out / "metrics.json").stat().st_mtime_ns == stamp


def test_speak_returns_audio_and_the_cli_writes_a_wav(chain, tmp_path, capsys):
    model = zipper_pl.load(chain["stage"])  # finds the vocoder beside the stage
    (speech,) = model.speak(["the cat sat on the mat"])
    assert speech.audio.dtype == np.float32 and speech.audio.ndim == 1
    assert len(speech.audio) == 320 * len(speech.tokens) and np.isfinite(speech.audio).all()
    with pytest.raises(UserError, match="empty"):
        model.speak([""])
    wav = tmp_path / "x.wav"
    assert main(["speak", str(chain["stage"]), "the cat sat on the mat", "-o", str(wav)]) == 0
    info = sf.info(str(wav))
    said = capsys.readouterr().out
    tokens = int(re.search(r"\((\d+) speech tokens\)", said)[1])  # a 2-step model may say little
    assert info.samplerate == 16000 and info.subtype == "PCM_16" and info.frames == 320 * tokens
    assert str(wav) in said


def test_without_a_vocoder_speech_says_why_and_the_cli_names_the_fix(chain, tmp_path, capsys):
    lone = tmp_path / "alone" / "zip"
    lone.parent.mkdir()
    lone.symlink_to(chain["stage"], target_is_directory=True)
    (speech,) = zipper_pl.load(lone).speak(["the cat"])
    assert speech.audio is None and len(speech.tokens) > 0
    assert "make vocoder" in capsys.readouterr().err
    assert main(["speak", str(lone), "the cat", "-o", str(tmp_path / "y.wav")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "make vocoder" in err[0] and not (tmp_path / "y.wav").exists()
    assert main(["speak", str(lone)]) == 2 and "usage" in capsys.readouterr().err


def test_bad_tokens_and_a_vocoder_of_other_tokens_are_one_line_errors(chain, tmp_path):
    tok = load_units_tokenizer(chain["stage"])
    voice = load_vocoder(chain["vocoder"], tok)
    for bad, match in (([1, 99], "outside"), ([0.5, 1.5], "integers"), ([[1, 2]], "1-D")):
        with pytest.raises(UserError, match=match):
            voice(np.array(bad))
    assert voice(np.zeros(0, dtype=np.int64)).shape == (0,)  # said nothing: no samples
    other = dataclasses.replace(tok.cfg, units_k=16)
    other_tok = type(tok)(other, centroids=tok.centroids.numpy()[:16])
    with pytest.raises(UserError, match="other speech tokens"):
        load_vocoder(chain["vocoder"], other_tok)


@pytest.mark.parametrize("codec", ["units_dedup", "hubert"])
def test_speak_returns_audio_for_deduplicated_units_and_hubert(codec, chain, tiny_towers, tmp_path):
    """Both codecs end to end: speech tower, vocoder (with durations for deduplicated units) and a
    zipped TTS stage, then ``speak`` gives a waveform."""
    data_root = chain["data_root"]
    audio = ["audio.units_dedup=true"]
    if codec == "hubert":  # a random tiny HuBERT saved locally, as a hub id's folder would be
        hubert = save_tiny_hubert(tmp_path / "hubert")
        audio = ["audio.codec=hubert", f"audio.ssl_model={hubert}", "audio.ssl_layer=1", *audio]
    speech = pretrain(tiny_config(data_root, tmp_path, "pretrain_speech.yaml", *audio, *STEPS))
    vocoder = vocoder_stage(
        tiny_config(data_root, tmp_path, "vocoder.yaml", *audio, f"out={tmp_path / 'vocoder-x'}")
    )
    assert json.loads((vocoder / "metrics.json").read_text())["durations"] is True
    towers = [f"inputs.text={tiny_towers['text']}", f"inputs.speech={speech}"]
    out = f"out={tmp_path / 'zip'}"
    zcfg = tiny_config(data_root, tmp_path, "zip_tts.yaml", *audio, *towers, *STEPS, out)
    stage = zip_stage(zcfg)
    (said,) = zipper_pl.load(stage).speak(["the cat sat on the mat"])
    assert said.audio.dtype == np.float32 and len(said.audio) >= 320 * len(said.tokens)


def test_with_discriminators_their_optimizer_travels_in_last_ckpt(data_root, tmp_path):
    """Vocos' adversarial training (s, l): the discriminators' optimizer is not Lightning's, so
    its state must still be in the checkpoint a resumed stage starts from."""
    over = ("vocoder.gan_from=1", "vocoder.max_steps=2", "vocoder.val_every=2")
    out = vocoder_stage(
        tiny_config(data_root, tmp_path, "vocoder.yaml", *over, f"out={tmp_path / 'v'}")
    )
    ckpt = torch.load(out / "last.ckpt", map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 2  # generator steps only
    assert ckpt["discriminator_optimizer"]["optimizer"]["state"]  # stepped once, at step 1
    assert json.loads((out / "metrics.json").read_text())["gan"] is True


def test_a_tts_stage_beside_a_vocoder_puts_spoken_validation_samples_in_tensorboard(chain):
    acc = EventAccumulator(str(chain["stage"] / "tb"), size_guidance={"audio": 0}).Reload()
    assert any(t.startswith("val/tts_") for t in acc.Tags()["audio"]), acc.Tags()["audio"]


def test_make_evaluate_with_another_vocoder_gets_its_own_evaluation_folder(chain):
    """VOCODER=<folder> reaches the stage-path computation: the evaluation it names is that
    vocoder's, not the chain's own vocoder's (whose folder the results once overwrote)."""
    from zipper_pl.__main__ import _chain_paths

    base = [str(ROOT / "experiments" / "tiny"), f"runs={chain['root']}"]
    own, voiced = _chain_paths(base), _chain_paths([*base, f"inputs.vocoder={chain['vocoder']}"])
    assert voiced["VOCODER_DIR"] == chain["vocoder"] != own["VOCODER_DIR"]
    assert voiced["EVAL_DIR"] != own["EVAL_DIR"]
    assert {k: v for k, v in voiced.items() if "EVAL" not in k and "VOCODER" not in k} == {
        k: v for k, v in own.items() if "EVAL" not in k and "VOCODER" not in k
    }


def test_make_starts_the_vocoder_before_the_towers(tmp_path):
    """The demo's lanes (`make -j2`) start prerequisites in the order listed: the vocoder, the
    longest stage, which needs no tower and which the TTS stages wait for, comes first."""
    r = run_make("-n", "evaluate", "SCALE=tiny", f"RUNS={tmp_path}", timeout=120)
    assert r.returncode == 0, r.stderr
    stages = [s for s in re.findall(r"-m zipper_pl (\w+) ", r.stdout) if s != "paths"]
    assert stages[0] == "vocoder" and "pretrain" in stages, stages
    assert stages[-1] == "evaluate", stages
    # then the order benchmarks/demo_lanes.py measures with make itself (its lanes end ~40 s
    # sooner than in the order before)
    outs = re.findall(r" out=\S*/(zipper-asr|zipper-tts|single-asr|single-tts|judge)-", r.stdout)
    assert outs == demo_lanes.MAKEFILE_ORDER[1:], outs  # what the lane simulation assumes
