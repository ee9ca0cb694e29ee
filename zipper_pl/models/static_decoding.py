"""The parts of the ``static`` generation engine that are not a model's (its caches are
``kv_cache.StaticKVCache``): the self-attention mask of one decoding step, and CUDA-graph replay.

Why our own and not transformers' ``StaticCache`` + ``generate``: a Zipper step runs several
towers' blocks in lockstep with cross-attention caches between them, which no library generation
loop models; what we need from the idea (a fixed-shape step whose position is a tensor, so it can
be captured once and replayed) is the ~100 lines below. The captured step is what gpt-fast and
vLLM do by hand with ``torch.cuda.CUDAGraph``; ``torch.compile(mode="reduce-overhead")`` skips
its CUDA graphs for steps that mutate their inputs, which every decoding step does (the caches).

The ``compiled`` engine passes the same step through ``torch.compile`` (inductor) first: on a CPU,
where there are no launches to save, a step is bound by per-op dispatch (each RMSNorm, RoPE and
mask is several ops) and fused kernels are what make it faster (docs/performance.md: 1.8x the
dynamic engine at batch 16 on the demo Zipper, 2-core Xeon). It costs a compilation (~50 s for the
demo Zipper on 2 cores, then ~10-20 s once more when a shape first changes: torch's automatic
dynamic shapes then serve later batch sizes and lengths, with one more compile each for an output
modality, a batch of one and another model), so it pays off on long generation runs only. Past
``STEP_RECOMPILE_LIMIT`` versions of a step method it runs eagerly, with dynamo's warning.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable

import torch
from torch import Tensor

# set by the first capture that fails: later steps run eagerly instead of failing again
_capture_failure: str | None = None
STEP_RECOMPILE_LIMIT = 64  # compiled versions of one decoding step method (dynamo's default: 8)
# step function -> its torch.compile wrapper (one per process, said once: compiling takes a while)
_compiled: dict[Callable, Callable] = {}

# steps between the host's "is any row still live?" checks when a step costs microseconds (CUDA):
# each check waits for the queued steps; up to this many steps of finished rows are wasted
CUDA_SYNC_EVERY = 16


def sync_every(device: torch.device | str) -> int:
    """Steps between liveness checks: on a CPU a check costs nothing and a wasted step does."""
    return CUDA_SYNC_EVERY if torch.device(device).type == "cuda" else 1


def graphs_on(device: torch.device | str) -> bool:
    """Replay decoding steps as CUDA graphs (on CUDA; a CPU step has no launches to save)."""
    return torch.device(device).type == "cuda"


def step_mask(valid: Tensor, slot: Tensor) -> Tensor:
    """Self-attention mask [B,1,1,cap] of the token at ``slot``: every written valid key (all
    earlier: slots fill in order) and the token itself (a padding query sees only itself, so SDPA
    never yields NaN), exactly ``Tower.attention_mask`` of a one-token step."""
    cols = torch.arange(valid.size(1), device=valid.device)
    return (valid | (cols == slot))[:, None, None, :]


class GraphedStep:
    """``step(tok, valid) -> logits``, eager, or on CUDA replayed as one captured CUDA graph;
    with ``compile_step`` the step goes through ``torch.compile`` first (captured after compiling).

    The first ``warmup`` calls run eagerly on a side stream (real steps: they also initialise
    cuBLAS and the allocator, as capture requires); the next call is captured and replayed, and
    every later one copies its inputs into the captured ones and replays. The returned logits
    live in the graph's memory and are overwritten by the next call: read them first. A capture
    that fails (an op that cannot be captured) is reported once, and every step of the process
    then runs eagerly.
    """

    def __init__(
        self,
        step: Callable[[Tensor, Tensor], Tensor],
        capture: bool,
        warmup: int = 2,
        compile_step: bool = False,
    ) -> None:
        capture = capture and _capture_failure is None
        step = compiled(step) if compile_step else step
        self.step, self.capture, self.warmup, self.calls = step, capture, warmup, 0
        self.graph: torch.cuda.CUDAGraph | None = None
        self.inputs: tuple[Tensor, Tensor] | None = None
        self.out: Tensor | None = None

    def __call__(self, tok: Tensor, valid: Tensor) -> Tensor:
        if not self.capture:
            return self.step(tok, valid)
        self.calls += 1
        if self.calls <= self.warmup:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side), _capture_autocast():  # as captured: no recompile there
                out = self.step(tok, valid)
            torch.cuda.current_stream().wait_stream(side)
            return out
        if self.graph is None:
            self.inputs = (tok.clone(), valid.clone())
            try:
                self.graph, self.out = _capture(self.step, *self.inputs)
            except RuntimeError as err:
                _capture_failed(err)
                self.capture = False
                return self.step(tok, valid)
        else:
            self.inputs[0].copy_(tok)
            self.inputs[1].copy_(valid)
        self.graph.replay()
        return self.out


def compiled(step: functools.partial) -> Callable[[Tensor, Tensor], Tensor]:
    """``step`` (``partial(runner.step, m)``) through ``torch.compile``, compiled as the method's
    own function: dynamo caches compiled code per code object, at most ``recompile_limit``
    entries each, and a compiled ``partial`` would share one wrapper's code object with every
    other step (the Zipper's, the single decoder's), whose shapes and modalities would then use
    up that limit together and fall back to eager."""
    method = step.func
    function = method.__func__
    if function not in _compiled:
        name = function.__qualname__
        print(
            f"[generate] compiling the decoding step {name} (torch.compile; the first call of "
            "a new shape takes ~10-60 s, later steps are faster)",
            file=sys.stderr,
        )
        _compiled[function] = _with_recompile_limit(torch.compile(function))
    return functools.partial(_compiled[function], method.__self__, *step.args)


def _with_recompile_limit(fn: Callable) -> Callable:
    """``fn`` called with dynamo's recompile limit at ``STEP_RECOMPILE_LIMIT``: a decoding step
    specialises on its output modality, on batches of one, on towers still empty (0 and 1 are
    never symbolic) and on each model, so the default 8 ran out within one test session; past
    the limit dynamo runs a step eagerly. Patched per call, not for the process: other
    compiled code keeps its limit (a captured CUDA graph replays without calling this)."""

    @functools.wraps(fn)
    def call(*args, **kwargs):
        with torch._dynamo.config.patch(recompile_limit=STEP_RECOMPILE_LIMIT):
            return fn(*args, **kwargs)

    return call


def _capture_failed(err: RuntimeError) -> None:
    """Never silent, never retried: say once in this process what fell back and why."""
    global _capture_failure
    _capture_failure = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
    print(
        f"[generate] CUDA graph capture failed, every later step decodes eagerly "
        f"(slower, same tokens): {_capture_failure}",
        file=sys.stderr,
    )


def _capture(step, tok: Tensor, valid: Tensor) -> tuple[torch.cuda.CUDAGraph, Tensor]:
    """Record one step into a CUDA graph (nothing runs until ``replay``). Autocast's cast cache
    is off inside: cached casts are freed when the caller's autocast exits, under the graph."""
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph), _capture_autocast():
        out = step(tok, valid)
    return graph, out


def _capture_autocast() -> torch.autocast:
    """The caller's CUDA autocast with its cast cache off: for the capture, and for the warm-up
    calls before it, so a compiled step's guards (they include the autocast state) see the
    same state in both and the capture never recompiles."""
    enabled, dtype = torch.is_autocast_enabled("cuda"), torch.get_autocast_dtype("cuda")
    return torch.autocast("cuda", dtype=dtype, enabled=enabled, cache_enabled=False)
