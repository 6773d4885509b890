#!/bin/bash
# EC2 user data of a training instance: run the training code bundle once on one dataset version, then
# shut down, whatever the exit code. The instance is launched with InstanceInitiatedShutdownBehavior=
# terminate, so the shutdown terminates it: an instance never idles after its job.
#
# Ec2LaunchTrainingInstancesOperator renders it: each placeholder (a NAME in double braces) becomes its value,
# shell-quoted, and every name must be given (HYPERPARAMETERS, CHECKPOINT_DIR and INSTALLED_MODULES may be empty). cloud-init runs it as root at first
# boot and sends its output to /var/log/cloud-init-output.log and to the console (GetConsoleOutput).
set -euo pipefail

BUNDLE_URI={{BUNDLE_URI}}           # s3://.../training.zip: train.py, requirements.txt, the package
DATASET_URI={{DATASET_URI}}
DATASET_VERSION={{DATASET_VERSION}}
OUTPUT_URI={{OUTPUT_URI}}           # rank 0 writes <OUTPUT_URI>/_SUCCESS when trained
HYPERPARAMETERS={{HYPERPARAMETERS}} # a JSON object, or empty
CHECKPOINT_DIR={{CHECKPOINT_DIR}}   # storage every restart sees, or empty
WORLD_SIZE={{WORLD_SIZE}}           # instances launched together
AWS_REGION={{AWS_REGION}}
INSTALLED_MODULES={{INSTALLED_MODULES}} # "boto3, numpy, ...": what the bundle's pins install; empty: always install
export AWS_REGION AWS_DEFAULT_REGION="$AWS_REGION"
export PYTHONUNBUFFERED=1 # the console shows training's lines as they come

log() { echo "finetune-user-data $(date -u +%Y-%m-%dT%H:%M:%SZ) $*"; }
trap 'status=$?; log "exit code ${status}: shutting down"; shutdown -h now' EXIT

# IMDSv2 (a session token, then the item). SDKs and tools take another endpoint from
# AWS_EC2_METADATA_SERVICE_ENDPOINT; on an instance it is unset.
imds() {
  local base="${AWS_EC2_METADATA_SERVICE_ENDPOINT:-http://169.254.169.254/}" token
  token=$(curl -sf --connect-timeout 2 -X PUT "${base%/}/latest/api/token" \
    -H "X-aws-ec2-metadata-token-ttl-seconds: 300") &&
    curl -sf --connect-timeout 2 -H "X-aws-ec2-metadata-token: ${token}" "${base%/}/latest/meta-data/$1"
}
# Instances launched by one RunInstances call are numbered 0..n-1 (ami-launch-index): the rank.
RANK=$(imds ami-launch-index) || RANK=0
export RANK WORLD_SIZE
if [ "${WORLD_SIZE}" -gt 1 ]; then
  # torch.distributed's rendezvous (env://): rank 0's private address, found through this launch's
  # reservation (the instance role needs ec2:DescribeInstances). Without it a trainer that needs ranks to
  # meet says so itself; one that does not (each rank on its own share) runs anyway.
  MASTER_ADDR=$(python3 - "$(imds reservation-id || true)" 2>/dev/null <<'PY'
import sys

import boto3

pages = boto3.client("ec2").get_paginator("describe_instances").paginate(
    Filters=[{"Name": "reservation-id", "Values": [sys.argv[1]]}])
print(next(i["PrivateIpAddress"] for page in pages for r in page["Reservations"] for i in r["Instances"]
           if i["AmiLaunchIndex"] == 0))
PY
) && export MASTER_ADDR MASTER_PORT=29500 && log "rendezvous at rank 0, ${MASTER_ADDR}:${MASTER_PORT}" ||
    log "rank 0's address not found (ec2:DescribeInstances): no rendezvous address for the trainer"
fi
log "instance $(imds instance-id || echo unknown), rank ${RANK} of ${WORLD_SIZE}, dataset version ${DATASET_VERSION}"

DIR=$(mktemp -d "${TMPDIR:-/tmp}/finetune.XXXXXX")
python3 -c 'import boto3' 2>/dev/null || python3 -m pip install --quiet boto3
log "downloading ${BUNDLE_URI}"
python3 - "$BUNDLE_URI" "$DIR" <<'PY'
import sys
import zipfile

import boto3

uri, target = sys.argv[1], sys.argv[2]
bucket, _, key = uri.removeprefix("s3://").partition("/")
archive = f"{target}/training.zip"
boto3.client("s3").download_file(bucket, key, archive)
with zipfile.ZipFile(archive) as bundle:
    bundle.extractall(target)
PY

# Deep Learning AMIs (and localaws nodes) may already have them all: then nothing is installed.
if [ -z "$INSTALLED_MODULES" ] || ! python3 -c "import ${INSTALLED_MODULES}" 2>/dev/null; then
  log "installing ${DIR}/requirements.txt"
  python3 -m pip install --quiet -r "$DIR/requirements.txt"
fi

args=(--dataset-uri "$DATASET_URI" --dataset-version "$DATASET_VERSION" --output-uri "$OUTPUT_URI")
if [ -n "$HYPERPARAMETERS" ]; then args+=(--hyperparameters "$HYPERPARAMETERS"); fi
if [ -n "$CHECKPOINT_DIR" ]; then args+=(--checkpoint-dir "$CHECKPOINT_DIR"); fi
log "training: train.py ${args[*]}"
PYTHONPATH="$DIR" python3 "$DIR/train.py" "${args[@]}"
log "train.py succeeded"
