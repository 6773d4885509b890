"""No operator argument may shadow a BaseOperator attribute (``execution_timeout``, ``run_as_user``...).

An ``execution_timeout: int`` argument once replaced the task's timedelta and crashed the task runner; a
``run_as_user`` argument would make Airflow impersonate that Unix user to run the task.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest
from airflow.sdk import BaseOperator
from airflow.sdk.bases.sensor import BaseSensorOperator

import finetune_pipeline.aws.operators
import finetune_pipeline.aws.sensors

# Arguments a sensor hands on to BaseSensorOperator, where they mean exactly what they mean there.
FORWARDED_TO_SENSOR = frozenset({"poke_interval", "timeout"})


def _reserved(base: type) -> set[str]:
    names = set(dir(base))
    for cls in base.__mro__:
        if "__init__" in vars(cls):
            names |= set(inspect.signature(cls.__init__).parameters)
    return names - {"self", "args", "kwargs"}


def _operator_classes() -> list[type]:
    classes = []
    for package in (finetune_pipeline.aws.operators, finetune_pipeline.aws.sensors):
        for module_info in pkgutil.iter_modules(package.__path__):
            module = importlib.import_module(f"{package.__name__}.{module_info.name}")
            classes += [
                cls
                for cls in vars(module).values()
                if inspect.isclass(cls)
                and issubclass(cls, BaseOperator)
                and cls.__module__ == module.__name__
            ]
    return sorted(classes, key=lambda cls: cls.__name__)


def test_every_operator_is_checked():
    names = {cls.__name__ for cls in _operator_classes()}
    assert {
        "HyperPodSubmitJobOperator",
        "Ec2LaunchTrainingInstancesOperator",
        "SnowballJobStateSensor",
    } <= names
    assert len(names) >= 10


@pytest.mark.parametrize("operator_class", _operator_classes(), ids=lambda cls: cls.__name__)
def test_no_argument_shadows_a_base_operator_attribute(operator_class):
    arguments = set(inspect.signature(operator_class.__init__).parameters) - {"self", "kwargs"}
    allowed = FORWARDED_TO_SENSOR if issubclass(operator_class, BaseSensorOperator) else frozenset()
    assert arguments & _reserved(BaseSensorOperator) <= allowed
