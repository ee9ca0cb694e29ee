#!/bin/bash
# Run one zipper_pl stage under torchrun: every GPU of one machine, or of several machines (run
# this on each, with the same settings). torchrun starts NPROC_PER_NODE processes per node and
# Lightning reads their ranks from TorchElastic's environment (RANK, LOCAL_RANK, WORLD_SIZE);
# train.devices and train.num_nodes are set here from the same two numbers, last on the command
# line, so they always match what torchrun started.
#
#   examples/torchrun/run_stage.sh pretrain experiments/s/pretrain_text.yaml        # all GPUs
#   NPROC_PER_NODE=4 examples/torchrun/run_stage.sh zip experiments/s/zip_asr.yaml \
#     inputs.text=runs/s-librispeech/pretrain-text-... inputs.speech=runs/s-librispeech/...
#   # two machines, on each (node01 hosts the rendezvous; RUN_ID: any id both share):
#   NNODES=2 MASTER_ADDR=node01 RUN_ID=zip-asr-1 examples/torchrun/run_stage.sh zip ...
#
# The stage folders (`python -m zipper_pl paths EXP train.devices=N train.num_nodes=M` prints
# them, as examples/slurm/README.md explains) and data caches must be on a filesystem every node
# mounts at the same path. CPU processes (gloo): add train.accelerator=cpu train.strategy=ddp.
#
#   NNODES          machines (default 1)
#   NPROC_PER_NODE  processes, one per GPU, on each (default: every GPU torch sees here)
#   MASTER_ADDR     several machines: the host of the rendezvous, reachable from all of them
#   MASTER_PORT     its port (default 29500)
#   RUN_ID          several machines: the rendezvous id, the same on every one and new for each
#                   run: zipper_pl's ranks > 0 follow the rank 0 of their own run by this id (a
#                   SLURM job id will do)
#   ZPL_PYTHON      the interpreter (default: the repository's .venv/bin/python)
set -euo pipefail
[[ $# -ge 2 ]] || {
  echo "usage: $0 STAGE CONFIG.yaml [key=value ...]" >&2
  exit 2
}
stage=$1 config=$2
shift 2
# the repository: relative paths (config, runs=) resolve against it, as with make
cd "$(dirname "$0")/../.."
py=${ZPL_PYTHON:-.venv/bin/python}
nnodes=${NNODES:-1}
nproc=${NPROC_PER_NODE:-$("$py" -c 'import torch; print(torch.cuda.device_count())')}
[[ $nproc -ge 1 ]] || {
  echo "error: no GPU visible: set NPROC_PER_NODE (CPU processes: also train.accelerator=cpu" \
    "train.strategy=ddp)" >&2
  exit 2
}
if [[ $nnodes -eq 1 ]]; then
  # a rendezvous on a free local port under a fresh run id: runs side by side never meet
  rdzv=(--standalone)
else
  : "${MASTER_ADDR:?several nodes: set MASTER_ADDR to the rendezvous host}"
  : "${RUN_ID:?several nodes: set RUN_ID, the same on every node}"
  # c10d rendezvous: nodes join in any order (torchrun numbers them), no --node-rank to keep
  rdzv=(--rdzv-backend=c10d --rdzv-endpoint="$MASTER_ADDR:${MASTER_PORT:-29500}"
    --rdzv-id="$RUN_ID")
fi
# python -m torch.distributed.run is torchrun, from the interpreter's own torch
exec "$py" -m torch.distributed.run --nnodes="$nnodes" --nproc-per-node="$nproc" "${rdzv[@]}" \
  -m zipper_pl "$stage" "$config" "$@" train.devices="$nproc" train.num_nodes="$nnodes"
