#!/usr/bin/env bash
# NAT fine-tuning with torchrun (one node, or several with NNODES/NODE_RANK/MASTER_ADDR set on each).
#   launch/torchrun.sh launch/configs/strategyqa-7b-nat.yaml
#   NNODES=2 NODE_RANK=0 MASTER_ADDR=node0 launch/torchrun.sh launch/configs/gsm8k-13b-5k-nat.yaml
set -euo pipefail
config=${1:?usage: launch/torchrun.sh CONFIG.yaml [--key value ...]}
shift
gpus=${GPUS_PER_NODE:-4}
nnodes=${NNODES:-1}
torchrun --nnodes "$nnodes" --node_rank "${NODE_RANK:-0}" --nproc_per_node "$gpus" \
  --master_addr "${MASTER_ADDR:-127.0.0.1}" --master_port "${MASTER_PORT:-29500}" \
  -m lightning_nat.cli fit --config "$config" --trainer.devices "$gpus" --trainer.num_nodes "$nnodes" "$@"
