"""The fine-tuned-model interface and its one generation engine.

``FinetunedModel`` is what the Lightning module, evaluation and judging use, whatever the
architecture (the Zipper, the single decoder, or a later one registered in ``registry.ARCHS``):
``collate`` samples of segments into a batch of streams, ``forward`` to per-stream logits (the loss
is ``sequences.token_loss`` / ``stream_losses`` for all), ``generate`` output modalities, and the
token budgets their sequence lengths allow. Generation is one loop and one sampler for every
architecture: a model contributes a runner whose ``feed`` advances one token column.

Four engines, all token-identical under greedy decoding in fp32 (tests): ``static`` (the
default: preallocated caches written at a device-side slot; on CUDA every decoding step has the
same shapes and replays as one captured CUDA graph, on a CPU it reads only the written slots; the
loop asks the device whether any row is still live only every ``sync_every`` steps),
``compiled`` (the static engine with its step through ``torch.compile``: fused kernels for long
runs, after a compilation of ~1 min on 2 CPU cores), ``dynamic`` (the KV-cached engine before it,
kept as the peer the benchmark compares against) and ``uncached`` (the whole prefix recomputed
each step: the reference).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Protocol

import torch
from torch import Tensor, nn

from zipper_pl.errors import UserError
from zipper_pl.models.choices import AUTO, DONE
from zipper_pl.models.sequences import ModalitySpec, Segment
from zipper_pl.models.tower import Tower

ENGINES = ("static", "compiled", "dynamic", "uncached")
# which random draws a seed gives a sampled segment: stored with scores of sampled output (TTS best
# of N), so a score drawn under another scheme is recomputed, not mixed in. 2 (2026-12-04): each
# segment's uniforms are drawn up front, budget + 1 per row; 1: one draw per step while any row
# was live.
SAMPLING_SCHEME = 2


class Runner(Protocol):
    device: torch.device
    sync_every: int  # steps between the loop's "is any row live?" host syncs

    def feed(self, m: str, tok: Tensor, valid: Tensor, new_segment: bool) -> Tensor:
        """One token [B] of modality m (valid [B]: False = padding) -> its next-token logits
        [B, V_m] over m's own vocabulary."""
        ...


class FinetunedModel(nn.Module):
    """Base of the fine-tuned architectures; subclasses set ``specs`` and implement the rest."""

    specs: dict[str, ModalitySpec]
    frozen: set[str] = set()  # noqa: RUF012 (never mutated; the Zipper sets its own)

    def collator(self, loss_on: str = "last") -> Callable[[Sequence[Sequence[Segment]]], dict]:
        """A picklable function: samples of segments -> {stream: {"ids", "targets", "valid",
        ...} [B,T]}. It holds the vocabularies, never the weights, so data-loader workers
        started by spawn or forkserver do not copy the model."""
        raise NotImplementedError

    def collate(self, samples: Sequence[Sequence[Segment]], loss_on: str = "last") -> dict:
        return self.collator(loss_on)(samples)

    def forward(
        self, batch: Mapping[str, Mapping[str, Tensor]], outputs: Collection[str] | None = None
    ) -> dict[str, Tensor]:
        """{stream: logits [B,T,V]}; ``outputs`` = modalities whose logits are needed."""
        raise NotImplementedError

    def runner(self, engine: str, inputs, outputs, budgets, device) -> Runner:
        raise NotImplementedError

    def check_lengths(
        self, inputs: list[list[Segment]], outputs: list[str], budgets: dict[str, int]
    ) -> None:
        """Raise a UserError when the inputs plus the budgets exceed a sequence length."""
        raise NotImplementedError

    def budget_cap(self, output: str, longest_input: int) -> int:
        """The largest budget for ``output`` after an input of ``longest_input`` tokens."""
        raise NotImplementedError

    def tower_for(self, modality: str) -> Tower:
        """The tower that models ``modality`` on its own (text retention runs it alone)."""
        raise NotImplementedError

    def choose_next(self, samples: Sequence[Sequence[Segment]]) -> list[str]:
        """The modality each sample continues with after its last (closed) segment, or "done":
        the model's own choice (models/choices.py)."""
        raise UserError(
            "this model does not choose its output modality: name output_modalities, or zip "
            "with zip.choose_output=true (arch=zipper; experiments/demo/zip_choose.yaml)"
        )

    def gates(self) -> dict[str, Tensor]:
        """Named gate values to log (tanh of each zipped layer's gates); none by default."""
        return {}

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.parameters() if p.requires_grad]

    @torch.no_grad()
    def generate(
        self,
        inputs: list[list[Segment]],
        output_modalities: list[str] | str,
        max_new_tokens: dict[str, int] | int,
        temperature: float = 0.0,
        top_k: int | None = None,
        seed: int | None = None,
        *,
        engine: str = "static",
        max_segments: int = 4,
    ) -> list[list[Segment]]:
        """Continue each sample's input segments with one segment per output modality, in order.

        Greedy when temperature == 0, else temperature / top-k sampling seeded by ``seed``.
        Batched and KV-cached; ``max_new_tokens`` bounds each output segment (eos excluded).
        ``engine``: one of ``ENGINES`` (module docstring); ``uncached`` recomputes the whole
        prefix each step: the reference the cached engines must equal token for token
        (``generate_uncached``). ``output_modalities="auto"``: the model chooses each segment's
        modality and when to stop, at most ``max_segments`` segments (``generate_auto``).
        """
        if engine not in ENGINES:
            raise UserError(f"generation engine {engine!r} unknown: choose from {ENGINES}")
        if output_modalities == AUTO:
            args = (inputs, max_new_tokens, temperature, top_k, seed, max_segments)
            return generate_auto(self, engine, *args)
        args = (inputs, output_modalities, max_new_tokens, temperature, top_k, seed)
        return run_generation(self, engine, *args)

    generate_uncached = functools.partialmethod(generate, engine="uncached")


