"""The local demo and test stack: localaws plus a real Airflow, the demo's source data and its config.

Nothing here ships with the product: ``finetune_pipeline`` never imports it, and ``localaws`` (the AWS
emulator) knows nothing of it.
"""
