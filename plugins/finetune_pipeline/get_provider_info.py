"""What this package brings to Airflow, in the provider-info shape the ``apache_airflow_provider`` entry point
returns (``airflow providers list``, ``airflow providers links`` and the UI's provider page read it).

Only class paths here: nothing is imported, so discovery stays cheap.
"""

from __future__ import annotations


def get_provider_info() -> dict:
    return {
        "package-name": "finetune-pipeline",
        "name": "Fine-tuning data pipeline",
        "description": "Snowball bulk import, DMS CDC into S3, validated datasets and training on SageMaker "
        "HyperPod or EC2.",
        "integrations": [
            {"integration-name": "AWS Snowball", "external-doc-url": "https://aws.amazon.com/snowball/",
             "tags": ["aws"]},
            {"integration-name": "Amazon SageMaker HyperPod",
             "external-doc-url": "https://aws.amazon.com/sagemaker/ai/hyperpod/", "tags": ["aws"]},
        ],
        # DMS, SSM, S3 and EC2 are the Amazon provider's integrations; these modules extend them.
        "hooks": [
            {"integration-name": "AWS Snowball", "python-modules": ["finetune_pipeline.aws.hooks.snowball"]},
            {"integration-name": "Amazon SageMaker HyperPod",
             "python-modules": ["finetune_pipeline.aws.hooks.sagemaker_hyperpod"]},
            {"integration-name": "AWS Database Migration Service",
             "python-modules": ["finetune_pipeline.aws.hooks.dms"]},
            {"integration-name": "Amazon Systems Manager (SSM)", "python-modules": ["finetune_pipeline.aws.hooks.ssm"]},
            {"integration-name": "Amazon Simple Storage Service (S3)",
             "python-modules": ["finetune_pipeline.aws.hooks.s3_objects"]},
        ],
        "triggers": [
            {"integration-name": "AWS Snowball", "python-modules": ["finetune_pipeline.aws.triggers.snowball"]},
            {"integration-name": "Amazon SageMaker HyperPod",
             "python-modules": ["finetune_pipeline.aws.triggers.sagemaker_hyperpod"]},
            {"integration-name": "AWS Database Migration Service",
             "python-modules": ["finetune_pipeline.aws.triggers.dms"]},
            {"integration-name": "Amazon EC2", "python-modules": ["finetune_pipeline.aws.triggers.ec2"]},
            {"integration-name": "Amazon Systems Manager (SSM)",
             "python-modules": ["finetune_pipeline.aws.triggers.ssm"]},
        ],
        "extra-links": ["finetune_pipeline.pipeline.sync_operator.DatasetReportLink"],
    }
