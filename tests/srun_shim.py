"""srun where there is no SLURM, for tests/test_launchers.py: starts the job step's tasks on this
machine with the variables srun gives each task, so an examples/slurm script runs as on one node.

Reads the job's variables as an sbatch job holds them (SLURM_NTASKS, SLURM_NTASKS_PER_NODE,
SLURM_JOB_NUM_NODES=1); each task gets SLURM_PROCID, SLURM_LOCALID, SLURM_NODEID and
SLURM_STEP_ID, and writes its output to SRUN_SHIM_LOGS/task<i>.log and its exit status to
task<i>.rc. Options come as ``--name=value`` (the scripts' form) and are not interpreted, except
that a failed task ends the others, as ``--kill-on-bad-exit=1`` asks. Exits 1 if a task failed.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path


def main(argv: list[str]) -> int:
    command = argv[next(i for i, a in enumerate(argv) if not a.startswith("-")) :]
    if os.environ["SLURM_JOB_NUM_NODES"] != "1":
        raise SystemExit("srun_shim: one node only")
    ntasks = int(os.environ["SLURM_NTASKS"])
    logs = Path(os.environ["SRUN_SHIM_LOGS"])
    logs.mkdir(parents=True, exist_ok=True)
    tasks = []
    for i in range(ntasks):
        env = {**os.environ, "SLURM_PROCID": str(i), "SLURM_LOCALID": str(i),
               "SLURM_NODEID": "0", "SLURM_STEP_ID": "0", "SLURM_STEPID": "0"}  # fmt: skip
        with open(logs / f"task{i}.log", "w") as out:
            tasks.append(subprocess.Popen(command, env=env, stdout=out, stderr=subprocess.STDOUT))
    while any(t.poll() is None for t in tasks):
        if any(t.returncode not in (None, 0) for t in tasks):
            for t in tasks:
                if t.poll() is None:
                    t.kill()
        time.sleep(0.2)
    for i, t in enumerate(tasks):
        (logs / f"task{i}.rc").write_text(str(t.returncode))
    return int(any(t.returncode != 0 for t in tasks))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
