"""Waiter triggers, one module per service, each an ``AwsBaseWaiterTrigger`` that names one wait.

Every trigger takes the keywords of its own wait plus ``**connection``: the ``aws_conn_id``,
``region_name``, ``verify`` and ``botocore_config`` that ``AwsBaseWaiterTrigger`` serializes and passes
back when the triggerer rebuilds the trigger.
"""
