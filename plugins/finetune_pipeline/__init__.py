"""Fine-tuning data pipeline: bulk copy over Snowball, CDC over DMS, validated datasets, training."""
