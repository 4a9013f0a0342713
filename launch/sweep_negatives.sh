#!/usr/bin/env bash
# Sweep the number of negatives (the paper's Figures 3, 4 and 6): for each strategy and count,
# build the training set, fine-tune, evaluate, then plot accuracy against the count.
#   launch/sweep_negatives.sh CONFIG.yaml TASK "0 500 1000 2000" "nut nat" -- nat build flags...
# Example (StrategyQA on the shared data, 1000 positives):
#   D=../shared/data/strategyqa
#   launch/sweep_negatives.sh launch/configs/strategyqa-7b-1000-500-nat.yaml strategyqa "100 300 500" "nut nat" -- \
#     --format nat --trajectories $D/trajectories_positive.json $D/trajectories_negative.json \
#     --questions $D/train.jsonl --task strategyqa --pos-num 1000 --on-error skip
# Results land in runs/sweep/<variant>-<n>/ and the figure in runs/sweep/sweep.png.
set -euo pipefail
config=${1:?config}; task=${2:?task}; counts=${3:?counts}; variants=${4:?variants}
shift 4
[ "${1:-}" = "--" ] && shift
root=${SWEEP_ROOT:-runs/sweep}
data_dir=${DATA_DIR:-../shared/data}
limit=${EVAL_LIMIT:-200}
for variant in $variants; do
  for n in $counts; do
    run="$root/$variant-$n"
    nat build "$@" --variant "$variant" --neg-num "$n" --dev-num 64 --out "$run/data"
    nat fit --config "$config" --data.dataset_dir "$run/data" --trainer.default_root_dir "$run" \
      --export.dirpath "$run/hf"
    nat eval --model "$run/hf" --tasks "$task" --data-dir "$data_dir" --limit "$limit" \
      --tag variant="$variant" --tag neg_num="$n" --out "$run/eval"
  done
done
nat plot sweep "$root"/*/eval/results.json --out "$root/sweep.png"
nat plot perplexity "$root" --x negatives --out "$root/perplexity.png"
