"""The export process runs as if numpy were not installed: pyarrow imports it when it can, and never needs it.

pyarrow (26) does not depend on numpy: it loads numpy only to convert to and from numpy arrays and pandas,
which the export never does (nothing in :mod:`finetune_pipeline.export` uses numpy; the DMS format module
imports it only in the dataset sync's sequence check). Loading it anyway made a one-row export take
0.31-0.32 s on the 2-core machine, against 0.25-0.27 s without it (and 13 MiB more RSS). Only
``python -m finetune_pipeline.export`` refuses it: code that imports the export as a library (Airflow's
worker, the tests) keeps its numpy.
"""

from __future__ import annotations

import sys


class _RefuseNumpy:
    """A finder ahead of the others that says, for numpy, what Python says of a module that is not installed.

    Not a subclass of ``importlib.abc.MetaPathFinder``: ``find_spec`` is all the import system asks for, and
    importing ``importlib.abc`` (with ``importlib.resources``) took 20 ms of the start it is here to shorten.
    """

    def find_spec(self, name, path=None, target=None):
        if name == "numpy" or name.startswith("numpy."):
            raise ModuleNotFoundError(f"No module named {name!r} (the export runs without numpy)", name=name)
        return None


def refuse_numpy() -> None:
    """Refuse ``import numpy`` in this process from now on; a no-op if numpy is already loaded."""
    if "numpy" not in sys.modules and not any(isinstance(f, _RefuseNumpy) for f in sys.meta_path):
        sys.meta_path.insert(0, _RefuseNumpy())
