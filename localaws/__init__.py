"""localaws: a local AWS endpoint for the pipeline, built on moto's server.

It adds what moto lacks for this project: a Snowball job API with a simulated device and import, DMS and
SageMaker HyperPod statuses and SSM Run Command invocations that move like the real services', and a virtual
clock (with a control endpoint) that drives them all.
``LocalAWS`` is imported lazily so that ``localaws.control`` stays cheap and moto-free.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__all__ = ["LocalAWS"]

if TYPE_CHECKING:
    from localaws.server import LocalAWS


def __getattr__(name: str) -> Any:
    if name == "LocalAWS":
        from localaws.server import LocalAWS

        return LocalAWS
    raise AttributeError(f"module 'localaws' has no attribute {name!r}")
