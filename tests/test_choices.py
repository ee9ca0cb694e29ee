"""The output modality chosen by the model (zip.choose_output, models/choices.py)."""

from __future__ import annotations

import json
import pickle

import pytest
import torch

import zipper_pl
from tests.conftest import tiny_config
from tests.test_zipper import SPECS, samples, sharpen, towers
from zipper_pl.errors import UserError
from zipper_pl.lit.finetune import FinetuneModule
from zipper_pl.models.choices import AUTO, CHOICE, DONE, choice_classes
from zipper_pl.models.sequences import IGNORE, token_loss
from zipper_pl.models.zipper import ZipperConfig, ZipperModel
from zipper_pl.registry import build_model
from zipper_pl.results.retention import text_retention

CLASSES = choice_classes(list(SPECS))  # text, speech, done


def chooser(seed=0, **cfg):
    tw = towers(seed=seed)
    return ZipperModel.from_towers(tw, ZipperConfig(choose_output=True, **cfg), SPECS)


def test_every_segment_end_names_what_follows():
    m = chooser()
    asr, tts = samples(["speech", "text"], [(3, 2)])[0], samples(["text", "speech"], [(4, 5)])[0]
    batch = pickle.loads(pickle.dumps(m.collator()))([asr, tts])  # picklable for data workers
    text, speech = batch["text" + CHOICE]["targets"], batch["speech" + CHOICE]["targets"]
    # ASR: speech bos..eos = positions 0..4 (eos -> text); text 0..3 (eos -> done)
    assert speech[0].tolist()[:5] == [IGNORE] * 4 + [CLASSES.index("text")]
    assert text[0].tolist()[:4] == [IGNORE] * 3 + [CLASSES.index(DONE)]
    # TTS: text 0..5 (eos -> speech); speech 0..6 (eos -> done)
    assert text[1].tolist()[:6] == [IGNORE] * 5 + [CLASSES.index("speech")]
    assert speech[1].tolist()[:7] == [IGNORE] * 6 + [CLASSES.index(DONE)]
    assert (text != IGNORE).sum() == 2 and (speech != IGNORE).sum() == 2
    logits = m(batch)
    assert logits["text" + CHOICE].shape == (*text.shape, 3)
    assert token_loss(logits, batch)[0].isfinite()


def force(m, tower_to_class):
    """Heads that always choose tower_to_class[tower] (whatever the state)."""
    for t, cls in tower_to_class.items():
        head = m.choice.heads[t]
        head.weight.data.zero_()
        head.bias.data.fill_(-10.0)
        head.bias.data[CLASSES.index(cls)] = 10.0
    return m


@pytest.mark.parametrize("engine", ["static", "uncached"])
def test_generation_follows_the_chosen_modality(engine, capsys):
    m = sharpen(chooser(gate_init=0.7, seed=3)).eval()
    xs = samples(["text"], [(5,), (2,)], seed=1) + samples(["speech"], [(6,), (3,)], seed=2)
    kw = dict(max_new_tokens=5, engine=engine)
    # text says "speech next", speech says "done": text in -> [speech], speech in -> nothing
    force(m, {"text": "speech", "speech": DONE})
    out = m.generate(xs, AUTO, **kw)
    assert [[s.modality for s in r] for r in out] == [["speech"], ["speech"], [], []]
    fixed = m.generate(xs[:2], ["speech"], **kw)
    assert all(torch.equal(a[0].tokens, b[0].tokens) for a, b in zip(out, fixed, strict=False))
    # flipped: text says done, speech says text, and text after speech says done
    force(m, {"text": DONE, "speech": "text"})
    out = m.generate(xs, AUTO, **kw)
    assert [[s.modality for s in r] for r in out] == [[], [], ["text"], ["text"]]
    fixed = m.generate(xs[2:], ["text"], **kw)
    assert all(torch.equal(a[0].tokens, b[0].tokens) for a, b in zip(out[2:], fixed, strict=True))
    # a model that never says done is cut at max_segments, on the console
    force(m, {"text": "speech", "speech": "text"})
    out = m.generate(xs[:1], AUTO, max_segments=3, **kw)
    assert [s.modality for s in out[0]] == ["speech", "text", "speech"]
    assert "1 of 1 samples stopped at max_segments=3" in capsys.readouterr().out


def test_a_few_steps_teach_which_modality_answers():
    """Speech in -> text out, text in -> speech out: the text tower must tell a text segment
    that answers speech (then done) from one that is the prompt (then speech)."""
    m = chooser(gate_init=0.5, seed=1)
    data = samples(["speech", "text"], [(4, 3), (6, 2)]) + samples(["text", "speech"], [(3, 5)])
    batch = m.collate(data)
    opt = torch.optim.Adam(m.trainable_parameters(), lr=1e-2)
    for _ in range(40):
        opt.zero_grad()
        token_loss(m(batch), batch)[0].backward()
        opt.step()
    m.eval()
    prompts = [d[:1] for d in data]
    assert m.choose_next(prompts) == ["text", "text", "speech"]
    assert m.choose_next(data) == [DONE] * 3
    out = m.generate(prompts, AUTO, max_new_tokens=4)
    assert [[s.modality for s in r] for r in out] == [["text"], ["text"], ["speech"]]


