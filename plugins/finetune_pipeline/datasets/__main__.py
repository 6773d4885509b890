"""``python -m finetune_pipeline.datasets``: see cli.py."""

import sys

from finetune_pipeline.datasets.cli import main

sys.exit(main())
