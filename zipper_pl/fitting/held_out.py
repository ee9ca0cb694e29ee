"""The test figures a fine-tuning stage writes into its metrics.json: ASR WER of its transcribing
task, teacher-forced token accuracy and perplexity per task, and, for a model that chooses its
output modality (``zip.choose_output``), how often it chooses right and what that costs."""

from __future__ import annotations

import math

import torch

from zipper_pl.config import Config
from zipper_pl.data.batches.aligned import TASKS, Pair, PairTasks, tasks_of
from zipper_pl.data.batches.datamodules import AlignedDataModule
from zipper_pl.lit.finetune import FinetuneModule
from zipper_pl.metrics import corpus_cer, corpus_wer
from zipper_pl.models.choices import AUTO
from zipper_pl.models.sequences import Segment
from zipper_pl.runs.finetuned import Finetuned


def held_out_metrics(ft: Finetuned, module: FinetuneModule, dm: AlignedDataModule) -> dict:
    """Every test figure of a finished fine-tuning stage (``ft``: its ``Finetuned``)."""
    cfg = module.cfg
    res = {}
    if any(TASKS[t].writes_text for t in tasks_of(cfg.data.task)):
        res |= asr_wer(ft, dm.test_pairs, cfg)
    res |= teacher_forced(module, dm)
    if cfg.zip.choose_output:  # a model without choice heads says so (generation.choose_next)
        res |= modality_choice(ft, dm.test_pairs, cfg)
    return res


def asr_wer(ft: Finetuned, pairs: list[Pair], cfg: Config) -> dict:
    """Test WER / CER of the stage's transcribing task (ASR, or ASR through phonemes)."""
    if cfg.eval.max_utterances:
        pairs = pairs[: cfg.eval.max_utterances]
    hyps = ft.transcribe(
        [p.tokens["speech"] for p in pairs], cfg.eval.batch_size, cfg.eval.max_new_text
    )
    refs = [p.text for p in pairs]
    return {
        "test_wer": corpus_wer(refs, hyps),
        "test_cer": corpus_cer(refs, hyps),
        "test_utterances": len(pairs),
    }


def teacher_forced(module: FinetuneModule, dm: AlignedDataModule) -> dict:
    """Token accuracy / perplexity of the output segments on the test split."""
    res = {}
    for task in tasks_of(module.cfg.data.task):
        ds = PairTasks(dm.test_pairs, [(i, task) for i in range(len(dm.test_pairs))])
        loader = torch.utils.data.DataLoader(
            ds, batch_size=module.cfg.eval.batch_size, collate_fn=dm.collate
        )
        totals: dict[str, float] = {}
        module.eval()
        with torch.no_grad():
            for batch in loader:
                batch = module.transfer_batch_to_device(batch, module.device, 0)
                for k, v in module.validation_sums(batch).items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        r = module.reduce_validation_sums(totals)
        res[f"test_{task}_token_acc"] = r.get("val/token_acc")
        res[f"test_{task}_ppl"] = r.get("val/ppl")
    return res


def modality_choice(ft: Finetuned, pairs: list[Pair], cfg: Config) -> dict:
    """Per task of the stage: the share of test prompts (the task's inputs, nothing saying what
    to produce) whose generated modality sequence is the task's outputs, the share whose greedy
    output is token for token the fixed-modality generation, and for transcribing tasks the
    WER of the text the model chose to write (none written: an empty hypothesis)."""
    if cfg.eval.max_utterances:
        pairs = pairs[: cfg.eval.max_utterances]
    device = next(ft.model.parameters()).device
    res = {}
    for task in tasks_of(cfg.data.task):
        t = TASKS[task]
        auto, fixed = [], []
        for lo in range(0, len(pairs), cfg.eval.batch_size):
            batch = pairs[lo : lo + cfg.eval.batch_size]
            prompts = [
                [Segment(m, torch.as_tensor(p.tokens[m], device=device)) for m in t.inputs]
                for p in batch
            ]
            words = max(len(p.text.split()) for p in batch)
            last = cfg.eval.max_new_text  # as evaluation budgets speech: per input word
            last = math.ceil(cfg.eval.max_new_speech_per_word * max(1, words)) if t.speaks else last
            budgets = dict.fromkeys(ft.model.specs, last) | t.budgets(last)  # wrong picks too
            auto += ft.model.generate(prompts, AUTO, max_new_tokens=budgets)
            fixed += ft.model.generate(prompts, list(t.outputs), max_new_tokens=budgets)
        right = [[s.modality for s in a] == list(t.outputs) for a in auto]
        same = [
            ok and all(torch.equal(x.tokens, y.tokens) for x, y in zip(a, f, strict=True))
            for ok, a, f in zip(right, auto, fixed, strict=True)
        ]
        res[f"test_{task}_choice_acc"] = sum(right) / max(1, len(right))
        res[f"test_{task}_same_as_fixed"] = sum(same) / max(1, len(same))
        if t.writes_text:
            out = t.outputs[-1]
            hyps = [
                next((ft.decode_text(s.tokens.tolist()) for s in a if s.modality == out), "")
                for a in auto
            ]
            res[f"test_{task}_wer_chosen"] = corpus_wer([p.text for p in pairs], hyps)
    return res
