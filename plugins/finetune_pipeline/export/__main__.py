import sys

from finetune_pipeline.export.cli import main

sys.exit(main())
