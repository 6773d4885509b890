"""Custom botocore waiters (version 2 JSON), one file per service, shipped as package data."""

from __future__ import annotations

from importlib import resources
from pathlib import Path


def waiter_file(service: str) -> Path:
    """The waiter file of ``service``, found through the package (installed or copied), not by folder counting."""
    return Path(str(resources.files(__name__).joinpath(f"{service}.json")))
