#!/usr/bin/env bash
# HyperPod lifecycle script (OnCreate): runs on every node when the cluster is created.
# It installs the training entrypoint's dependencies and, on the controller, makes Slurm ready for sbatch.
set -euo pipefail
NODE_TYPE="$(jq -r '.InstanceGroupName' /opt/ml/config/resource_config.json 2>/dev/null || echo unknown)"
echo "[on_create] node group: ${NODE_TYPE}"
python3 -m pip install --quiet boto3 pyarrow
mkdir -p /fsx/finetune
# The pipeline uploads the entrypoint next to this script.
cp "$(dirname "$0")/train.py" /fsx/finetune/train.py
if [[ "${NODE_TYPE}" == "controller" ]]; then
  systemctl enable --now slurmctld
else
  systemctl enable --now slurmd
fi
echo "[on_create] done"
