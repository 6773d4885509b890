#!/usr/bin/env bash
# EC2 user data for a training instance: train once, upload the model, then shut down. The instance is
# launched with InstanceInitiatedShutdownBehavior=terminate, so "terminated" means the job ended.
set -euo pipefail
python3 -m pip install --quiet boto3 pyarrow
mkdir -p /opt/finetune
python3 - <<'PY'
import boto3
bucket, _, key = "{{ENTRYPOINT_URI}}".removeprefix("s3://").partition("/")
boto3.client("s3").download_file(bucket, key, "/opt/finetune/train.py")
PY
python3 /opt/finetune/train.py --dataset-uri "{{DATASET_URI}}" --dataset-version "{{DATASET_VERSION}}" \
  --output-uri "{{OUTPUT_URI}}" && status=0 || status=$?
echo "training exited with ${status}"
shutdown -h now