def sample(
    logits: Tensor, temperature: float, top_k: int | None, u: Tensor | None, banned: Tensor
) -> Tensor:
    """Next tokens [B] from logits [B,V], with uniform numbers u [B,1] drawn beforehand (so every
    engine, and batches of any make-up, consume the random stream alike); banned: ids [n] on the
    logits' device that are never generated (a list would be copied to the device every step)."""
    logits = logits.float().index_fill(1, banned, float("-inf"))  # bos / pad are never generated
    if temperature == 0:
        return logits.argmax(-1)
    logits = logits / temperature
    if top_k:
        kth = logits.topk(min(top_k, logits.size(-1)), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    cdf = logits.softmax(-1).cumsum(-1)
    return torch.searchsorted(cdf, u).squeeze(1).clamp(max=logits.size(-1) - 1)


def _budgets(
    model: FinetunedModel, inputs, outputs: list[str], max_new_tokens, temperature: float
) -> dict[str, int]:
    names = list(model.specs)
    if not outputs:
        raise UserError("output_modalities is empty: name at least one, e.g. ['text']")
    for m in outputs:
        if m not in model.specs:
            raise UserError(f"output modality {m!r} unknown: choose from {names}")
    for x in inputs:
        for s in x:
            if s.modality not in model.specs:
                raise UserError(f"input modality {s.modality!r} unknown: choose from {names}")
    if temperature < 0:
        raise UserError(f"temperature must be >= 0, got {temperature}")
    if isinstance(max_new_tokens, int):
        budgets = dict.fromkeys(outputs, max_new_tokens)
    else:
        budgets = {m: int(max_new_tokens[m]) for m in outputs if m in max_new_tokens}
        if len(budgets) != len(set(outputs)):
            raise UserError(f"max_new_tokens needs a budget for every output modality {outputs}")
    if min(budgets.values()) < 0:  # 0 = an empty segment (bos, eos)
        raise UserError(f"max_new_tokens must be >= 0 per output modality, got {budgets}")
    return budgets


def run_generation(
    model: FinetunedModel,
    engine: str,
    inputs: list[list[Segment]],
    outputs: list[str],
    max_new_tokens: dict[str, int] | int,
    temperature: float,
    top_k: int | None,
    seed: int | None,
) -> list[list[Segment]]:
    """Every sample generates output segment k in lockstep; a sample that reached its eos (or
    budget: eos is then forced) feeds padding until all are done, then all switch."""
    budgets = _budgets(model, inputs, outputs, max_new_tokens, temperature)
    B = len(inputs)
    if B == 0:
        return []
    model.check_lengths(inputs, outputs, budgets)
    device = next(model.parameters()).device
    gen = torch.Generator(device=device).manual_seed(seed) if seed is not None else None
    was_training = model.training
    model.eval()
    try:
        runner = model.runner(engine, inputs, outputs, budgets, device)
        results: list[list[Segment]] = [[] for _ in range(B)]
        for m in outputs:
            # a row picks at most budget + 1 tokens (the last an eos): draw them all up front, so
            # the stream is consumed alike however late the loop notices that every row is done
            u = torch.rand(budgets[m] + 1, B, 1, generator=gen, device=device)

            def pick(logits: Tensor, banned: Tensor, step: int, u: Tensor = u) -> Tensor:
                return sample(logits, temperature, top_k, u[step], banned)

            for b, toks in enumerate(_segment(runner, model.specs[m], B, budgets[m], pick)):
                results[b].append(Segment(m, toks))
        return results
    finally:
        model.train(was_training)


def generate_auto(
    model: FinetunedModel,
    engine: str,
    inputs: list[list[Segment]],
    max_new_tokens: dict[str, int] | int,
    temperature: float,
    top_k: int | None,
    seed: int | None,
    max_segments: int,
) -> list[list[Segment]]:
    """Generation that follows the model's choices: after the prompt and after every generated
    segment, ``choose_next`` names the next modality per sample (or "done"); the samples that
    chose one modality generate that segment together (``run_generation``, on their prompt so
    far), until every sample is done or has ``max_segments`` segments (counted on the console)."""
    if max_segments < 1:
        raise UserError(f"max_segments={max_segments}: allow at least 1 generated segment")
    prompts = [list(x) for x in inputs]
    results: list[list[Segment]] = [[] for _ in inputs]
    open_rows, no_room = [b for b, x in enumerate(inputs) if x], 0
    for _ in range(max_segments):
        if not open_rows:
            break
        picks = dict(
            zip(open_rows, model.choose_next([prompts[b] for b in open_rows]), strict=True)
        )
        for m in [m for m in model.specs if m in picks.values()]:
            rows = [b for b in open_rows if picks[b] == m]
            group = [prompts[b] for b in rows]
            budgets = _budgets(model, group, [m], max_new_tokens, temperature)
            try:  # another segment of m within its budget may not fit the sequences
                model.check_lengths(group, [m], budgets)
            except UserError:
                picks |= dict.fromkeys(rows, DONE)
                no_room += len(rows)
                continue
            args = (group, [m], max_new_tokens, temperature, top_k, seed)
            for b, out in zip(rows, run_generation(model, engine, *args), strict=True):
                prompts[b].append(out[0])
                results[b].append(out[0])
        open_rows = [b for b in open_rows if picks[b] != DONE]
    if open_rows:  # max_segments reached: does the model want more?
        going_on = [c != DONE for c in model.choose_next([prompts[b] for b in open_rows])]
        if any(going_on):
            print(f"[generate] {sum(going_on)} of {len(inputs)} samples stopped at max_segments="
                  f"{max_segments} while their model chose to go on")  # fmt: skip
    if no_room:
        print(f"[generate] {no_room} of {len(inputs)} samples stopped where their model chose "
              "another segment: the sequence has no room for its budget")  # fmt: skip
    return results


def _segment(runner: Runner, spec: ModalitySpec, B: int, budget: int, pick) -> list[Tensor]:
    """Generate one output segment of modality ``spec`` for every sample -> B token tensors.

    At most budget + 2 feeds (bos, budget tokens, eos). Whether any row is still live is asked of
    the device only every ``runner.sync_every`` steps: in between, finished rows feed padding
    (invalid keys, skipped by every mask) and their picks are not kept."""
    device = runner.device
    banned = torch.tensor(sorted({spec.bos_id, spec.pad_id} - {spec.eos_id}), device=device)
    feed = torch.full((B,), spec.bos_id, device=device)
    live = torch.ones(B, dtype=torch.bool, device=device)
    ending = torch.zeros_like(live)  # the token being fed is this sample's eos
    count = torch.zeros(B, dtype=torch.long, device=device)
    toks, keeps = [], []
    for step in range(budget + 2):
        logits = runner.feed(spec.name, feed, live, step == 0)
        live = live & ~ending
        if step == budget + 1 or (step % runner.sync_every == 0 and not bool(live.any())):
            break
        tok = pick(logits, banned, step)
        tok = torch.where(count >= budget, spec.eos_id, tok)
        ending = live & (tok == spec.eos_id)
        keep = live & ~ending
        toks.append(tok)
        keeps.append(keep)
        count += keep
        feed = torch.where(live, tok, spec.pad_id)
    T, K = torch.stack(toks, 1).cpu(), torch.stack(keeps, 1).cpu()
    return [T[b][K[b]] for b in range(B)]
