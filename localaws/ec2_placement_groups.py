"""EC2 placement groups, which moto does not have: Create, Describe and Delete, and RunInstances into one.

What AWS does, and this does:
- ``CreatePlacementGroup`` takes a name unique per account and Region, and a strategy from botocore's enum
  (``cluster``, ``spread``, ``partition``, ``precision-time``); ``PartitionCount`` (1 to 7) only with
  ``partition``, ``SpreadLevel`` (``host``, ``rack``) only with ``spread``. A second group with a taken name
  is ``InvalidPlacementGroup.Duplicate``. It has no client token: a retry after a lost answer gets that
  error, so a caller that creates "if absent" treats it as "it exists".
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_CreatePlacementGroup.html,
  https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/placement-groups.html#placement-groups-limitations-partition)
- ``DescribePlacementGroups`` by name, ID or filter (``group-name``, ``group-id``, ``strategy``, ``state``,
  ``tag:<key>``); a name or ID that does not exist is ``InvalidPlacementGroup.Unknown``.
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DescribePlacementGroups.html)
- ``DeletePlacementGroup`` of a group that still holds instances that are not terminated is
  ``InvalidPlacementGroup.InUse``; of one that does not exist, ``InvalidPlacementGroup.Unknown``.
  (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/API_DeletePlacementGroup.html)
- ``RunInstances`` with ``Placement.GroupName`` (or ``GroupId``) of a group that does not exist is
  ``InvalidPlacementGroup.Unknown``; the instances launched carry the group name in ``Placement``.
  The error codes are those of https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html.

Not emulated: a cluster group's single Availability Zone, a spread group's seven instances per zone, and
``InsufficientInstanceCapacity`` when a cluster group has no room.
"""

from __future__ import annotations

import threading
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from xml.sax.saxutils import escape

from localaws.clock import VirtualClock
from localaws.wsgi import Response, new_request_id

OPERATIONS = frozenset({"CreatePlacementGroup", "DescribePlacementGroups", "DeletePlacementGroup"})
# botocore's ec2 model, PlacementStrategy and SpreadLevel.
STRATEGIES = ("cluster", "spread", "partition", "precision-time")
SPREAD_LEVELS = ("host", "rack")
MAX_PARTITIONS = 7  # "A partition placement group can have a maximum of seven partitions per Availability Zone"
MAX_NAME_LENGTH = 255  # "Constraints: Up to 255 ASCII characters"
XMLNS = "http://ec2.amazonaws.com/doc/2016-11-15/"


class Ec2Error(Exception):
    def __init__(self, code: str, message: str):
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


def ec2_error(code: str, message: str, status: int = 400) -> Response:
    """An EC2 (query protocol) error, which botocore turns into a ``ClientError`` with this ``Code``."""
    xml = (
        '<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error>'
        f"<Code>{escape(code)}</Code><Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>{new_request_id()}</RequestID></Response>"
    )
    return Response(status, xml.encode(), [("Content-Type", "text/xml;charset=UTF-8")])


def ec2_response(operation: str, inner: str) -> Response:
    xml = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{operation}Response xmlns="{XMLNS}">'
        f"<requestId>{new_request_id()}</requestId>{inner}</{operation}Response>"
    )
    return Response(200, xml.encode(), [("Content-Type", "text/xml;charset=UTF-8")])


def indexed(params: dict[str, list[str]], prefix: str) -> list[str]:
    """``Prefix.1``, ``Prefix.2``, ... of a query request, in order."""
    values, n = [], 1
    while f"{prefix}.{n}" in params:
        values.append(params[f"{prefix}.{n}"][0])
        n += 1
    return values


def tag_specifications(params: dict[str, list[str]], resource_type: str) -> dict[str, str]:
    tags: dict[str, str] = {}
    n = 1
    while f"TagSpecification.{n}.ResourceType" in params:
        if params[f"TagSpecification.{n}.ResourceType"][0] == resource_type:
            m = 1
            while f"TagSpecification.{n}.Tag.{m}.Key" in params:
                value = params.get(f"TagSpecification.{n}.Tag.{m}.Value", [""])[0]
                tags[params[f"TagSpecification.{n}.Tag.{m}.Key"][0]] = value
                m += 1
        n += 1
    return tags


@dataclass
class PlacementGroup:
    name: str
    group_id: str
    strategy: str
    arn: str
    created: datetime
    partition_count: int | None = None
    spread_level: str | None = None
    tags: dict[str, str] = field(default_factory=dict)

    def xml(self) -> str:
        parts = [
            f"<groupName>{escape(self.name)}</groupName>",
            "<state>available</state>",
            f"<strategy>{self.strategy}</strategy>",
            f"<groupId>{self.group_id}</groupId>",
            f"<groupArn>{escape(self.arn)}</groupArn>",
        ]
        if self.partition_count is not None:
            parts.append(f"<partitionCount>{self.partition_count}</partitionCount>")
        if self.spread_level is not None:
            parts.append(f"<spreadLevel>{self.spread_level}</spreadLevel>")
        tags = "".join(f"<item><key>{escape(k)}</key><value>{escape(v)}</value></item>" for k, v in self.tags.items())
        parts.append(f"<tagSet>{tags}</tagSet>")
        return "".join(parts)


