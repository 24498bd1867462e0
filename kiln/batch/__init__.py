"""The AWS Batch operations: job definitions, compute environments, queues, scheduling policies,
tags and jobs (submit, describe, list, cancel, terminate), with AWS's validation and shapes.

Each operation runs in one transaction (`kiln.context.Context`) and reports what happened to the
engine (`kiln.engine`), which alone decides job states; `service` maps operation names to them.
"""
