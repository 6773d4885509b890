"""The pipeline's glue: typed config, Assets, the ``@task`` bodies, the sync operator, landing and planning.

This layer knows the pipeline. It uses the generic AWS layer (:mod:`finetune_pipeline.aws`) and the data
logic (:mod:`finetune_pipeline.datasets`); neither of those imports it back.
"""