@dataclass
class Ec2PlacementGroups:
    """The placement groups per (account, Region), by name."""

    clock: VirtualClock
    _groups: dict[tuple[str, str], dict[str, PlacementGroup]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    @staticmethod
    def handles(service: str, operation: str) -> bool:
        return service == "ec2" and operation in OPERATIONS

    def reset(self) -> None:
        with self._lock:
            self._groups.clear()

    def handle(self, operation: str, params: dict[str, list[str]], account: str, region: str) -> Response:
        with self._lock:
            groups = self._groups.setdefault((account, region), {})
            try:
                if operation == "CreatePlacementGroup":
                    group = self._create(groups, params, account, region)
                    return ec2_response(operation, f"<placementGroup>{group.xml()}</placementGroup>")
                if operation == "DescribePlacementGroups":
                    found = self._describe(groups, params)
                    items = "".join(f"<item>{group.xml()}</item>" for group in found)
                    return ec2_response(operation, f"<placementGroupSet>{items}</placementGroupSet>")
                self._delete(groups, params, account, region)
                return ec2_response(operation, "<return>true</return>")
            except Ec2Error as error:
                return ec2_error(error.code, error.message)

    def resolve(self, account: str, region: str, name: str | None, group_id: str | None) -> PlacementGroup:
        """The group ``RunInstances`` names in ``Placement``; ``InvalidPlacementGroup.Unknown`` if none."""
        with self._lock:
            for group in self._groups.get((account, region), {}).values():
                if group.name == name or (group_id and group.group_id == group_id):
                    return group
        raise Ec2Error("InvalidPlacementGroup.Unknown", f"The Placement Group '{name or group_id}' is unknown.")

    def _create(self, groups: dict, params: dict, account: str, region: str) -> PlacementGroup:
        name = (params.get("GroupName") or [""])[0]
        strategy = (params.get("Strategy") or [""])[0]
        if not name:
            raise Ec2Error("MissingParameter", "The request must contain the parameter groupName")
        if len(name) > MAX_NAME_LENGTH or not name.isascii():
            raise Ec2Error(
                "InvalidParameterValue", f"Invalid placement group name '{name}': up to 255 ASCII characters."
            )
        if strategy not in STRATEGIES:
            raise Ec2Error(
                "InvalidParameterValue",
                f"Value ({strategy}) for parameter strategy is invalid. Valid values: {', '.join(STRATEGIES)}.",
            )
        partitions = (params.get("PartitionCount") or [None])[0]
        if partitions is not None:
            if strategy != "partition":
                raise Ec2Error("InvalidParameterCombination", "PartitionCount is only valid with strategy partition.")
            if not partitions.isdigit() or not 1 <= int(partitions) <= MAX_PARTITIONS:
                raise Ec2Error(
                    "InvalidParameterValue", f"PartitionCount must be 1 to {MAX_PARTITIONS}, got {partitions}."
                )
        spread_level = (params.get("SpreadLevel") or [None])[0]
        if spread_level is not None:
            if strategy != "spread":
                raise Ec2Error("InvalidParameterCombination", "SpreadLevel is only valid with strategy spread.")
            if spread_level not in SPREAD_LEVELS:
                raise Ec2Error("InvalidParameterValue", f"Value ({spread_level}) for parameter spreadLevel is invalid.")
        if name in groups:
            raise Ec2Error("InvalidPlacementGroup.Duplicate", f"The Placement Group '{name}' already exists.")
        group_id = f"pg-{uuid.uuid4().hex[:17]}"
        group = PlacementGroup(
            name=name,
            group_id=group_id,
            strategy=strategy,
            arn=f"arn:aws:ec2:{region}:{account}:placement-group/{name}",
            created=self.clock.now(),
            partition_count=(int(partitions) if partitions else (2 if strategy == "partition" else None)),
            spread_level=spread_level or ("rack" if strategy == "spread" else None),
            tags=tag_specifications(params, "placement-group"),
        )
        groups[name] = group
        return group

    @staticmethod
    def _describe(groups: dict[str, PlacementGroup], params: dict) -> list[PlacementGroup]:
        names, ids = indexed(params, "GroupName"), indexed(params, "GroupId")
        found = list(groups.values())
        for name in names:
            if name not in groups:
                raise Ec2Error("InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")
        for group_id in ids:
            if not any(g.group_id == group_id for g in found):
                raise Ec2Error("InvalidPlacementGroup.Unknown", f"The Placement Group '{group_id}' is unknown.")
        if names:
            found = [g for g in found if g.name in names]
        if ids:
            found = [g for g in found if g.group_id in ids]
        n = 1
        while f"Filter.{n}.Name" in params:
            key = params[f"Filter.{n}.Name"][0]
            values = set(indexed(params, f"Filter.{n}.Value"))
            found = [g for g in found if _filter_value(g, key) in values]
            n += 1
        return found

    @staticmethod
    def _delete(groups: dict[str, PlacementGroup], params: dict, account: str, region: str) -> None:
        from moto.ec2.models import ec2_backends

        name = (params.get("GroupName") or [""])[0]
        if name not in groups:
            raise Ec2Error("InvalidPlacementGroup.Unknown", f"The Placement Group '{name}' is unknown.")
        backend = ec2_backends[account][region]
        if any(i.placement.group_name == name and i.state != "terminated" for i in backend.all_instances()):
            raise Ec2Error(
                "InvalidPlacementGroup.InUse", f"The Placement Group '{name}' is in use and may not be deleted."
            )
        del groups[name]


def _filter_value(group: PlacementGroup, key: str) -> str | None:
    if key.startswith("tag:"):
        return group.tags.get(key[4:])
    return {
        "group-name": group.name,
        "group-id": group.group_id,
        "strategy": group.strategy,
        "state": "available",
        "spread-level": group.spread_level,
    }.get(key)
