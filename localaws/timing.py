"""How long each simulated AWS state lasts, in virtual seconds.

``realistic`` follows what AWS documents or typically shows (a Snowball job stays ``New`` for up to an hour,
ships for days, sits with the customer for a week). ``demo`` squeezes every state into a few virtual seconds,
but keeps the device ``WithCustomer`` for a minute so that a pipeline task has time to load it, and each DMS,
HyperPod and SSM state at least 10 s (see the note in the ``demo`` profile).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

DAY = 86_400.0
HOUR = 3_600.0
MIB = 1024 * 1024


@dataclass(frozen=True)
class SnowballTiming:
    """Seconds per IMPORT job state; ``InProgress`` grows with the bytes on the device."""

    state_seconds: dict[str, float]
    in_progress_base_seconds: float
    import_bytes_per_second: float

    def in_progress_seconds(self, total_bytes: int) -> float:
        return self.in_progress_base_seconds + total_bytes / self.import_bytes_per_second


@dataclass(frozen=True)
class DmsTiming:
    """Seconds each DMS transitional status lasts before the service moves on."""

    task_creating: float
    task_starting: float
    task_stopping: float
    task_modifying: float
    full_load_running: float  # a ``full-load`` task stops by itself after this long
    instance_creating: float


@dataclass(frozen=True)
class HyperPodTiming:
    """Seconds a SageMaker HyperPod cluster spends ``Creating`` (nodes ``Pending``) and ``Deleting``."""

    cluster_creating: float
    cluster_deleting: float


@dataclass(frozen=True)
class SsmTiming:
    """Seconds an SSM Run Command invocation is ``Pending`` (not yet on the node), then ``InProgress``."""

    command_pending: float
    command_in_progress: float


@dataclass(frozen=True)
class TimingProfile:
    name: str
    snowball: SnowballTiming
    dms: DmsTiming
    hyperpod: HyperPodTiming
    ssm: SsmTiming

    def to_dict(self) -> dict:
        return asdict(self)


PROFILES: dict[str, TimingProfile] = {
    "realistic": TimingProfile(
        name="realistic",
        snowball=SnowballTiming(
            state_seconds={
                "New": HOUR,  # AWS: UpdateJob works "usually within 60 minutes of the job being created"
                "PreparingAppliance": DAY,
                "PreparingShipment": DAY / 2,
                "InTransitToCustomer": 2 * DAY,
                "WithCustomer": 7 * DAY,
                "InTransitToAWS": 2 * DAY,
                "WithAWSSortingFacility": DAY / 2,
                "WithAWS": DAY / 2,
            },
            in_progress_base_seconds=HOUR,
            import_bytes_per_second=200 * MIB,
        ),
        dms=DmsTiming(
            task_creating=60.0,
            task_starting=60.0,
            task_stopping=30.0,
            task_modifying=30.0,
            full_load_running=300.0,
            instance_creating=600.0,
        ),
        # Provisioning the instances and running the lifecycle scripts takes a quarter of an hour or more.
        hyperpod=HyperPodTiming(cluster_creating=15 * 60.0, cluster_deleting=5 * 60.0),
        # The SSM agent picks a command up within seconds; the submit script (squeue, sbatch) runs in a few.
        ssm=SsmTiming(command_pending=2.0, command_in_progress=5.0),
    ),
    "demo": TimingProfile(
        name="demo",
        snowball=SnowballTiming(
            state_seconds={
                "New": 5.0,
                "PreparingAppliance": 5.0,
                "PreparingShipment": 5.0,
                "InTransitToCustomer": 5.0,
                "WithCustomer": 60.0,
                "InTransitToAWS": 5.0,
                "WithAWSSortingFacility": 5.0,
                "WithAWS": 5.0,
            },
            in_progress_base_seconds=10.0,
            import_bytes_per_second=100 * MIB,
        ),
        dms=DmsTiming(
            # At least 10 s: a trigger that fires within seconds of its deferral hits an open Airflow race
            # (apache/airflow#67287, #72716) where the scheduler marks the resumed task up_for_retry.
            task_creating=10.0,
            task_starting=10.0,
            task_stopping=10.0,
            task_modifying=10.0,
            full_load_running=20.0,
            instance_creating=10.0,
        ),
        hyperpod=HyperPodTiming(cluster_creating=15.0, cluster_deleting=10.0),
        ssm=SsmTiming(command_pending=10.0, command_in_progress=10.0),
    ),
}


def get_profile(name: str) -> TimingProfile:
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown timing profile {name!r}; choose one of {sorted(PROFILES)}") from None
