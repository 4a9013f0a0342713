#!/usr/bin/env bash
# Multi-node NAT fine-tuning under SLURM: one task per GPU, Lightning reads the SLURM environment.
#   sbatch --nodes=2 launch/slurm.sh launch/configs/gsm8k-13b-5k-nat.yaml
# The global batch stays data.global_batch_size (64); accumulation is derived from nodes x GPUs.
#SBATCH --job-name=nat
#SBATCH --nodes=1
#SBATCH --ntasks-per-node=4
#SBATCH --gpus-per-node=4
#SBATCH --cpus-per-task=8
#SBATCH --time=24:00:00
#SBATCH --output=runs/slurm-%j.out
set -euo pipefail
config=${1:?usage: sbatch launch/slurm.sh CONFIG.yaml [--key value ...]}
shift
srun nat fit --config "$config" --trainer.num_nodes "$SLURM_JOB_NUM_NODES" \
  --trainer.devices "$SLURM_NTASKS_PER_NODE" "$@"
