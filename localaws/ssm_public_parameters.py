"""Public SSM parameters that moto does not ship: the Deep Learning AMIs' latest image IDs.

AWS publishes the latest ID of each Deep Learning AMI as a public parameter named
``/aws/service/deeplearning/ami/<architecture>/<ami type>/latest/ami-id``, readable in every Region with
``GetParameter`` (https://docs.aws.amazon.com/dlami/latest/devguide/find-dlami-id.html; the Base OSS Nvidia
Driver GPU AMI's release notes name ``base-oss-nvidia-driver-gpu-ubuntu-22.04``,
https://docs.aws.amazon.com/dlami/latest/devguide/aws-deep-learning-base-gpu-ami-ubuntu-22-04.html). moto
ships the Amazon Linux and ECS ones only. Here the DLAMI parameters point at the Deep Learning AMI that
moto has in every Region (``ami-dca37ea5``), so ``RunInstances`` with the value launches.
"""

from __future__ import annotations

import threading
from datetime import UTC, datetime

DLAMI_IMAGE_ID = "ami-dca37ea5"  # "Deep Learning AMI Ubuntu Linux - 2.4_Oct2017", one of moto's AMIs
_PREFIX = "/aws/service/deeplearning/ami"
PUBLIC_PARAMETERS = {
    f"{_PREFIX}/x86_64/{ami_type}/latest/ami-id": DLAMI_IMAGE_ID
    for ami_type in (
        "base-oss-nvidia-driver-gpu-ubuntu-22.04",
        "base-oss-nvidia-driver-gpu-ubuntu-24.04",
        "base-oss-nvidia-driver-gpu-amazon-linux-2023",
    )
}
_PUBLISHED = datetime(2026, 1, 1, tzinfo=UTC)
_loaded: set[tuple[str, str]] = set()
_lock = threading.Lock()


def ensure_public_parameters(account: str, region: str) -> None:
    """Put the DLAMI parameters into moto's SSM backend of ``account``/``region``, once."""
    with _lock:
        if (account, region) in _loaded:
            return
        from moto.ssm.models import Parameter, ssm_backends

        store = ssm_backends[account][region]._parameters
        for name, value in PUBLIC_PARAMETERS.items():
            versions = dict.get(store, name)
            if versions:
                continue
            # defaultdict's own item access: ParameterDict's would load moto's resource files for the name.
            dict.__setitem__(
                store,
                name,
                [
                    Parameter(
                        account_id=account,
                        name=name,
                        value=value,
                        parameter_type="String",
                        description=None,
                        allowed_pattern=None,
                        keyid=None,
                        last_modified_date=_PUBLISHED,
                        version=1,
                        data_type="text",
                    )
                ],
            )
        _loaded.add((account, region))


def forget() -> None:
    """After moto's reset: load them again on the next SSM call."""
    with _lock:
        _loaded.clear()
