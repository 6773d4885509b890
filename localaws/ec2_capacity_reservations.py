"""EC2 Capacity Reservations and Capacity Blocks, which moto does not have, and RunInstances into them.

- ``CreateCapacityReservation`` (an On-Demand Capacity Reservation: ``InstanceType``, ``InstancePlatform``,
  ``InstanceCount``, an Availability Zone), ``DescribeCapacityReservations`` (by ID; an unknown ID is
  ``InvalidCapacityReservationId.NotFound``), ``CancelCapacityReservation`` (state ``cancelled``)
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreateCapacityReservation.html).
- A Capacity Block is bought from an offering (``PurchaseCapacityBlock``), which localaws does not sell:
  a test adds one through ``POST /_localaws/ec2/capacity-blocks`` (instance type, zone, count, start and
  end on the virtual clock). Its reservation has ``ReservationType`` ``capacity-block`` and is
  ``scheduled`` before its start, ``active`` until its end, then ``expired``
  (https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/capacity-blocks-using.html).
- ``RunInstances`` with ``CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId``:
  the reservation must exist and be ``active`` (a Capacity Block that has not started yet is
  ``InsufficientInstanceCapacity``, as the EC2 Fleet tutorial for Capacity Blocks says); the instance type
  and Availability Zone must be the reservation's ("Your instance can't launch in a subnet in a different
  Availability Zone from the Availability Zone where your Capacity Block is located",
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/capacity-blocks-launch.html); ``MinCount`` beyond
  the available instances is ``ReservationCapacityExceeded``
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html); a Capacity Block takes
  ``InstanceMarketOptions.MarketType=capacity-block`` and only a Capacity Block does.

Not emulated: instance platform and tenancy matching, ``open`` reservations that untargeted launches use,
a block's end terminating its instances.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from xml.sax.saxutils import escape

from localaws.clock import VirtualClock
from localaws.ec2_placement_groups import Ec2Error, ec2_error, ec2_response, indexed, tag_specifications
from localaws.wsgi import Response

OPERATIONS = frozenset({"CreateCapacityReservation", "DescribeCapacityReservations", "CancelCapacityReservation"})
TARGET = "CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"


@dataclass
class CapacityReservation:
    reservation_id: str
    account: str
    region: str
    instance_type: str
    platform: str
    zone: str
    total: int
    created: datetime
    reservation_type: str = "default"
    start: datetime | None = None
    end: datetime | None = None
    cancelled: bool = False
    tags: dict[str, str] = field(default_factory=dict)
    instance_ids: set[str] = field(default_factory=set)

    def state(self, now: datetime) -> str:
        if self.cancelled:
            return "cancelled"
        if self.start and now < self.start:
            return "scheduled"
        if self.end and now >= self.end:
            return "expired"
        return "active"

    def available(self) -> int:
        from moto.ec2.models import ec2_backends

        backend = ec2_backends[self.account][self.region]
        used = sum(1 for i in backend.all_instances() if i.id in self.instance_ids and i.state != "terminated")
        return max(self.total - used, 0)

    def xml(self, now: datetime) -> str:
        def when(value: datetime | None) -> str:
            return value.strftime("%Y-%m-%dT%H:%M:%S.000Z") if value else ""

        arn = f"arn:aws:ec2:{self.region}:{self.account}:capacity-reservation/{self.reservation_id}"
        parts = {
            "capacityReservationId": self.reservation_id,
            "ownerId": self.account,
            "capacityReservationArn": arn,
            "instanceType": self.instance_type,
            "instancePlatform": self.platform,
            "availabilityZone": self.zone,
            "tenancy": "default",
            "totalInstanceCount": str(self.total),
            "availableInstanceCount": str(self.available()),
            "state": self.state(now),
            "startDate": when(self.start or self.created),
            "endDate": when(self.end),
            "endDateType": "limited" if self.end else "unlimited",
            "instanceMatchCriteria": "targeted" if self.reservation_type == "capacity-block" else "open",
            "createDate": when(self.created),
            "reservationType": self.reservation_type,
        }
        body = "".join(f"<{k}>{escape(v)}</{k}>" for k, v in parts.items() if v)
        tags = "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>" for k, v in self.tags.items())
        return f"{body}<tagSet>{tags}</tagSet>"


@dataclass
class Ec2CapacityReservations:
    clock: VirtualClock
    _reservations: dict[str, CapacityReservation] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def handles(service: str, operation: str) -> bool:
        return service == "ec2" and operation in OPERATIONS

    def reset(self) -> None:
        with self._lock:
            self._reservations.clear()

    def handle(self, operation: str, params: dict[str, list[str]], account: str, region: str) -> Response:
        now = self.clock.now()
        with self._lock:
            try:
                if operation == "CreateCapacityReservation":
                    reservation = self._create(params, account, region, now)
                    return ec2_response(operation, f"<capacityReservation>{reservation.xml(now)}</capacityReservation>")
                if operation == "DescribeCapacityReservations":
                    found = self._describe(params, account, region)
                    items = "".join(f"<item>{r.xml(now)}</item>" for r in found)
                    return ec2_response(operation, f"<capacityReservationSet>{items}</capacityReservationSet>")
                reservation = self._get((params.get("CapacityReservationId") or [""])[0], account, region)
                if reservation.reservation_type == "capacity-block":
                    raise Ec2Error("InvalidParameterValue", "A Capacity Block cannot be cancelled.")
                reservation.cancelled = True
                return ec2_response(operation, "<return>true</return>")
            except Ec2Error as error:
                return ec2_error(error.code, error.message)

    def add_capacity_block(
        self, account: str, region: str, instance_type: str, zone: str, count: int, start: datetime, end: datetime
    ) -> dict:
        """A Capacity Block as if bought (the control endpoint's)."""
        if not count >= 1 or not end > start:
            raise ValueError("a Capacity Block needs a count of at least 1 and an end after its start")
        reservation = CapacityReservation(
            reservation_id=_new_id(), account=account, region=region, instance_type=instance_type,
            platform="Linux/UNIX", zone=zone, total=count, created=self.clock.now(),
            reservation_type="capacity-block", start=start, end=end,
        )  # fmt: skip
        with self._lock:
            self._reservations[reservation.reservation_id] = reservation
        return {"capacity_reservation_id": reservation.reservation_id, "state": reservation.state(self.clock.now())}

    def check_run(self, params: dict[str, list[str]], account: str, region: str, zone: str) -> str | None:
        """Refuse a launch its target reservation cannot take; return the reservation's ID, if any."""
        reservation_id = (params.get(TARGET) or [""])[0]
        market = (params.get("InstanceMarketOptions.MarketType") or [""])[0]
        if not reservation_id:
            return None
        with self._lock:
            reservation = self._get(reservation_id, account, region)
            state = reservation.state(self.clock.now())
            block = reservation.reservation_type == "capacity-block"
            if block and state == "scheduled":
                raise Ec2Error(
                    "InsufficientInstanceCapacity",
                    f"Capacity Block {reservation_id} starts at {reservation.start.isoformat()}: no capacity yet.",
                )
            if state != "active":
                raise Ec2Error(
                    "InvalidCapacityReservationId.NotFound" if state == "cancelled" else "InvalidParameterValue",
                    f"Capacity Reservation {reservation_id} is {state}.",
                )
            if block != (market == "capacity-block"):
                raise Ec2Error(
                    "InvalidParameterCombination",
                    "Launching into a Capacity Block needs InstanceMarketOptions MarketType capacity-block, "
                    "and that market type needs a Capacity Block.",
                )
            instance_type = (params.get("InstanceType") or ["m1.small"])[0]
            if instance_type != reservation.instance_type:
                raise Ec2Error(
                    "InvalidParameterCombination",
                    f"Capacity Reservation {reservation_id} is for {reservation.instance_type}, not {instance_type}.",
                )
            if zone != reservation.zone:
                raise Ec2Error(
                    "InvalidParameterCombination",
                    f"Capacity Reservation {reservation_id} is in {reservation.zone}; the launch is in {zone}.",
                )
            wanted = int((params.get("MinCount") or ["1"])[0])
            if wanted > reservation.available():
                raise Ec2Error(
                    "ReservationCapacityExceeded",
                    f"Capacity Reservation {reservation_id} has {reservation.available()} instances available, "
                    f"{wanted} were asked for.",
                )
        return reservation_id

    def launched(self, reservation_id: str, instance_ids: list[str]) -> None:
        with self._lock:
            self._reservations[reservation_id].instance_ids.update(instance_ids)

    def _create(self, params: dict, account: str, region: str, now: datetime) -> CapacityReservation:
        zone = (params.get("AvailabilityZone") or [""])[0]
        if not zone:
            raise Ec2Error("MissingParameter", "The request must contain the parameter AvailabilityZone")
        count = (params.get("InstanceCount") or ["0"])[0]
        if not count.isdigit() or int(count) < 1:
            raise Ec2Error("InvalidParameterValue", f"InstanceCount must be at least 1, got {count}.")
        reservation = CapacityReservation(
            reservation_id=_new_id(), account=account, region=region,
            instance_type=(params.get("InstanceType") or [""])[0],
            platform=(params.get("InstancePlatform") or [""])[0], zone=zone, total=int(count), created=now,
            tags=tag_specifications(params, "capacity-reservation"),
        )  # fmt: skip
        self._reservations[reservation.reservation_id] = reservation
        return reservation

    def _describe(self, params: dict, account: str, region: str) -> list[CapacityReservation]:
        ids = indexed(params, "CapacityReservationId")
        mine = [r for r in self._reservations.values() if (r.account, r.region) == (account, region)]
        if not ids:
            return mine
        return [self._get(reservation_id, account, region) for reservation_id in ids]

    def _get(self, reservation_id: str, account: str, region: str) -> CapacityReservation:
        reservation = self._reservations.get(reservation_id)
        if reservation is None or (reservation.account, reservation.region) != (account, region):
            raise Ec2Error(
                "InvalidCapacityReservationId.NotFound",
                f"The capacity reservation ID '{reservation_id}' does not exist",
            )
        return reservation


def _new_id() -> str:
    return f"cr-{uuid.uuid4().hex[:17]}"
