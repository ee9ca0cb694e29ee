"""Which process of a launch this is, and how the processes of one launch agree on a stage folder.

Lightning's own DDP launcher starts ranks > 0 from inside rank 0's fit, after rank 0 has claimed
the stage folder (``layout.claim_stage``). srun and torchrun start every rank at once, so a rank
> 0 could get ahead of its rank 0: write the config into a new folder before rank 0 records the
identity there (rank 0 then refuses the folder as another experiment's: seen under torchrun), or
start training while rank 0 still waits for another process that holds the folder and then finds
the stage finished (the rank > 0 would wait alone at the process group's rendezvous). So rank 0
records its decision, tagged with an id every process of its launch shares, and the ranks > 0 of
an srun or torchrun launch wait for that record and follow it.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

from zipper_pl.io import atomic_write_json

# set to a non-zero rank in the processes a launcher starts (DDP spawn, torchrun, SLURM)
RANK_VARS = ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK")
CLAIM_FILE = ".stage.claim"


def is_launching_process() -> bool:
    """Rank 0 of its launch. torchrun numbers its processes itself (``RANK``): started by srun
    on several nodes, its rank 0 need not be on the node srun numbered 0, since c10d rendezvous
    numbers nodes in the order they join."""
    if os.environ.get("TORCHELASTIC_RUN_ID"):
        return os.environ.get("RANK", "0") == "0"
    return all(os.environ.get(v, "0") == "0" for v in RANK_VARS)


def launch_id() -> str | None:
    """An id every process of one launch shares and the next launch does not, or None outside
    torchrun and SLURM. torchrun first, as Lightning ranks them (torchrun inside an sbatch job
    starts the training processes): its run id (``--rdzv-id``; a fresh uuid under
    ``--standalone``), restart count and store address. Under SLURM: the job step, as ``sacct -j``
    names it, and the restart count of a requeued job."""
    env = os.environ
    if env.get("TORCHELASTIC_RUN_ID"):
        restart = env.get("TORCHELASTIC_RESTART_COUNT", "0")
        store = f"{env.get('MASTER_ADDR', '')}:{env.get('MASTER_PORT', '')}"
        return f"torchrun:{env['TORCHELASTIC_RUN_ID']}.{restart}@{store}"
    if env.get("SLURM_JOB_ID"):
        step = f".{env['SLURM_STEP_ID']}" if env.get("SLURM_STEP_ID") else ""
        restart = env.get("SLURM_RESTART_COUNT", "0")
        return f"slurm:{env['SLURM_JOB_ID']}{step}" + (f"+restart{restart}" * (restart != "0"))
    return None


def record_claim(out: Path, train: bool) -> None:
    """Rank 0's decision on ``out`` (train it, or it is finished), for the ranks > 0 of its
    launch; written while rank 0 holds the folder's lock. Outside torchrun and SLURM nobody
    reads it (Lightning's launcher starts ranks > 0 after it), so it is not written."""
    launch = launch_id()
    if launch is not None:
        atomic_write_json(out / CLAIM_FILE, {"launch": launch, "train": train})


def await_claim(out: Path, name: str, finished: Callable[[], bool], poll_s: float = 0.5) -> bool:
    """Whether this rank > 0 trains ``out``: what its rank 0 recorded for this launch (at once
    under Lightning's own launcher, which starts it after that record). Also False once the stage
    is finished: rank 0 records nothing when it finds it finished before taking the lock. Rank 0
    may wait for another process's stage for hours, so there is no timeout here: a rank 0 that
    dies ends the launch (torchrun; srun with ``--kill-on-bad-exit=1``)."""
    me = launch_id()
    if me is None:
        return True
    waited = False
    while not finished():
        try:
            claim = json.loads((out / CLAIM_FILE).read_text())
        except (OSError, ValueError):  # not written yet
            claim = {}
        if claim.get("launch") == me:
            return bool(claim["train"])
        if not waited:
            print(f"[{name}] rank > 0 waiting for rank 0 to claim {out}", flush=True)
            waited = True
        time.sleep(poll_s)
    return False
