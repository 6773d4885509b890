#!/usr/bin/env bash
# HyperPod lifecycle script (OnCreate): HyperPod runs it on every node when the node is created, from the
# folder it downloaded LifeCycleConfig.SourceS3Uri to (this script's own folder).
# https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-lifecycle-best-practices-slurm.html
#
# 1. Slurm itself is set up by AWS's base lifecycle scripts (awsome-distributed-training's base-config:
#    lifecycle_script.py + provisioning_parameters.json) when they are uploaded next to this script.
# 2. On the controller, it installs the job agent (job_agent.py, configured by job_agent.json) that runs the
#    job specs Airflow writes to S3: a systemd service where systemd runs, a background process otherwise.
set -euo pipefail
# HyperPod uploads /var/log/provision/provisioning.log to CloudWatch, the log stream a failed cluster's
# FailureMessage names (https://docs.aws.amazon.com/sagemaker/latest/dg/sagemaker-hyperpod-cluster-management-slurm.html).
# (PROVISION_LOG moves it, for a node that is a local process: localaws.)
PROVISION_LOG="${PROVISION_LOG:-/var/log/provision/provisioning.log}"
if mkdir -p "$(dirname "$PROVISION_LOG")" 2>/dev/null && [[ -w "$(dirname "$PROVISION_LOG")" ]]; then
  exec > >(tee -a "$PROVISION_LOG") 2>&1
fi
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$HERE"
# HyperPod writes the cluster's resource config and names its path in SAGEMAKER_RESOURCE_CONFIG_PATH
# (default /opt/ml/config/resource_config.json): the instance groups, each instance with its IP addresses.
RESOURCE_CONFIG="${SAGEMAKER_RESOURCE_CONFIG_PATH:-/opt/ml/config/resource_config.json}"

if [[ -f lifecycle_script.py && -f provisioning_parameters.json ]]; then
  echo "[on_create] running the base lifecycle scripts (Slurm, FSx, users)"
  python3 -u lifecycle_script.py -rc "$RESOURCE_CONFIG" -pp provisioning_parameters.json
fi

# This node's instance group: the group with an instance at one of this host's addresses.
GROUP="$(python3 - "$RESOURCE_CONFIG" $(hostname -I) <<'PY'
import json, sys
config, addresses = json.load(open(sys.argv[1])), set(sys.argv[2:])
for group in config["InstanceGroups"]:
    for instance in group["Instances"]:
        if {instance.get("CustomerIpAddress"), instance.get("AgentIpAddress")} & addresses:
            print(group["Name"])
            raise SystemExit(0)
raise SystemExit(f"no instance group in {sys.argv[1]} has an instance at {sorted(addresses)}")
PY
)"
echo "[on_create] node group: ${GROUP}"

if [[ ! -f job_agent.json ]]; then
  echo "[on_create] no job_agent.json next to this script: no job agent on this cluster"
  exit 0
fi
# (Each value on its own, so that a broken job_agent.json stops the script here: set -e.)
CONTROLLER_GROUP="$(python3 -c 'import json; print(json.load(open("job_agent.json")).get("controller_group", "controller-machine"))')"
WORK_DIR="$(python3 -c 'import json, os; print(os.path.expanduser(json.load(open("job_agent.json"))["work_dir"]))')"
if [[ "$GROUP" != "$CONTROLLER_GROUP" ]]; then
  echo "[on_create] done (the job agent runs on the ${CONTROLLER_GROUP} group)"
  exit 0
fi

python3 -c 'import boto3' 2>/dev/null || python3 -m pip install --quiet boto3
AGENT_DIR="${WORK_DIR}/.job-agent"
mkdir -p "$AGENT_DIR"
cp job_agent.py job_agent.json "$AGENT_DIR/"
if [[ -d /run/systemd/system ]] && systemctl --version >/dev/null 2>&1; then
  cat > /etc/systemd/system/finetune-job-agent.service <<UNIT
[Unit]
Description=Runs the HyperPod job specs Airflow writes to S3 (finetune pipeline)
After=network-online.target remote-fs.target slurmctld.service
RequiresMountsFor=${WORK_DIR}
Wants=network-online.target

[Service]
# Slurm's commands live in /opt/slurm/bin on HyperPod, which systemd's default PATH lacks.
Environment=PATH=/opt/slurm/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
ExecStart=$(command -v python3) -u ${AGENT_DIR}/job_agent.py --config ${AGENT_DIR}/job_agent.json
Restart=always
RestartSec=10

[Install]
WantedBy=multi-user.target
UNIT
  systemctl daemon-reload
  systemctl enable --now finetune-job-agent.service
  echo "[on_create] job agent: systemd service finetune-job-agent"
else
  # One agent per controller: a run of this script while the agent lives leaves it running.
  PIDFILE="${AGENT_DIR}/job_agent.pid"
  # (A live process running job_agent.py: not a zombie, not another process that got its PID.)
  if [[ -f "$PIDFILE" ]] && ps -o stat=,args= -p "$(cat "$PIDFILE")" 2>/dev/null | grep -v '^Z' | grep -q job_agent.py; then
    echo "[on_create] job agent already running: process $(cat "$PIDFILE")"
  else
    nohup python3 -u "${AGENT_DIR}/job_agent.py" --config "${AGENT_DIR}/job_agent.json" \
      >> "${AGENT_DIR}/job_agent.log" 2>&1 < /dev/null &
    echo "$!" > "$PIDFILE"
    echo "[on_create] job agent: background process $! (no systemd), log ${AGENT_DIR}/job_agent.log"
  fi
fi
echo "[on_create] done"
