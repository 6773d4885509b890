"""The training code bundle: the one zip every backend's nodes download and run.

It holds the entrypoint and the trainers (``include/training/*.py``), this package (the entrypoint reads the
dataset through its reader), and ``requirements.txt``, pinned to the versions this Airflow environment runs,
so a node installs exactly what was tested (a Deep Learning AMI, or localaws's nodes, already have most).
Its key is its content's hash: uploading the same code again is a no-op, a changed trainer is a new key,
and a job always runs the code it was launched with.
"""

from __future__ import annotations

import hashlib
import io
import logging
import zipfile
from importlib import metadata
from pathlib import Path

import finetune_pipeline

log = logging.getLogger(__name__)

# What train.py and the reference trainer import on a node (their own dependencies come with them).
NODE_REQUIREMENTS = ("boto3", "numpy", "pandas", "pyarrow", "pydantic", "pyiceberg", "PyYAML", "safetensors",
                     "tokenizers", "wordllama")
# The module each of those installs, where it is not the distribution's name.
_MODULE_OF = {"PyYAML": "yaml"}
BUNDLE_NAME = "training.zip"
# What train.py writes last under its --output-uri: present means the model is whole (train.py imports it).
SUCCESS_MARKER = "_SUCCESS"
# Fixed timestamps: the same files give the same bytes, hence the same key.
_ZIP_TIME = (2020, 1, 1, 0, 0, 0)


def node_modules() -> list[str]:
    """What a node imports: if all of them import, it has what the bundle needs (no pip install)."""
    return [_MODULE_OF.get(name, name.lower()) for name in NODE_REQUIREMENTS]


def node_requirements() -> str:
    return "".join(f"{name}=={metadata.version(name)}\n" for name in NODE_REQUIREMENTS)


def build_bundle(training_dir: Path) -> bytes:
    """The zip of the entrypoint's folder, the package and the pins (see the module docstring)."""
    package_dir = Path(finetune_pipeline.__file__).resolve().parent
    files = {path.name: path for path in sorted(training_dir.glob("*.py"))}
    if "train.py" not in files:
        raise FileNotFoundError(f"{training_dir} has no train.py, the training entrypoint")
    files |= {f"finetune_pipeline/{path.relative_to(package_dir).as_posix()}": path
              for path in sorted(package_dir.rglob("*"))
              if path.is_file() and "__pycache__" not in path.parts and path.suffix in (".py", ".json")}
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as bundle:
        for name, path in sorted(files.items()):
            bundle.writestr(zipfile.ZipInfo(name, _ZIP_TIME), path.read_bytes())
        bundle.writestr(zipfile.ZipInfo("requirements.txt", _ZIP_TIME), node_requirements())
    return buffer.getvalue()


def bundle_key(data: bytes, prefix: str = "code") -> str:
    return f"{prefix}/{hashlib.sha256(data).hexdigest()[:16]}/{BUNDLE_NAME}"


def upload_bundle(s3_client, bucket: str, data: bytes, prefix: str = "code") -> str:
    """Put the bundle under its content key unless it is there already; its ``s3://`` URI."""
    key = bundle_key(data, prefix)
    uri = f"s3://{bucket}/{key}"
    try:
        s3_client.head_object(Bucket=bucket, Key=key)
        log.info("the training bundle is already at %s", uri)
    except s3_client.exceptions.ClientError as error:
        if error.response["Error"]["Code"] not in ("404", "NoSuchKey", "NotFound"):
            raise
        s3_client.put_object(Bucket=bucket, Key=key, Body=data)
        log.info("uploaded the training bundle (%d KiB) to %s", len(data) // 1024, uri)
    return uri
