# Sourced by every examples/slurm/*.sbatch script (bash): the repository, the chain's settings,
# the stage folders and the srun command line. Settings come from the environment: sbatch's
# default --export=ALL hands the submitting shell's variables to the job.
#
#   ZPL_EXP            experiment folder, relative to the repository (default experiments/s)
#   ZPL_RUNS           root of the stage folders (default runs); every node must see it, and the
#                      data cache (data.cache_dir), at the same path: rank 0 writes, all read
#   ZPL_ARGS           key=value overrides of every stage (make's ARGS), e.g.
#                      "data.root=/datasets/LibriSpeech"
#   ZPL_FT_ARGS        overrides of the fine-tuning stages only, zip and evaluate (make's FT_ARGS)
#   ZPL_NODES          the chain's nodes and GPUs per node: train.num_nodes and train.devices.
#   ZPL_GPUS_PER_NODE  Distributed stages take them from their allocation (and refuse one that
#                      differs when they are set); judge and evaluate, one process each, need
#                      them set, because every training stage's identity holds train.devices and
#                      train.num_nodes (they set the global batch), the judge's included
#   ZPL_ACCELERATOR    train.accelerator / train.strategy where set (make's ACCELERATOR /
#   ZPL_STRATEGY       STRATEGY); else the experiment file's (auto: DDP on several GPUs)
#   ZPL_PYTHON         the interpreter (default: the repository's .venv/bin/python)
#   ZPL_REPO           the repository (default: the folder sbatch was run from)
#
# Stage folders contain no spaces: `paths` prints them space-separated (as the Makefile reads it).

zpl_die() {
  echo "error: $*" >&2
  exit 2
}

# The batch script runs from a spool copy, so its own path says nothing: the repository is the
# folder sbatch was called from, and relative paths (ZPL_EXP, ZPL_RUNS) resolve against it.
ZPL_REPO=${ZPL_REPO:-${SLURM_SUBMIT_DIR:-$PWD}}
[[ -f $ZPL_REPO/zipper_pl/__main__.py ]] ||
  zpl_die "$ZPL_REPO is not the zipper_pl repository: run sbatch from its root or set ZPL_REPO"
cd "$ZPL_REPO" || zpl_die "cannot enter $ZPL_REPO"
ZPL_PY=${ZPL_PYTHON:-$ZPL_REPO/.venv/bin/python}
ZPL_EXP=${ZPL_EXP:-experiments/s}
ZPL_RUNS=${ZPL_RUNS:-runs}
[[ -d $ZPL_EXP ]] || zpl_die "ZPL_EXP=$ZPL_EXP is not an experiment folder"
# Python's output reaches the job's log as it is printed, not when a buffer fills.
export PYTHONUNBUFFERED=1

read -r -a ZPL_USER_ARGS <<<"${ZPL_ARGS:-}"
read -r -a ZPL_FT <<<"${ZPL_FT_ARGS:-}"
# The overrides of every stage (make's COMMON), without the chain's shape: `data` needs none.
ZPL_COMMON=(runs="$ZPL_RUNS")
[[ -z ${ZPL_ACCELERATOR:-} ]] || ZPL_COMMON+=(train.accelerator="$ZPL_ACCELERATOR")
[[ -z ${ZPL_STRATEGY:-} ]] || ZPL_COMMON+=(train.strategy="$ZPL_STRATEGY")
ZPL_COMMON+=(${ZPL_USER_ARGS[@]+"${ZPL_USER_ARGS[@]}"})

# One srun task per GPU (the sbatch lines), each seeing every GPU of its node (no --gpus-per-task
# or --gpu-bind): Lightning's SLURM environment makes SLURM_PROCID the rank and SLURM_LOCALID the
# device, cuda:<SLURM_LOCALID>. --kill-on-bad-exit: a rank that fails ends the step instead of
# leaving the others waiting in a collective until the job's time limit. --cpus-per-task again:
# srun in Slurm 22.05 and later no longer inherits it from the job (data loader workers need it).
# shellcheck disable=SC2034  # read by the sbatch scripts that source this file
ZPL_SRUN=(srun --kill-on-bad-exit=1 --cpus-per-task="${SLURM_CPUS_PER_TASK:-1}")

