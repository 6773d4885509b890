"""Fine-tuning entrypoint run on the training nodes (HyperPod Slurm job step or EC2 user data).

It reads the published dataset manifest (``<dataset>/current``), checks the version it was launched for,
and hands the Parquet files to the trainer. The trainer itself is the organisation's own: set
FINETUNE_TRAINER to a module with ``main(files: list[str], output_uri: str)``.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys
import urllib.parse

import boto3


def read_manifest(dataset_uri: str) -> dict:
    parsed = urllib.parse.urlparse(dataset_uri.rstrip("/") + "/current")
    body = boto3.client("s3").get_object(Bucket=parsed.netloc, Key=parsed.path.lstrip("/"))["Body"].read()
    return json.loads(body)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--dataset-uri", required=True, help="s3://bucket/datasets")
    parser.add_argument("--dataset-version", required=True, help="the version the pipeline launched this job for")
    parser.add_argument("--output-uri", required=True, help="s3://bucket/models/<run>")
    args = parser.parse_args(argv)

    manifest = read_manifest(args.dataset_uri)
    if manifest.get("version") != args.dataset_version:
        # A newer version was published meanwhile; training must use exactly the one it was launched for.
        print(f"dataset moved on to {manifest.get('version')}; training on {args.dataset_version}", file=sys.stderr)
    files = [f"{args.dataset_uri.rstrip('/')}/versions/{args.dataset_version}/{key}"
             for table in manifest.get("tables", {}).values() for key in table.get("files", [])]
    print(f"training on {len(files)} files of dataset version {args.dataset_version}", flush=True)
    trainer = importlib.import_module(os.environ.get("FINETUNE_TRAINER", "finetune_trainer"))
    trainer.main(files, args.output_uri)
    return 0


if __name__ == "__main__":
    sys.exit(main())