def test_choices_stay_out_of_the_validation_loss_and_skip_unwanted_softmaxes(data_root, tmp_path):
    """val/loss (lr selection, perplexity) is the token loss alone; the heads' losses are logged
    as their own streams; a forward for one output computes no softmax of the other tower."""
    m = chooser(gate_init=0.5)
    cfg = tiny_config(data_root, tmp_path, "zip_asr.yaml", "zip.choose_output=true")
    module = FinetuneModule(m, cfg, decode_text=lambda ids: "")
    data = samples(["speech", "text"], [(4, 3), (6, 2)])
    batch = {"model": m.collate(data), "tasks": ["asr", "asr"]}
    _, sums, _ = module._losses(batch)
    tokens = sum(int((batch["model"][t]["targets"] != IGNORE).sum()) for t in SPECS)
    assert int(sums["loss_asr"][1]) == tokens and "loss_text" + CHOICE in sums
    out = m(batch["model"], outputs={"text"})
    assert set(out) == {"text", "text" + CHOICE, "speech" + CHOICE}


def test_choices_are_made_without_dropout_or_gradients():
    m = chooser(gate_init=0.5, dropout=0.5, seed=2).train()
    xs = samples(["speech"], [(5,), (3,), (7,), (2,)], seed=4) + samples(["text"], [(4,)])
    picks = [m.choose_next(xs) for _ in range(5)]
    assert all(p == picks[0] for p in picks) and m.training


def test_choosing_needs_a_zipped_architecture(data_root, tmp_path):
    cfg = tiny_config(data_root, tmp_path, "zip_asr.yaml", "arch=single", "zip.choose_output=true")
    with pytest.raises(UserError, match="needs a zipped architecture"):
        build_model(cfg, towers(), SPECS)


def test_a_model_without_choice_heads_says_how_to_get_them():
    m = ZipperModel.from_towers(towers(), ZipperConfig(), SPECS)
    with pytest.raises(UserError, match="zip.choose_output=true"):
        m.generate(samples(["text"], [(3,)]), AUTO, max_new_tokens=3)
    with pytest.raises(UserError, match="at least 1 generated segment"):
        chooser().generate(samples(["text"], [(3,)]), AUTO, max_new_tokens=3, max_segments=0)
    assert chooser().generate([[], []], AUTO, max_new_tokens=3) == [[], []]  # nothing to answer


def test_a_zip_stage_measures_the_modality_it_chooses(data_root, tiny_towers, tmp_path):
    """A stage trained on ASR and TTS items with choice heads reports, per task, how often the
    model chose the task's output modality, how often its output is the fixed-modality output,
    and the WER of the transcripts it chose to write; it reloads with its heads."""
    from tests.conftest import zip_config
    from zipper_pl.runs.finetuned import load_finetuned
    from zipper_pl.stages.chain import zip_stage

    overrides = (
        *("data.task=mix", "zip.choose_output=true", "train.max_steps=4"),
        *("eval.max_utterances=4", "eval.max_new_text=8", "eval.max_new_speech_per_word=2"),
    )  # an untrained model writes to its budgets, four segments long: keep them short
    out = zip_stage(zip_config(data_root, tiny_towers, tmp_path / "z", *overrides))
    metrics = json.loads((out / "metrics.json").read_text())
    for task in ("asr", "tts"):
        assert 0 <= metrics[f"test_{task}_choice_acc"] <= 1
        assert 0 <= metrics[f"test_{task}_same_as_fixed"] <= metrics[f"test_{task}_choice_acc"]
    assert metrics["test_asr_wer_chosen"] >= 0 and "test_tts_wer_chosen" not in metrics
    ft = load_finetuned(out)
    assert set(ft.model.choice.heads) == {"text", "speech"}
    model = zipper_pl.load(out)  # the Python API: "auto" lets the model choose
    (sample,) = model.generate([[("speech", [1, 2, 3, 4])]], "auto")
    assert all(m in ("text", "speech") and isinstance(ids, list) for m, ids in sample)
    with pytest.raises(UserError, match=r"give a list, e.g. \['text'\]"):
        model.generate([[("speech", [1, 2, 3, 4])]], "text")
    # text retention runs the model on text alone: the choice targets are no second text stream
    assert text_retention(ft, ft.cfg)["ppl_after"] > 0
