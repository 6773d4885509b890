#!/usr/bin/env bash
# Submitted through SSM to the HyperPod Slurm controller: queue one fine-tuning job with sbatch.
# Arguments: JOB_NAME DATASET_URI DATASET_VERSION OUTPUT_URI NODES
set -euo pipefail
JOB_NAME="$1"; DATASET_URI="$2"; DATASET_VERSION="$3"; OUTPUT_URI="$4"; NODES="${5:-1}"
# Idempotent: a job of this name already queued or running is reused, not submitted twice.
if squeue --noheader --name "${JOB_NAME}" --format '%i' | grep -q .; then
  squeue --noheader --name "${JOB_NAME}" --format '%i'
  exit 0
fi
sbatch --parsable --job-name "${JOB_NAME}" --nodes "${NODES}" --wrap \
  "srun python3 /fsx/finetune/train.py --dataset-uri ${DATASET_URI} --dataset-version ${DATASET_VERSION} --output-uri ${OUTPUT_URI}"
