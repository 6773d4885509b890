"""A worker for the SIGKILL scenarios: one create step, in a process of its own, killed while it runs.

It imports the operators first and prints ``ready``; then it reads one JSON line (the operator's dotted
path and arguments, the task instance's identity, the environment holding the ``aws_default`` connection)
and runs that operator. The test kills it with SIGKILL once localaws has made the resource and is holding
the answer back, as a worker dies between AWS acting and the task recording it.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from types import SimpleNamespace

# Imported before "ready", so that the test's timeouts start at the create, not at Airflow's import.
import finetune_pipeline.aws.operators.ec2  # noqa: F401
import finetune_pipeline.aws.operators.sagemaker_hyperpod  # noqa: F401
import finetune_pipeline.aws.operators.snowball  # noqa: F401


def main() -> None:
    print("ready", flush=True)
    spec = json.loads(sys.stdin.readline())
    os.environ.update(spec["env"])
    module, _, name = spec["operator"].rpartition(".")
    operator = getattr(importlib.import_module(module), name)(**spec["arguments"])
    result = operator.execute({"ti": SimpleNamespace(**spec["ti"])})
    print(json.dumps({"result": result}), flush=True)


if __name__ == "__main__":
    main()
