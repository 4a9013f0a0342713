#!/usr/bin/env bash
# Sweep the number of negatives (the paper's Figures 3, 4 and 6): for each strategy and count,
# build the training set, fine-tune, evaluate, then plot accuracy against the count.
#   launch/sweep_negatives.sh CONFIG.yaml TASK "COUNTS" "VARIANTS" -- NAT_BUILD_FLAGS... [--fit NAT_FIT_FLAGS...] [--eval NAT_EVAL_FLAGS...]
# Flags after --fit go to every nat fit, flags after --eval to every nat eval (e.g. --search-corpus for a QA task).
# Example (StrategyQA on the shared data, 1000 positives, searching the corpus of `nat corpus`):
#   D=../shared/data/strategyqa
#   nat corpus $D/train.jsonl --fields facts decomposition --title-field term --out runs/corpus/strategyqa
#   launch/sweep_negatives.sh launch/configs/strategyqa-7b-1000-500-nat.yaml strategyqa "100 300 500" "nut nat" -- \
#     --format nat --trajectories $D/trajectories_positive.json $D/trajectories_negative.json \
#     --questions $D/train.jsonl --task strategyqa --pos-num 1000 --on-error skip \
#     --eval --search-corpus runs/corpus/strategyqa
# Results land in $SWEEP_ROOT/<variant>-<n>/ (default runs/sweep) and the figures in $SWEEP_ROOT/sweep.png and
# perplexity.png. DATA_DIR (default ../shared/data), EVAL_LIMIT (default 200) and DEV_NUM (default 64) set the rest.
set -euo pipefail
config=${1:?config}; task=${2:?task}; counts=${3:?counts}; variants=${4:?variants}
shift 4
[ "${1:-}" = "--" ] && shift
build=(); fit=(); evals=(); part=build
for arg in "$@"; do
  case "$arg" in
    --fit) part=fit ;;
    --eval) part=eval ;;
    *) case "$part" in build) build+=("$arg") ;; fit) fit+=("$arg") ;; eval) evals+=("$arg") ;; esac ;;
  esac
done
root=${SWEEP_ROOT:-runs/sweep}
data_dir=${DATA_DIR:-../shared/data}
limit=${EVAL_LIMIT:-200}
dev_num=${DEV_NUM:-64}
for variant in $variants; do
  for n in $counts; do
    run="$root/$variant-$n"
    nat build "${build[@]}" --variant "$variant" --neg-num "$n" --dev-num "$dev_num" --out "$run/data"
    nat fit --config "$config" --data.dataset_dir "$run/data" --trainer.default_root_dir "$run" \
      --export.dirpath "$run/hf" "${fit[@]}"
    nat eval --model "$run/hf" --tasks "$task" --data-dir "$data_dir" --limit "$limit" \
      --tag variant="$variant" --tag neg_num="$n" --out "$run/eval" "${evals[@]}"
  done
done
nat plot sweep "$root"/*/eval/results.json --out "$root/sweep.png"
nat plot perplexity "$root" --x negatives --out "$root/perplexity.png"