# A distributed stage: train.num_nodes / train.devices are the allocation's nodes and tasks per
# node, which Lightning's SLURM environment checks them against (it stops on a mismatch).
zpl_distributed() {
  local nodes=${SLURM_JOB_NUM_NODES:?not inside a SLURM job: submit with sbatch}
  local tasks=${SLURM_NTASKS_PER_NODE:-}
  [[ -n $tasks ]] || zpl_die "submit with --ntasks-per-node (one task per GPU): Lightning reads it"
  ZPL_NODES=${ZPL_NODES:-$nodes}
  ZPL_GPUS_PER_NODE=${ZPL_GPUS_PER_NODE:-$tasks}
  [[ $ZPL_NODES == "$nodes" && $ZPL_GPUS_PER_NODE == "$tasks" ]] || zpl_die \
    "the chain runs on ZPL_NODES=$ZPL_NODES x ZPL_GPUS_PER_NODE=$ZPL_GPUS_PER_NODE; this job has" \
    "$nodes x $tasks: sbatch --nodes=$ZPL_NODES --ntasks-per-node=$ZPL_GPUS_PER_NODE" \
    "--gpus-per-node=$ZPL_GPUS_PER_NODE"
  if [[ ${ZPL_ACCELERATOR:-} != cpu ]]; then
    # "a100:4" or "4" (--gpus-per-node), or the count --gres gives
    local gpus=${SLURM_GPUS_PER_NODE:-${SLURM_GPUS_ON_NODE:-}}
    [[ ${gpus##*:} == "$tasks" ]] || zpl_die \
      "--gpus-per-node=${gpus:-unset} but --ntasks-per-node=$tasks: one task per GPU"
  fi
  zpl_shape
}

# A one-process stage of a distributed chain (judge, evaluate): the chain's shape, as given.
zpl_chain_shape() {
  [[ -n ${ZPL_NODES:-} && -n ${ZPL_GPUS_PER_NODE:-} ]] || zpl_die \
    "export ZPL_NODES and ZPL_GPUS_PER_NODE, the chain's shape (its training stages'" \
    "--nodes and --ntasks-per-node), before sbatch: e.g. ZPL_NODES=2 ZPL_GPUS_PER_NODE=4"
  zpl_shape
}

zpl_shape() {
  ZPL_COMMON+=(train.num_nodes="$ZPL_NODES" train.devices="$ZPL_GPUS_PER_NODE")
  local job=${SLURM_JOB_ID:+, job $SLURM_JOB_ID}
  echo "[slurm] chain: $ZPL_NODES node(s) x $ZPL_GPUS_PER_NODE device(s)$job"
}

# Every stage folder of the chain, as the Makefile computes them: P[DIR_text], P[DIR_speech],
# P[ZIPPER_ASR_DIR], P[SINGLE_TTS_DIR], P[JUDGE_DIR], P[VOCODER_DIR] (absent where the codec
# decodes audio itself), P[EVAL_DIR] (`python -m zipper_pl paths` prints them).
zpl_paths() {
  local printed kv words
  # an assignment, so that set -e stops the script when `paths` fails
  printed=$("$ZPL_PY" -m zipper_pl paths "$ZPL_EXP" "${ZPL_COMMON[@]}" -- \
    ${ZPL_FT[@]+"${ZPL_FT[@]}"})
  read -r -a words <<<"$printed"
  declare -gA P=()
  for kv in "${words[@]}"; do
    P[${kv%%=*}]=${kv#*=}
  done
}

# Fail now, naming the script to submit, when a stage this one reads is not finished (evaluate
# would otherwise train a missing zip stage itself, in its one process).
zpl_need() {
  local key script
  for key in "$@"; do
    case $key in
      DIR_text) script=pretrain_text.sbatch ;;
      DIR_speech) script=pretrain_speech.sbatch ;;
      ZIPPER_ASR_DIR) script=zip_asr.sbatch ;;
      SINGLE_ASR_DIR) script="zip_asr.sbatch single" ;;
      ZIPPER_TTS_DIR) script=zip_tts.sbatch ;;
      SINGLE_TTS_DIR) script="zip_tts.sbatch single" ;;
      JUDGE_DIR) script=judge.sbatch ;;
      VOCODER_DIR) script=vocoder.sbatch ;;
      *) zpl_die "zpl_need: no stage $key" ;;
    esac
    [[ -f ${P[$key]}/model.safetensors ]] ||
      zpl_die "${P[$key]} is not finished: sbatch examples/slurm/$script first"
  done
}
