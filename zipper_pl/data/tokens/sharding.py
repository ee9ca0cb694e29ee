"""Tokenizing one corpus with several processes: which store shards each one writes.

``python -m zipper_pl data EXP ... --shard i/n`` (``make data SHARD=i/n``) makes process ``i`` of
``n`` tokenize the store shards ``k`` with ``k % n == i`` of every audio token store (each one
resumable, as a single process's); whichever process finds every store shard done merges them,
exactly once, into the store one process would have written, byte for byte. A process that
leaves store shards to the others does not merge: it says so in one console line.

Without the flag the shard comes from the launcher's environment, so that ``torchrun`` or
``srun -n N`` can start the data command as they start training:

- torchrun (and Lightning's launchers, which set the same variables): ``RANK`` / ``WORLD_SIZE``;
- else a SLURM job step: ``SLURM_PROCID`` / ``SLURM_STEP_NUM_TASKS``. The step's task count, not
  ``SLURM_NTASKS``: a batch script itself runs as ONE process with ``SLURM_PROCID=0`` and
  ``SLURM_NTASKS`` = the job's tasks, and must tokenize everything, not its first n-th.

torchrun is read first: ``srun -n 1 torchrun --nproc-per-node 8 ...`` is a step of one task whose
8 processes are torchrun's. The flag wins over both; ``--shard 0/1`` turns the environment off.
A shard process with a node-local rank (``LOCAL_RANK``, else ``SLURM_LOCALID``) on a node of
several GPUs tokenizes on GPU ``local rank % GPUs`` (``pin_gpu``), not all of them on GPU 0.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping

import filelock
import torch

from zipper_pl.data.tokens.store import ShardedTokenWriter, TokenStore
from zipper_pl.errors import UserError

Shard = tuple[int, int]  # (i, n): process i of n
# (rank, count) variables of each launcher, in the order they are read
ENVIRONMENTS = (("RANK", "WORLD_SIZE"), ("SLURM_PROCID", "SLURM_STEP_NUM_TASKS"))
FLAG = "--shard"
LOCAL_RANKS = ("LOCAL_RANK", "SLURM_LOCALID")  # a process's rank on its node: torchrun, srun


def parse_shard(spec: str, *, source: str = FLAG) -> Shard:
    """``"i/n"`` as ``(i, n)``; a ``UserError`` of one line naming ``source`` and the fix."""
    try:
        i, n = (int(x) for x in spec.split("/"))
    except ValueError:
        raise UserError(
            f"{source} {spec!r}: write it as i/n, process i of n, e.g. {FLAG} 0/2 and {FLAG} 1/2 "
            "for two processes"
        ) from None
    if n < 1 or not 0 <= i < n:
        raise UserError(
            f"{source} {spec!r}: need n >= 1 processes and 0 <= i < n, e.g. {FLAG} 0/{max(n, 2)} "
            f"to {FLAG} {max(n, 2) - 1}/{max(n, 2)}"
        )
    return i, n


def data_shard(*, flag: str | None, environ: Mapping[str, str]) -> tuple[Shard | None, str]:
    """(the shard this process tokenizes, or None for all of them; where it came from).

    ``flag`` (the command line's ``--shard``) wins; else the first launcher's pair of variables
    that is set (module docstring). One process (``n == 1``) is None: it tokenizes and merges
    everything, as without sharding.
    """
    if flag is not None:
        shard, source = parse_shard(flag), FLAG
    else:
        for rank, count in ENVIRONMENTS:
            if rank in environ and count in environ:
                source = f"{rank}/{count}"
                spec = f"{environ[rank].strip()}/{environ[count].strip()}"
                shard = parse_shard(spec, source=f"the environment's {source} =")
                break
        else:
            return None, ""
    return (shard if shard[1] > 1 else None), source


def pin_gpu(environ: Mapping[str, str]) -> int | None:
    """Make GPU ``local rank % GPUs`` this process's current one and return it; None without a
    local rank (``LOCAL_RANKS``) or with fewer than 2 GPUs. ``audio.device`` auto / cuda means
    the current GPU: without this, every shard process of a node would tokenize on GPU 0."""
    name = next((v for v in LOCAL_RANKS if v in environ), None)
    if name is None or not torch.cuda.is_available() or torch.cuda.device_count() < 2:
        return None
    try:
        local = int(environ[name])
    except ValueError:
        raise UserError(
            f"the environment's {name}={environ[name]!r} is no process number: unset it, or "
            "start the shard processes with torchrun / srun, which set it"
        ) from None
    gpu = local % torch.cuda.device_count()
    torch.cuda.set_device(gpu)
    return gpu


def split_shard_flag(args: list[str]) -> tuple[str | None, list[str]]:
    """(the value of ``--shard i/n`` or ``--shard=i/n`` in ``args``, the other arguments)."""
    value, rest = None, []
    it = iter(args)
    for a in it:
        if a == FLAG or a.startswith(FLAG + "="):
            if value is not None:
                raise UserError(f"{FLAG} given twice: give it once, as {FLAG} i/n")
            value = a.partition("=")[2] if "=" in a else next(it, None)
            if not value:
                raise UserError(f"{FLAG} needs a value: {FLAG} i/n, process i of n, e.g. 0/2")
            parse_shard(value)  # a bad value stops here, before the config is even read
        else:
            rest.append(a)
    return value, rest


def owns(shard: Shard | None, k: int) -> bool:
    """Whether the process of ``shard`` (None: the only one) tokenizes store shard ``k``."""
    return shard is None or k % shard[1] == shard[0]


def shard_line(label: str, shard: Shard, *, tokenized: int, total: int, missing: int) -> str:
    """The console line of a shard process that finished its part of a store: what it did and
    what is left (``missing`` store shards of other processes; 0: the store is merged)."""
    i, n = shard
    did = f"[data] {label}: shard {i}/{n} tokenized {tokenized} of {total} store shards"
    if not missing:
        return f"{did}; every store shard is done: the store is merged"
    return (f"{did}; {missing} left for the other shards: run them; the last to finish (or "
            "`make data` after them) merges the store")  # fmt: skip


def merge_once(
    writer: ShardedTokenWriter,
    n_shards: int,
    *,
    known: Collection[int],
    ready: Callable[[int], bool],
    merge: Callable[[], None],
) -> int:
    """Run ``merge`` (which finalizes ``writer``) once every store shard is done; return how
    many are still missing (0: the store is finished, by this call or by another process).

    Under the lock ``.<folder>.lock``, beside the store (nothing in the store differs from one
    process's; hidden, as listings of the cache expect stores only): of shard processes
    finishing together, exactly one merges and the others find the store finished. ``known``:
    shards this process found or wrote intact, not hashed again; another shard counts as done
    when intact and ``ready(k)`` (the caller's per-shard files are there).
    """
    with filelock.FileLock(writer.dir.parent / f".{writer.dir.name}.lock"):
        if TokenStore.exists(writer.dir):
            return 0  # another shard process merged it meanwhile
        others = [k for k in range(n_shards) if k not in known]
        found = [k for k in writer.completed_shards(among=others) if ready(k)]
        if len(found) < len(others):
            return len(others) - len(found)
        merge()
    return 0
