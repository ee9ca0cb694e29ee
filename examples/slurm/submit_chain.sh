#!/bin/bash
# Submit the whole chain (make evaluate's) as SLURM jobs, each held until the jobs it reads from
# have finished (sbatch --dependency=afterok): data -> text and speech towers -> judge, vocoder,
# the four zip stages (Zipper and Single Decoder, ASR and TTS) -> evaluate. Stages already
# finished are not submitted again. Run it from a login node; the arguments are sbatch options
# for every job (partition, account, time limit):
#
#   examples/slurm/submit_chain.sh --partition=gpu --time=24:00:00      # 2 nodes x 4 GPUs
#   ZPL_NODES=4 ZPL_GPUS_PER_NODE=8 ZPL_EXP=experiments/l examples/slurm/submit_chain.sh
#
# The other settings (ZPL_ARGS, ZPL_FT_ARGS, ZPL_RUNS, ...) are common.sh's; the jobs inherit
# them with the environment (sbatch's default --export=ALL).
set -euo pipefail
# the jobs find the repository as the folder sbatch ran in (SLURM_SUBMIT_DIR)
cd "$(dirname "$0")/../.."
export ZPL_NODES=${ZPL_NODES:-2} ZPL_GPUS_PER_NODE=${ZPL_GPUS_PER_NODE:-4}
# shellcheck source=examples/slurm/common.sh
source examples/slurm/common.sh
zpl_shape
zpl_paths # the folders the jobs will write, computed here as each job computes them
OPTS=("$@")
SHAPE=(--nodes="$ZPL_NODES" --ntasks-per-node="$ZPL_GPUS_PER_NODE"
  --gpus-per-node="$ZPL_GPUS_PER_NODE")

# after ID...: the --dependency option for the job ids given (empty ones are finished stages)
after() {
  local ids=() id
  for id in "$@"; do
    [[ -z $id ]] || ids+=("$id")
  done
  [[ ${#ids[@]} -eq 0 ]] || (
    IFS=:
    echo "--dependency=afterok:${ids[*]}"
  )
}

# submit VAR KEY DEPENDENCY SBATCH_ARGS...: sets VAR to the job id, or to nothing without
# submitting when the stage folder P[KEY] is finished. A variable, not printed output: sbatch
# failing inside $(...) would not stop the script.
submit() {
  local var=$1 key=$2 dependency=$3 id
  shift 3
  if [[ -n $key && -f ${P[$key]:-}/model.safetensors ]]; then
    echo "[chain] finished, not submitted: ${P[$key]}"
    printf -v "$var" ''
    return
  fi
  # --parsable prints "id" or "id;cluster"
  id=$(sbatch --parsable ${OPTS[@]+"${OPTS[@]}"} ${dependency:+"$dependency"} "$@")
  id=${id%%;*}
  echo "[chain] job $id: sbatch ${dependency:+$dependency }$*"
  printf -v "$var" '%s' "$id"
}

S=examples/slurm
data="" text="" speech="" judge="" vocoder="" job="" # the job ids, set by submit
submit data "" "" "$S/data.sbatch"
submit text DIR_text "$(after "$data")" "${SHAPE[@]}" "$S/pretrain_text.sbatch"
submit speech DIR_speech "$(after "$data")" "${SHAPE[@]}" "$S/pretrain_speech.sbatch"
submit judge JUDGE_DIR "$(after "$speech")" "$S/judge.sbatch"
if [[ -n ${P[VOCODER_DIR]:-} ]]; then # else the codec decodes audio itself
  submit vocoder VOCODER_DIR "$(after "$data")" "${SHAPE[@]}" "$S/vocoder.sbatch"
fi
zips=()
for arch in zipper single; do
  key=${arch^^}
  submit job "${key}_ASR_DIR" "$(after "$text" "$speech")" "${SHAPE[@]}" "$S/zip_asr.sbatch" "$arch"
  zips+=("$job")
  # the vocoder first, as make orders it: TTS validation samples voiced in TensorBoard
  submit job "${key}_TTS_DIR" "$(after "$text" "$speech" "$vocoder")" "${SHAPE[@]}" \
    "$S/zip_tts.sbatch" "$arch"
  zips+=("$job")
done
if [[ -f ${P[EVAL_DIR]}/results.json ]]; then # evaluate's last file, make's target
  echo "[chain] finished, not submitted: ${P[EVAL_DIR]}"
else
  submit evaluate "" "$(after "${zips[@]}" "$judge" "$vocoder")" "$S/evaluate.sbatch"
fi
echo "[chain] results: ${P[EVAL_DIR]}/results.md; squeue --me shows the jobs"
