"""Amazon EC2 for instances that run one job from their user data: the provider's ``EC2Hook`` as a client,
plus placement groups, the Deep Learning AMI's public parameter, console output and launch preflight."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from airflow.providers.amazon.aws.hooks.base_aws import AwsBaseHook
from airflow.providers.amazon.aws.hooks.ec2 import EC2Hook
from airflow.providers.amazon.aws.hooks.ssm import SsmHook
from botocore.exceptions import ClientError

# The Deep Learning Base OSS Nvidia Driver GPU AMI (Ubuntu 22.04), latest build, as AWS publishes it:
# /aws/service/deeplearning/ami/<architecture>/<ami type>/latest/ami-id
# (https://docs.aws.amazon.com/dlami/latest/devguide/find-dlami-id.html).
DLAMI_PARAMETER = "/aws/service/deeplearning/ami/x86_64/base-oss-nvidia-driver-gpu-ubuntu-22.04/latest/ami-id"


class Ec2PreflightError(ValueError):
    """A launch that AWS would refuse or that could not run, found before anything is launched."""

    def __init__(self, problems: list[str]):
        super().__init__("EC2 launch preflight failed: " + "; ".join(problems))
        self.problems = problems


class Ec2InstancesHook(EC2Hook):
    """
    The provider's ``EC2Hook`` with ``boto3.client("ec2")`` (``api_type="client_type"``), plus the calls a
    launch of job instances needs.

    .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ec2.html
    """

    # Instance states: gone for good, and ended (gone, or stopped: nothing runs on it any more).
    GONE_STATES = frozenset({"shutting-down", "terminated"})
    ENDED_STATES = GONE_STATES | {"stopping", "stopped"}

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.pop("api_type", None)
        super().__init__(*args, api_type="client_type", **kwargs)

    def run_instances(self, **arguments: Any) -> list[dict[str, Any]]:
        """
        ``RunInstances``; return the ``Instances``. With a ``ClientToken`` botocore's retries are safe.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ec2/client/run_instances.html
        """
        return self.conn.run_instances(**arguments)["Instances"]

    def instances_tagged(self, key: str, values: Iterable[str]) -> list[dict[str, Any]]:
        """
        Every instance (all pages, any state) with tag ``key`` set to one of ``values``.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ec2/client/describe_instances.html
        """
        pages = self.conn.get_paginator("describe_instances").paginate(
            Filters=[{"Name": f"tag:{key}", "Values": list(values)}]
        )
        return [i for page in pages for reservation in page["Reservations"] for i in reservation["Instances"]]

    def describe(self, instance_ids: list[str]) -> list[dict[str, Any]]:
        """
        The instances ``instance_ids`` that EC2 still shows (``DescribeInstances``); never every instance
        for an empty list.

        By an ``instance-id`` filter, not ``InstanceIds``: with IDs, one instance that no longer shows (a
        terminated one, about an hour later) fails the whole call with ``InvalidInstanceID.NotFound``.
        """
        if not instance_ids:
            return []
        pages = self.conn.get_paginator("describe_instances").paginate(
            Filters=[{"Name": "instance-id", "Values": list(instance_ids)}]
        )
        return [i for page in pages for reservation in page["Reservations"] for i in reservation["Instances"]]

    def tag(self, instance_ids: list[str], tags: dict[str, str]) -> None:
        """
        ``CreateTags`` on the instances.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ec2/client/create_tags.html
        """
        self.conn.create_tags(Resources=instance_ids, Tags=[{"Key": k, "Value": v} for k, v in tags.items()])

    def ensure_placement_group(
        self, name: str, strategy: str = "cluster", tags: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """
        The placement group ``name``, created with ``strategy`` if it does not exist; return it.

        ``CreatePlacementGroup`` has no client token: a botocore retry after a lost answer gets
        ``InvalidPlacementGroup.Duplicate``, which here means the group exists
        (https://docs.aws.amazon.com/AWSEC2/latest/APIReference/errors-overview.html). A group of that name
        with another strategy is an error: instances would not be placed as asked.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ec2/client/create_placement_group.html
        """
        group = self.get_placement_group(name)
        if group is None:
            arguments: dict[str, Any] = {"GroupName": name, "Strategy": strategy}
            if tags:
                arguments["TagSpecifications"] = [
                    {"ResourceType": "placement-group", "Tags": [{"Key": k, "Value": v} for k, v in tags.items()]}
                ]
            try:
                group = self.conn.create_placement_group(**arguments)["PlacementGroup"]
                self.log.info("Created placement group %s (%s).", name, strategy)
            except ClientError as error:
                if error.response.get("Error", {}).get("Code") != "InvalidPlacementGroup.Duplicate":
                    raise
                group = self.get_placement_group(name)
                if group is None:  # deleted in between: let the caller's retry start over
                    raise
        if group["Strategy"] != strategy:
            raise ValueError(
                f"Placement group {name} exists with strategy {group['Strategy']}, not {strategy}: "
                "delete it or name another group."
            )
        return group

    def get_placement_group(self, name: str) -> dict[str, Any] | None:
        """
        The placement group ``name``, or ``None`` (``DescribePlacementGroups``).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ec2/client/describe_placement_groups.html
        """
        try:
            groups = self.conn.describe_placement_groups(GroupNames=[name])["PlacementGroups"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "InvalidPlacementGroup.Unknown":
                return None
            raise
        return groups[0] if groups else None

    def resolve_image_id(self, parameter: str = DLAMI_PARAMETER) -> str:
        """
        The AMI ID a public SSM parameter names (``ssm:GetParameter``), e.g. the latest Deep Learning AMI.

        .. seealso:: https://docs.aws.amazon.com/systems-manager/latest/userguide/parameter-store-public-parameters-ami.html
        """
        ssm = SsmHook(
            aws_conn_id=self.aws_conn_id, region_name=self.region_name, verify=self.verify, config=self.config
        )
        try:
            return ssm.conn.get_parameter(Name=parameter)["Parameter"]["Value"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "ParameterNotFound":
                raise ValueError(
                    f"SSM parameter {parameter} does not exist in {ssm.conn_region_name}: no AMI to launch."
                ) from error
            raise

    def console_output(self, instance_id: str) -> str:
        """
        The instance's console output (the last 64 KB; botocore decodes it), ``""`` if none yet.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ec2/client/get_console_output.html
        """
        return self.conn.get_console_output(InstanceId=instance_id).get("Output") or ""

    # Preflight

    def describe_instance_type(self, instance_type: str) -> dict[str, Any] | None:
        """
        ``DescribeInstanceTypes`` for one type; ``None`` if EC2 does not know it.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ec2/client/describe_instance_types.html
        """
        try:
            types = self.conn.describe_instance_types(InstanceTypes=[instance_type])["InstanceTypes"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in ("InvalidInstanceType", "InvalidParameterValue"):
                return None
            raise
        return types[0] if types else None

    def subnet_availability_zone(self, subnet_id: str) -> str | None:
        """The subnet's Availability Zone (``DescribeSubnets``); ``None`` if there is no such subnet."""
        try:
            (subnet,) = self.conn.describe_subnets(SubnetIds=[subnet_id])["Subnets"]
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") == "InvalidSubnetID.NotFound":
                return None
            raise
        return subnet["AvailabilityZone"]

    def instance_type_offered(self, instance_type: str, availability_zone: str | None = None) -> bool:
        """
        Whether ``instance_type`` is offered in the zone (or the Region) (``DescribeInstanceTypeOfferings``).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ec2/client/describe_instance_type_offerings.html
        """
        arguments: dict[str, Any] = {"Filters": [{"Name": "instance-type", "Values": [instance_type]}]}
        if availability_zone:
            arguments["LocationType"] = "availability-zone"
            arguments["Filters"].append({"Name": "location", "Values": [availability_zone]})
        pages = self.conn.get_paginator("describe_instance_type_offerings").paginate(**arguments)
        return any(page["InstanceTypeOfferings"] for page in pages)

    def instance_profile_exists(self, name_or_arn: str) -> bool | None:
        """
        Whether the IAM instance profile exists (``iam:GetInstanceProfile``); ``None`` if not allowed to ask.

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/iam/client/get_instance_profile.html
        """
        name = name_or_arn.rsplit("/", 1)[-1] if name_or_arn.startswith("arn:") else name_or_arn
        iam = AwsBaseHook(aws_conn_id=self.aws_conn_id, client_type="iam", verify=self.verify, config=self.config)
        try:
            iam.conn.get_instance_profile(InstanceProfileName=name)
        except ClientError as error:
            code = error.response.get("Error", {}).get("Code")
            if code == "NoSuchEntity":
                return False
            if code in ("AccessDenied", "AccessDeniedException"):
                return None
            raise
        return True

    def get_capacity_reservation(self, reservation_id: str) -> dict[str, Any] | None:
        """
        The capacity reservation (or Capacity Block's), or ``None`` (``DescribeCapacityReservations``).

        .. seealso:: https://boto3.amazonaws.com/v1/documentation/api/latest/reference/services/ec2/client/describe_capacity_reservations.html
        """
        try:
            found = self.conn.describe_capacity_reservations(CapacityReservationIds=[reservation_id])
        except ClientError as error:
            if error.response.get("Error", {}).get("Code") in (
                "InvalidCapacityReservationId.NotFound",
                "InvalidCapacityReservationId.Malformed",
            ):
                return None
            raise
        reservations = found["CapacityReservations"]
        return reservations[0] if reservations else None

    def check_launch(
        self,
        *,
        instance_type: str,
        instance_count: int = 1,
        subnet_id: str | None = None,
        instance_profile: str | None = None,
        efa: bool = False,
        capacity_reservation_id: str | None = None,
        capacity_block: bool = False,
    ) -> list[str]:
        """
        Check what the APIs can tell before ``RunInstances``; raise :class:`Ec2PreflightError` with every
        problem found, else return notes on what could not be checked.

        The instance type must exist and be offered in the subnet's Availability Zone (or the Region),
        support EFA when EFA is asked for; the count must be at least 1; the instance profile must exist
        (when this role may call ``iam:GetInstanceProfile``); a capacity reservation must exist, be active,
        be a Capacity Block exactly when one is asked for, hold the instance type in the subnet's zone, and
        have room for the count.
        """
        problems: list[str] = []
        notes: list[str] = []
        zone = None
        if instance_count < 1:
            problems.append(f"instance count must be at least 1, got {instance_count}")
        described = self.describe_instance_type(instance_type)
        if described is None:
            problems.append(f"instance type {instance_type!r} does not exist in {self.conn_region_name}")
        else:
            if subnet_id:
                zone = self.subnet_availability_zone(subnet_id)
                if zone is None:
                    problems.append(f"subnet {subnet_id} does not exist in {self.conn_region_name}")
            if (zone or not subnet_id) and not self.instance_type_offered(instance_type, zone):
                where = f"Availability Zone {zone} (subnet {subnet_id})" if zone else self.conn_region_name
                problems.append(f"instance type {instance_type} is not offered in {where}")
            if efa and not described.get("NetworkInfo", {}).get("EfaSupported"):
                problems.append(
                    f"instance type {instance_type} does not support EFA (DescribeInstanceTypes "
                    "NetworkInfo.EfaSupported is false): choose an EFA-capable type or launch without EFA"
                )
        if efa and not subnet_id:
            problems.append("EFA needs a subnet (and security groups) for its network interface")
        if instance_profile:
            exists = self.instance_profile_exists(instance_profile)
            if exists is False:
                problems.append(f"IAM instance profile {instance_profile} does not exist")
            elif exists is None:
                notes.append(f"not allowed to check instance profile {instance_profile} (iam:GetInstanceProfile)")
        if capacity_block and not capacity_reservation_id:
            problems.append("a Capacity Block launch needs the Capacity Block's reservation ID")
        if capacity_reservation_id:
            problems += self._capacity_problems(
                capacity_reservation_id, capacity_block, instance_type, instance_count, zone
            )
        if problems:
            raise Ec2PreflightError(problems)
        return notes

    def _capacity_problems(
        self, reservation_id: str, capacity_block: bool, instance_type: str, count: int, zone: str | None
    ) -> list[str]:
        reservation = self.get_capacity_reservation(reservation_id)
        if reservation is None:
            return [f"capacity reservation {reservation_id} does not exist in {self.conn_region_name}"]
        problems = []
        kind = "Capacity Block" if reservation.get("ReservationType") == "capacity-block" else "capacity reservation"
        if (kind == "Capacity Block") != capacity_block:
            problems.append(
                f"{reservation_id} is a {kind}: launch it {'with' if kind == 'Capacity Block' else 'without'} "
                "the capacity-block market type"
            )
        if reservation["State"] != "active":
            when = f" (it starts at {reservation['StartDate']})" if reservation["State"] == "scheduled" else ""
            problems.append(f"{kind} {reservation_id} is {reservation['State']}, not active{when}")
        if reservation["InstanceType"] != instance_type:
            problems.append(f"{kind} {reservation_id} holds {reservation['InstanceType']}, not {instance_type}")
        if zone and reservation["AvailabilityZone"] != zone:
            problems.append(f"{kind} {reservation_id} is in {reservation['AvailabilityZone']}, the subnet in {zone}")
        if reservation["AvailableInstanceCount"] < count:
            problems.append(
                f"{kind} {reservation_id} has {reservation['AvailableInstanceCount']} instances available, "
                f"{count} are needed"
            )
        return problems
