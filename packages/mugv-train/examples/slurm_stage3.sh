#!/bin/bash
# Stage-3 (720p, 5 s) training of the 10b preset on 64 nodes x 8 H100 = 512 GPUs.
# Layout (docs/scaling.md): TP 4 + SP inside a node, DP 128, full recompute, bf16.
# The official 512-GPU example's TP 4 x PP 4 x DP 32: add parallel.pipeline_parallel=4
# data.microbatches=8 (bubble 3/11).
#SBATCH --job-name=mugv-stage3
#SBATCH --nodes=64
#SBATCH --ntasks-per-node=1
#SBATCH --gpus-per-node=8
#SBATCH --cpus-per-task=96
#SBATCH --exclusive
#SBATCH --time=72:00:00
set -euo pipefail

SHARDS=${SHARDS:?set SHARDS to the mugv-data shard root(s)}
OUT=${OUT:?set OUT to the run folder (checkpoints, logs, export)}
MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)
export MASTER_ADDR MASTER_PORT=${MASTER_PORT:-29500}
export CUDA_DEVICE_MAX_CONNECTIONS=1 PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True

srun torchrun \
  --nnodes "$SLURM_NNODES" --nproc-per-node 8 \
  --rdzv-id "$SLURM_JOB_ID" --rdzv-backend c10d --rdzv-endpoint "$MASTER_ADDR:$MASTER_PORT" \
  -m mugv_train.cli stage3 --shards "$SHARDS" --out "$OUT" \
  parallel.tensor_parallel=4 parallel.sequence_parallel=true parallel.recompute=full
# A killed job resumes from $OUT/checkpoints/latest when resubmitted with the same command.
